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

from ptqflow.api import (  # noqa: E402
    Dataset,
    QuantizationResult,
    Statistics,
    apply_quantization,
    collect_statistics,
    quantize,
    quantize_with_summary,
)

__all__ += ["Dataset", "QuantizationResult", "Statistics", "apply_quantization", "collect_statistics", "quantize",
            "quantize_with_summary"]
