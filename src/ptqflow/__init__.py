"""ptqflow: post-training INT8 quantization of ONNX models, as a library and as pipeline steps."""

from __future__ import annotations

__version__ = "0.1.0"

from ptqflow.config import (  # noqa: E402
    AdvancedParameters,
    IgnoredScope,
    ModelType,
    OverflowFix,
    QuantizationConfig,
    QuantizationPreset,
    RangeEstimator,
    Subgraph,
    TargetDevice,
)

__all__ = [
    "__version__",
    "AdvancedParameters",
    "IgnoredScope",
    "ModelType",
    "OverflowFix",
    "QuantizationConfig",
    "QuantizationPreset",
    "RangeEstimator",
    "Subgraph",
    "TargetDevice",
]

# The engine's public API (quantize, Dataset, collect_statistics, apply_quantization, Statistics) is
# re-exported from ptqflow.api once it exists; see ptqflow/api.py.
try:  # pragma: no cover - replaced by a plain import when the engine lands
    from ptqflow.api import Dataset, Statistics, apply_quantization, collect_statistics, quantize  # noqa: F401

    __all__ += ["Dataset", "Statistics", "apply_quantization", "collect_statistics", "quantize"]
except ImportError:
    pass
