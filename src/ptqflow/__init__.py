"""ptqflow: post-training INT8 quantization of ONNX models, as a library and as pipeline steps.

The public names follow NNCF's, so that code written for NNCF runs with ``import ptqflow as nncf``: NNCF's
spellings (``AdvancedQuantizationParameters``, ``ModelType.Transformer``, ``TargetDevice.VPU``, the modules
``ptqflow.quantization.advanced_parameters``, ``ptqflow.parameters``, ``ptqflow.scopes``) are aliases of
ptqflow's own.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ptqflow.config import (  # noqa: E402
    AdvancedParameters,
    DropType,
    IgnoredScope,
    ModelType,
    OverflowFix,
    QuantFormat,
    QuantizationConfig,
    QuantizationPreset,
    QuantType,
    RangeEstimator,
    Subgraph,
    TargetDevice,
    TargetRuntime,
)

from ptqflow import parameters, quantization, scopes  # noqa: E402,F401  (NNCF's module paths: nncf.parameters...)
from ptqflow.quantization.advanced_parameters import (  # noqa: E402  (NNCF's names)
    AdvancedAccuracyRestorerParameters,
    AdvancedBiasCorrectionParameters,
    AdvancedQuantizationParameters,
    AdvancedSmoothQuantParameters,
)

__all__ = [
    "__version__",
    "AdvancedAccuracyRestorerParameters",
    "AdvancedBiasCorrectionParameters",
    "AdvancedParameters",
    "AdvancedQuantizationParameters",
    "AdvancedSmoothQuantParameters",
    "DropType",
    "IgnoredScope",
    "ModelType",
    "OverflowFix",
    "QuantFormat",
    "QuantType",
    "QuantizationConfig",
    "QuantizationPreset",
    "RangeEstimator",
    "Subgraph",
    "TargetDevice",
    "TargetRuntime",
]

from ptqflow.api import (  # noqa: E402
    Dataset,
    QuantizationResult,
    Statistics,
    apply_quantization,
    collect_statistics,
    quantize,
    quantize_dynamic,
    quantize_with_summary,
)

__all__ += ["Dataset", "QuantizationResult", "Statistics", "apply_quantization", "collect_statistics", "quantize",
            "quantize_dynamic", "quantize_with_summary"]

from ptqflow.accuracy_control import (  # noqa: E402  (NNCF's nncf.quantize_with_accuracy_control)
    AccuracyControlResult,
    quantize_with_accuracy_control,
    quantize_with_accuracy_control_result,
)

__all__ += ["AccuracyControlResult", "quantize_with_accuracy_control", "quantize_with_accuracy_control_result"]
