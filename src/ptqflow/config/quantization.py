"""QuantizationConfig: the post-training quantization parameters (the ``quantization`` section)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ptqflow.config.advanced import BIAS_CORRECTION_SUBSET_SHARE, AdvancedParameters
from ptqflow.config.base import _Strict
from ptqflow.config.enums import ModelType, QuantFormat, QuantizationPreset, QuantType, TargetDevice, TargetRuntime
from ptqflow.config.scope import IgnoredScope


class QuantizationConfig(_Strict):
    """The post-training quantization parameters."""

    preset: QuantizationPreset | None = Field(
        None, description="performance (symmetric activations) or mixed; default depends on model_type."
    )
    target_device: TargetDevice = Field(TargetDevice.ANY, description="Hardware the INT8 model will run on.")
    subset_size: int = Field(300, gt=0, description="Calibration samples used for statistics.")
    fast_bias_correction: bool = Field(
        True, description="True: FastBiasCorrection; False: full BiasCorrection (slower, more accurate)."
    )
    model_type: ModelType | None = Field(None, description="transformer, or none for CNN-like models.")
    ignored_scope: IgnoredScope = Field(default_factory=IgnoredScope, description="Nodes kept in float.")
    advanced: AdvancedParameters = Field(default_factory=AdvancedParameters)
    quant_format: QuantFormat = Field(
        QuantFormat.QDQ,
        description="How the INT8 model is written: qdq (QuantizeLinear/DequantizeLinear pairs), qoperator "
        "(QLinearConv, QLinearMatMul, QLinearAdd, ... and com.microsoft contrib ops) or integer_ops "
        "(ConvInteger / MatMulInteger with float rescaling). qoperator and integer_ops are onnxruntime formats.",
    )
    target_runtime: TargetRuntime | None = Field(
        None,
        description="Runtime the INT8 model will run on; it decides quantizer placement and what validate times. "
        "openvino: quantizers on layer inputs (OpenVINO's CPU plugin); onnxruntime: also on the output of each "
        "quantized Conv/Gemm/Add/Mul/pooling unit, so onnxruntime fuses them into QLinear kernels. None "
        "(default): openvino for quant_format qdq, onnxruntime for qoperator and integer_ops.",
    )
    activation_type: QuantType | None = Field(
        None,
        description="Integer type of every activation quantizer: uint8 (signed ranges get a zero point) or int8. "
        "None (default): per tensor for openvino (uint8 for non-negative and asymmetric ranges, int8 for "
        "symmetric signed ones but those a Concat reads: uint8 with zero point 128, the same grid, which "
        "OpenVINO's CPU plugin reads correctly there); uint8 for onnxruntime, whose fused kernels need one type "
        "in and out.",
    )
    weight_type: QuantType = Field(
        QuantType.INT8,
        description="Integer type of the weights: int8 (symmetric, zero point 0) or uint8 (symmetric around "
        "zero point 128). Asymmetric activations with signed weights: preset mixed, activation_type uint8, "
        "weight_type int8.",
    )
    nbits: int = Field(8, description="Bits of the integer types; only 8 is supported.")
    static: bool = Field(
        True,
        description="True: activation ranges from calibration data (static quantization). False: dynamic "
        "quantization: weights quantized offline, activations of MatMul/Gemm/Conv by DynamicQuantizeLinear at "
        "run time (integer_ops format, onnxruntime), LSTM as com.microsoft DynamicQuantizeLSTM and "
        "com.microsoft Attention as QAttention (GRU stays float: onnxruntime has no int8 GRU kernel); no "
        "calibration statistics: the pipeline (ptqflow run, Airflow, KFP) skips collect-stats.",
    )
    input_quantization_params: dict[str, tuple[int, float]] = Field(
        default_factory=dict,
        description="Given parameters of activation quantizers by tensor: {tensor: [zero_point, scale]} "
        "(onnxruntime's format), overriding the calibrated range of a tensor that is a quantized input. A name "
        "that matches no tensor of the model is an error.",
    )
    output_quantization_params: dict[str, tuple[int, float]] = Field(
        default_factory=dict,
        description="As input_quantization_params, for tensors that are outputs of quantized node units "
        "(target_runtime onnxruntime places quantizers there).",
    )

    @field_validator("nbits")
    @classmethod
    def _only_8_bits(cls, value: int) -> int:
        if value != 8:
            raise ValueError(f"ptqflow writes 8-bit integers only (uint8/int8); got nbits={value}")
        return value

    @field_validator("input_quantization_params", "output_quantization_params")
    @classmethod
    def _positive_scales(cls, value: dict[str, tuple[int, float]]) -> dict[str, tuple[int, float]]:
        for tensor, (zero_point, scale) in value.items():
            if not scale > 0:
                raise ValueError(f"tensor {tensor!r}: scale must be positive, got {scale}")
            if not -128 <= zero_point <= 255:
                raise ValueError(f"tensor {tensor!r}: zero_point {zero_point} fits neither uint8 nor int8")
        return value

    def effective_target_runtime(self) -> TargetRuntime:
        """The runtime placement is for: the user's, else openvino for QDQ and onnxruntime for the onnxruntime
        formats (QOperator, IntegerOps) and for dynamic quantization."""
        if self.target_runtime is not None:
            return self.target_runtime
        if self.quant_format == QuantFormat.QDQ and self.static:
            return TargetRuntime.OPENVINO
        return TargetRuntime.ONNXRUNTIME

    def effective_activation_type(self) -> str | None:
        """The activations' integer type: the user's, else uint8 for onnxruntime (its fused kernels need one type),
        else None (OpenVINO's choice per tensor: uint8 for non-negative ranges, int8 otherwise)."""
        if self.activation_type is not None:
            return self.activation_type.value
        return "uint8" if self.effective_target_runtime() == TargetRuntime.ONNXRUNTIME else None

    def bias_correction_samples(self) -> int:
        """Samples full BiasCorrection runs on: ``advanced.bias_correction_subset_size``, else
        BIAS_CORRECTION_SUBSET_SHARE of ``subset_size`` (at least 1)."""
        return self.advanced.bias_correction_subset_size or max(1, int(BIAS_CORRECTION_SUBSET_SHARE * self.subset_size))

    def effective_preset(self) -> QuantizationPreset:
        """The preset actually applied: the user's, else MIXED for transformers, else PERFORMANCE."""
        if self.preset is not None:
            return self.preset
        if self.model_type == ModelType.TRANSFORMER:
            return QuantizationPreset.MIXED
        return QuantizationPreset.PERFORMANCE
