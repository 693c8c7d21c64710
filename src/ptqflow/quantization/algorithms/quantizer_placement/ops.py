"""The op tables quantizer placement works from."""

from __future__ import annotations

from ptqflow.config import TargetDevice
from ptqflow.quantization.graph.index import attr


# Weight input index and per-output-channel axis of the weight, per op type (the axis may depend on attributes).
WEIGHTED = {
    "Conv": lambda n: (1, 0),
    "ConvTranspose": lambda n: (1, 1 if attr(n, "group", 1) == 1 else None),
    "Gemm": lambda n: (1, 0 if attr(n, "transB", 0) else 1),
    "MatMul": lambda n: (1, -1),
}

# Which inputs of a quantizable op are quantized as activations: a function of the node giving input indices.
ACT_INPUTS = {
    "Conv": lambda n: [0],
    "ConvTranspose": lambda n: [0],
    "Gemm": lambda n: [0, 1],
    "MatMul": lambda n: [0, 1],
    "Add": lambda n: [0, 1],
    "Sub": lambda n: [0, 1],
    "Mul": lambda n: [0, 1],
    "AveragePool": lambda n: [0],
    "GlobalAveragePool": lambda n: [0],
    "Resize": lambda n: [0],
    "ReduceMean": lambda n: [0],
}
# Elementwise ops are quantized only when all their inputs are activations (never a bias or scale constant).
ELEMENTWISE = {"Add", "Sub", "Mul"}

# Ops whose output quantizer can move to their (data) input unchanged: they only move or select values.
AGNOSTIC = {
    "MaxPool": [0], "Reshape": [0], "Transpose": [0], "Flatten": [0], "Squeeze": [0], "Unsqueeze": [0],
    "Slice": [0], "Split": [0], "Pad": [0], "Gather": [0], "Identity": [0], "Expand": [0], "Tile": [0],
    "DepthToSpace": [0], "SpaceToDepth": [0], "GlobalMaxPool": [0], "Concat": None,  # None: all inputs
}
STOPPERS = {"NonMaxSuppression", "TopK"}
# Ops whose output depends on their input's shape only, never on its values (an exported head's
# Reshape(Softmax(Flatten(x)), Shape(x)) reads x's values through the Softmax alone).
METADATA = {"Shape", "Size"}
TRANSFORMER_FLOAT = {"LayerNormalization", "Softmax", "Gelu", "Erf", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
                     "ReduceMean", "ReduceSum", "Tanh", "Sigmoid", "Reciprocal"}
# Pointwise ops (with at most one activation input) that make up decomposed activations such as hard-swish
# x * Clip(x + 3, 0, 6) / 6, swish x * Sigmoid(x) or x * HardSigmoid(x).
POINTWISE = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "HardSigmoid", "Sigmoid", "Min", "Max", "Tanh",
             "Softplus", "Neg", "Identity"}


# Activation-quantizable ops per target device. GPU and NPU plugins run elementwise/pooling ops in float
# faster than with extra quantizers, so only the compute-heavy layers and Concat get input quantizers there.
DEVICE_OPS = {
    TargetDevice.ANY: set(ACT_INPUTS),
    TargetDevice.CPU: set(ACT_INPUTS),
    TargetDevice.CPU_SPR: set(ACT_INPUTS),
    TargetDevice.GPU: set(ACT_INPUTS) - {"ReduceMean"},
    TargetDevice.NPU: {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool"},
}


def is_depthwise(node, inits) -> bool:
    """True for a Conv with one input channel per group (depthwise), its weight an initializer of ``inits``."""
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    dims = inits[node.input[1]].dims
    return attr(node, "group", 1) > 1 and len(dims) > 1 and dims[1] == 1
