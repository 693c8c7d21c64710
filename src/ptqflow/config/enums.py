"""The enumerations of the configuration (names and meanings as NNCF users know them)."""

from __future__ import annotations

from enum import Enum


class QuantizationPreset(str, Enum):
    """PERFORMANCE: symmetric activations. MIXED: asymmetric activations (better for skewed ranges)."""

    PERFORMANCE = "performance"
    MIXED = "mixed"


class TargetDevice(str, Enum):
    """The hardware that will run the INT8 model; it decides quantizer placement."""

    ANY = "ANY"
    CPU = "CPU"
    CPU_SPR = "CPU_SPR"
    GPU = "GPU"
    NPU = "NPU"
    VPU = "NPU"  # NNCF's name for NPU before 2.7: an alias (TargetDevice.VPU is TargetDevice.NPU)


class ModelType(str, Enum):
    """Special handling for a model family. TRANSFORMER keeps LayerNorm/Softmax/GELU regions in float."""

    TRANSFORMER = "transformer"
    Transformer = "transformer"  # the spelling of NNCF's and OpenVINO's docs: an alias of TRANSFORMER


class RangeEstimator(str, Enum):
    """How a per-tensor activation range is formed from per-sample statistics."""

    MEAN_MINMAX = "mean_minmax"  # mean over samples of each sample's min and max (robust to outliers)
    MINMAX = "minmax"  # global min and max over all samples


class OverflowFix(str, Enum):
    """Use 7-bit weight codes to avoid int16 accumulator saturation on CPUs without VNNI."""

    DISABLE = "disable"
    FIRST_LAYER = "first_layer"
    ENABLE = "enable"


class ExecutionDevice(str, Enum):
    """Where a step runs models: onnxruntime's CPU or CUDA provider, or OpenVINO's NPU."""

    CPU = "cpu"
    CUDA = "cuda"
    NPU = "npu"


class DropType(str, Enum):
    """How quantize_with_accuracy_control measures the accuracy drop: ABSOLUTE fp32 - int8; RELATIVE
    (fp32 - int8) / |fp32| (NNCF's nncf.DropType)."""

    ABSOLUTE = "absolute"
    RELATIVE = "relative"


class QuantFormat(str, Enum):
    """How the INT8 model is written (onnxruntime's names). QDQ: QuantizeLinear/DequantizeLinear pairs around
    float ops; QOperator: QLinearConv, QLinearMatMul, QLinearAdd, ... (and com.microsoft contrib ops);
    IntegerOps: ConvInteger / MatMulInteger with float rescaling."""

    QDQ = "qdq"
    QOperator = "qoperator"
    IntegerOps = "integer_ops"


class TargetRuntime(str, Enum):
    """The runtime that will run the INT8 model: it decides where activation quantizers go. OPENVINO: inputs
    of the layers (OpenVINO's CPU plugin); ONNXRUNTIME: also the output of each quantized node unit, so
    onnxruntime's graph optimizer fuses DequantizeLinear -> op -> QuantizeLinear into its QLinear kernels."""

    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"


class QuantType(str, Enum):
    """An 8-bit integer type of activations or weights (onnxruntime's QuantType.QUInt8 / QInt8)."""

    UINT8 = "uint8"
    INT8 = "int8"
    QUInt8 = "uint8"  # onnxruntime's spelling: an alias
    QInt8 = "int8"
