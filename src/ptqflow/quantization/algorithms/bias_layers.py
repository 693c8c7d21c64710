"""Which layers bias correction can correct, and the shared pieces both bias-correction algorithms use.

A correctable layer is a linear operator with a constant weight whose output gets a constant per-channel bias:
Conv, ConvTranspose and Gemm with a bias input; MatMul followed by an Add of a constant [C] vector (the
linear layers of transformer exports); a bias-less Conv/ConvTranspose followed by such an Add ([1,C,1,1]) or by
an unfolded BatchNormalization (its B is the bias: Paddle exports keep BN separate). Quantizing the weight (and
the activation) shifts the per-channel mean of the output; moving the bias by the opposite amount puts it back.

Weights and biases may be initializers or Constant nodes; a weight produced by DequantizeLinear from an int8
initializer counts as constant, so the same search works on the FP32 model and on its QDQ version (except where
a quantizer sits between a layer and its bias Add).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ptqflow.quantization.graph.index import GraphIndex, attr, float_constant

# Below this magnitude a bias (or an output mean) counts as zero when judging a shift's plausibility.
EPS = 1e-8


@dataclass
class BiasLayer:
    """One correctable layer.

    ``channel_axis`` is the axis of the output channels in ``output`` and ``input_channel_axis`` the axis of the
    channels in ``input``. Both may be negative: -1 means the last axis (MatMul inputs of any rank).
    """

    name: str  # node name of the Conv / ConvTranspose / Gemm / MatMul
    op_type: str
    input: str  # activation input tensor
    output: str  # tensor holding the biased result (the Add output for MatMul + Add)
    bias: str  # float initializer holding the bias
    channel_axis: int
    input_channel_axis: int
    weight: str = ""  # weight input tensor of the layer node
    bias_node: str = ""  # node consuming the bias: the layer itself, or the Add after a MatMul


def _conv_like(node: onnx.NodeProto, idx: GraphIndex) -> BiasLayer | None:
    if len(node.input) < 3 or not node.input[2] or not idx.is_constant(node.input[1]):
        return None
    bias = idx.float_init(node.input[2])
    if bias is None or bias.ndim != 1:
        return None
    return BiasLayer(node.name, node.op_type, node.input[0], node.output[0], node.input[2], 1, 1,
                     weight=node.input[1], bias_node=node.name)


def _gemm(node: onnx.NodeProto, idx: GraphIndex) -> BiasLayer | None:
    if len(node.input) < 3 or not node.input[2] or not idx.is_constant(node.input[1]):
        return None
    if idx.is_constant(node.input[0]) or float(attr(node, "beta", 1.0)) != 1.0:
        return None  # a constant "activation" or a scaled C is not the linear-layer pattern we correct
    bias = idx.float_init(node.input[2])
    if bias is None or bias.ndim != 1 or bias.size < 2:
        return None  # a scalar C broadcasts over channels: a per-channel shift cannot live there
    w_shape = idx.const_shape(node.input[1])
    if w_shape is not None and len(w_shape) == 2:
        out_ch = w_shape[0] if attr(node, "transB", 0) else w_shape[1]
        if out_ch != bias.size:
            return None
    in_axis = 0 if attr(node, "transA", 0) else 1
    return BiasLayer(node.name, node.op_type, node.input[0], node.output[0], node.input[2], 1, in_axis,
                     weight=node.input[1], bias_node=node.name)


def _add_bias(node: onnx.NodeProto, idx: GraphIndex, out_rank: int | None, axis: int):
    """(bias tensor, Add node): the constant per-channel operand of the single Add reading ``node``'s output.

    Its shape must put the channels on ``axis`` of the output (right-aligned broadcasting) and 1 elsewhere.
    """
    users = idx.consumer_nodes(node.output[0])
    if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in idx.outputs:
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    bias = idx.float_init(other)
    if bias is None or bias.ndim == 0 or bias.size < 2:
        return None  # a scalar broadcasts over channels: a per-channel shift cannot live there
    if axis == -1:
        ok = all(d == 1 for d in bias.shape[:-1])
    else:
        ok = out_rank is not None and bias.ndim <= out_rank and bias.ndim >= out_rank - axis and all(
            d == 1 for k, d in enumerate(bias.shape) if k != bias.ndim - (out_rank - axis))
    return (other, add) if ok else None


def _bn_bias(node: onnx.NodeProto, idx: GraphIndex):
    """(B tensor, BN node) for an unfolded inference BatchNormalization right after a convolution, else None.

    BN is a per-channel affine map, so moving its B moves the output mean exactly like a bias would."""
    users = idx.consumer_nodes(node.output[0])
    if len(users) != 1 or users[0].op_type != "BatchNormalization" or len(users[0].output) != 1:
        return None
    bn = users[0]
    if node.output[0] in idx.outputs or not all(idx.is_constant(i) for i in bn.input[1:]):
        return None
    if int(attr(bn, "training_mode", 0)) or len(set(bn.input[1:])) != 4:
        return None  # shared scale/bias/mean/var tensors cannot be moved independently
    bias = idx.float_init(bn.input[2])
    return (bn.input[2], bn) if bias is not None and bias.ndim == 1 else None


def _matmul_add(node: onnx.NodeProto, idx: GraphIndex) -> BiasLayer | None:
    """MatMul, or Gemm without C (an OpenVINO MatMul with a transposed weight, as graph.openvino_view shows it),
    followed by an Add of a constant [C] vector."""
    act, weight = node.input[0], node.input[1]
    if not idx.is_constant(weight) or idx.is_constant(act):
        return None
    w_shape = idx.const_shape(weight)
    if w_shape is not None and len(w_shape) != 2:
        return None  # batched constant operands are not a linear layer
    found = _add_bias(node, idx, None, -1)
    if found is None:
        return None
    other, add = found
    out_ch = w_shape[0] if w_shape is not None and attr(node, "transB", 0) else (w_shape[1] if w_shape else None)
    if out_ch is not None and idx.float_init(other).shape[-1] != out_ch:
        return None
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return None
    return BiasLayer(node.name, node.op_type, act, add.output[0], other, -1, -1, weight=weight, bias_node=add.name)


def _with_bias(node: onnx.NodeProto, idx: GraphIndex) -> BiasLayer | None:
    """Conv / ConvTranspose / Gemm: the bias input, or (without one) a per-channel constant Add right after,
    or the B input of an unfolded BatchNormalization right after."""
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if node.op_type == "Gemm" and not has_bias:
        return _matmul_add(node, idx)
    if has_bias or node.op_type == "Gemm":
        return (_gemm if node.op_type == "Gemm" else _conv_like)(node, idx)
    if not idx.is_constant(node.input[1]) or idx.is_constant(node.input[0]):
        return None
    w_shape = idx.const_shape(node.input[1])
    found = _add_bias(node, idx, len(w_shape) if w_shape else None, 1) or _bn_bias(node, idx)
    if found is None:
        return None
    other, add = found
    if w_shape is not None:
        out_ch = w_shape[0] if node.op_type == "Conv" else w_shape[1] * int(attr(node, "group", 1))
        if idx.float_init(other).size != out_ch:
            return None
    return BiasLayer(node.name, node.op_type, node.input[0], add.output[0], other, 1, 1,
                     weight=node.input[1], bias_node=add.name)


_DETECTORS = {"Conv": _with_bias, "ConvTranspose": _with_bias, "Gemm": _with_bias, "MatMul": _matmul_add}


def find_bias_layers(model: onnx.ModelProto) -> list[BiasLayer]:
    """Return the correctable biased layers of ``model`` in topological (graph) order.

    Layers without a bias, with a non-constant weight or with a bias that is not a per-output-channel float
    initializer are not returned. Nodes without a name cannot be addressed and are skipped.
    """
    idx = GraphIndex(model.graph)
    layers = []
    for node in model.graph.node:
        detect = _DETECTORS.get(node.op_type)
        if detect is None or not node.name:
            continue
        layer = detect(node, idx)
        if layer is not None:
            layers.append(layer)
    return layers


def judge_shift(
    shift: np.ndarray, bias: np.ndarray, out_mean: np.ndarray | None, threshold: float
) -> tuple[bool, str]:
    """Decide whether a bias shift is plausible. Returns (apply, reason); reason is "" when applied.

    The shift is compared with the bias; for a (near) zero bias, with the FP32 output mean instead, so a zero
    bias never divides by zero.
    """
    if shift.size == 0 or not np.all(np.isfinite(shift)):
        return False, "shift is not finite (NaN/Inf in statistics or outputs)"
    max_shift = float(np.max(np.abs(shift)))
    if max_shift == 0.0:
        return True, ""
    ref = float(np.max(np.abs(bias))) if bias.size else 0.0
    what = "bias"
    if ref <= EPS:
        ref = float(np.max(np.abs(out_mean))) if out_mean is not None and out_mean.size else 0.0
        what = "output mean (bias is zero)"
    ratio = max_shift / max(ref, EPS)
    if ratio > threshold:
        return False, f"implausible shift: max|shift|={max_shift:.3g} is {ratio:.3g}x max|{what}| (> {threshold})"
    return True, ""


def summary(layer: BiasLayer, applied: bool, reason: str, shift: np.ndarray | None, bias: np.ndarray | None) -> dict:
    """One per-layer summary record: layer, op_type, applied, reason, shift_norm, max_abs_shift, bias_norm."""
    finite = shift is not None and shift.size > 0 and bool(np.all(np.isfinite(shift)))
    return {
        "layer": layer.name,
        "op_type": layer.op_type,
        "applied": bool(applied),
        "reason": reason,
        "shift_norm": float(np.linalg.norm(shift)) if finite else None,
        "max_abs_shift": float(np.max(np.abs(shift))) if finite else None,
        "bias_norm": float(np.linalg.norm(bias)) if bias is not None else None,
    }


def _bias_node(model: onnx.ModelProto, layer: BiasLayer) -> onnx.NodeProto | None:
    target = layer.bias_node or layer.name
    return next((n for n in model.graph.node if n.name == target), None)


def _bias_input(model: onnx.ModelProto, layer: BiasLayer) -> tuple[onnx.NodeProto | None, int]:
    """The node adding the bias and the index of its bias input (it may read an unshared copy by now)."""
    node = _bias_node(model, layer)
    if node is None:
        return None, -1
    if layer.bias_node and layer.bias_node != layer.name:  # an Add or a BatchNormalization after the layer
        for k, name in enumerate(node.input):
            if node.op_type == "BatchNormalization" and k != 2:
                continue
            if name == layer.bias or name.startswith(f"{layer.bias}__ptqflow_bc"):
                return node, k
        return node, -1
    return node, 2 if len(node.input) > 2 else -1


def _locate(model: onnx.ModelProto, name: str) -> tuple[onnx.TensorProto | None, onnx.NodeProto | None]:
    init = next((t for t in model.graph.initializer if t.name == name), None)
    if init is not None:
        return init, None
    return None, next((n for n in model.graph.node if n.op_type == "Constant" and name in n.output), None)


def read_bias(model: onnx.ModelProto, layer: BiasLayer) -> np.ndarray | None:
    """The layer's current float bias in ``model`` as float64 [C], or None when it is not a float constant."""
    node, k = _bias_input(model, layer)
    if node is None or k < 0:
        return None
    value = float_constant(*_locate(model, node.input[k]))
    return None if value is None else value.astype(np.float64).reshape(-1)


def write_bias(model: onnx.ModelProto, layer: BiasLayer, new_bias: np.ndarray) -> str:
    """Store ``new_bias`` as the layer's bias in ``model`` (in place, keeping dtype and shape). Returns its name.

    The bias may be an initializer or a Constant node. One read by other nodes too is copied to a new
    initializer for this layer only, so correcting one layer never moves another's output.
    """
    if not np.all(np.isfinite(new_bias)):
        raise ValueError(f"refusing to write a non-finite bias for layer {layer.name!r}")
    graph = model.graph
    node, k = _bias_input(model, layer)
    name = node.input[k]
    init, const = _locate(model, name)
    old = float_constant(init, const)
    array = np.asarray(new_bias, dtype=old.dtype).reshape(old.shape)
    readers = sum(1 for n in graph.node for i in n.input if i == name)
    if readers > 1 or any(o.name == name for o in graph.output):
        new_name = f"{layer.bias}__ptqflow_bc_{layer.name}"
        node.input[k] = new_name
        graph.initializer.append(numpy_helper.from_array(array, new_name))
        return new_name
    if init is not None:
        init.CopyFrom(numpy_helper.from_array(array, name))
    else:
        value = next(a for a in const.attribute if a.name == "value")
        value.t.CopyFrom(numpy_helper.from_array(array, value.t.name))
    return name


def channel_mean(array: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel mean over every axis but ``axis`` (float64 [C])."""
    array = np.asarray(array)
    axis = axis % array.ndim
    others = tuple(a for a in range(array.ndim) if a != axis)
    return array.mean(axis=others, dtype=np.float64)  # float64 accumulation without a float64 copy
