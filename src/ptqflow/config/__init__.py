"""ptqflow's one typed configuration.

The same models are read from a YAML file, from CLI flags, from Airflow DAG params and from KFP pipeline
parameters; ``ptqflow config-schema`` prints the JSON schema generated from them. Unknown keys and wrong
types are rejected before any work starts, with a message naming the field (see ``load_config``).

Each pipeline step reads only its own sections, so that changing e.g. the bias-correction mode reruns the
quantize step but reuses the fetched model, the calibration data and the statistics.

This package is the public namespace: import from ``ptqflow.config``, not from its modules, which are
``enums`` (the enumerations), ``scope`` (IgnoredScope, Subgraph), ``advanced`` (AdvancedParameters),
``quantization`` (QuantizationConfig), ``pipeline`` (the other sections and PipelineConfig), ``load``
(parsing, loading, schema) and ``base`` (what the models share).
"""

from __future__ import annotations

from ptqflow.config.advanced import BIAS_CORRECTION_SUBSET_SHARE, SAFEGUARDS, AdvancedParameters
from ptqflow.config.enums import (
    DropType,
    ExecutionDevice,
    ModelType,
    OverflowFix,
    QuantFormat,
    QuantizationPreset,
    QuantType,
    RangeEstimator,
    TargetDevice,
    TargetRuntime,
)
from ptqflow.config.load import (
    _format_validation_error,  # noqa: F401  (imported by ptqflow.orchestration.pod_placement)
    config_schema,
    load_config,
    parse_config,
    section_dump,
    set_dotted,
)
from ptqflow.config.pipeline import (
    AccuracyControlConfig,
    DataConfig,
    ConversionConfig,
    ExportConfig,
    GateConfig,
    PipelineConfig,
    PreprocessConfig,
    RegistryConfig,
    ValidationConfig,
)
from ptqflow.config.quantization import QuantizationConfig
from ptqflow.config.scope import IgnoredScope, Subgraph

__all__ = [
    "BIAS_CORRECTION_SUBSET_SHARE",
    "SAFEGUARDS",
    "AccuracyControlConfig",
    "AdvancedParameters",
    "DataConfig",
    "DropType",
    "ExecutionDevice",
    "ConversionConfig",
    "ExportConfig",
    "GateConfig",
    "IgnoredScope",
    "ModelType",
    "OverflowFix",
    "PipelineConfig",
    "PreprocessConfig",
    "QuantizationConfig",
    "QuantFormat",
    "QuantType",
    "QuantizationPreset",
    "RangeEstimator",
    "RegistryConfig",
    "Subgraph",
    "TargetDevice",
    "TargetRuntime",
    "ValidationConfig",
    "config_schema",
    "load_config",
    "parse_config",
    "section_dump",
    "set_dotted",
]
