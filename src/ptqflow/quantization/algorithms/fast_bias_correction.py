"""FastBiasCorrection: correct each quantized layer's bias from the statistics pass alone.

For every correctable layer the statistics pass measured the FP32 per-channel means of its input. After
quantization the layer is cut out of the quantized model alone (with its weight DequantizeLinear), fed a synthetic
tensor whose channel c is constant at the FP32 input mean, and its per-channel output mean is compared with a
reference; the difference moves the bias. Cost: one tiny inference per layer, no data pass.

Given the FP32 model, the FP32 layer is run on the same synthetic tensor and that run is the reference instead of
the measured output mean: a constant input is not real data (borders, position-dependent means), and comparing
two runs on the same input cancels that (evidence: docs/algorithms.md#fastbiascorrection).

ptqflow's own statistics pass therefore observes the input means only: an extra consumer of every layer output
would also keep the runtime from fusing the layer with its activation, slowing the statistics pass (evidence:
docs/algorithms.md#fastbiascorrection). Output means, where a caller has them, are still honoured when no FP32
model is given.

Why the activation quantizer is left out by default: on real data the input's rounding errors average out, but
a constant synthetic input rounds every position the same way, which would "correct" an error the model does not
make. Clipping is the only systematic activation error, and MinMax ranges cover the calibration data.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqflow.quantization.algorithms.bias_layers import (
    BiasLayer,
    channel_mean,
    judge_shift,
    read_bias,
    summary,
    write_bias,
)
from ptqflow.quantization.graph.index import GraphIndex, attr
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION
from ptqflow.quantization.statistics.points import Reducer, StatisticPoint
from ptqflow.quantization.statistics.store import FAST_BIAS_CORRECTION
from ptqflow.runtime.model_files import skeleton
from ptqflow.runtime.sessions import make_session

SYNTH_INPUT = "ptqflow_fbc_input"


def _input_quantizer(idx: GraphIndex, tensor: str) -> tuple[list[onnx.NodeProto], str]:
    """The Q -> DQ pair feeding ``tensor`` (if any) and the tensor entering it."""
    dq = idx.producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return [], tensor
    q = idx.producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return [], tensor
    return [q, dq], q.input[0]


def _synthetic_shape(layer: BiasLayer, node: onnx.NodeProto, idx: GraphIndex, c_in: int,
                     known: tuple[int, ...] | None) -> tuple[tuple[int, ...], bool]:
    """Shape of the synthetic input and whether the layer's own padding is kept.

    With the real input shape (``known``) the layer runs as in the model, borders included, so its output mean
    matches what the statistics pass measured. Without it, padding is dropped and the input made just large
    enough that the output has interior positions only.
    """
    if layer.op_type in ("MatMul", "Gemm"):
        if layer.op_type == "MatMul" and known is not None and len(known) >= 2:
            return (1,) * (len(known) - 1) + (c_in,), True
        return ((c_in, 1) if layer.input_channel_axis == 0 else (1, c_in)), True
    if known is not None and len(known) >= 3 and all(d > 0 for d in known[2:]):
        return (1, c_in, *known[2:]), True
    w_shape = idx.const_shape(node.input[1])
    kernel = list(attr(node, "kernel_shape", w_shape[2:] if w_shape else []))
    if not kernel:
        raise ValueError("kernel shape unknown")
    dil = list(attr(node, "dilations", [1] * len(kernel)))
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    if layer.op_type == "Conv":
        return (1, c_in, *extent), False
    strides = list(attr(node, "strides", [1] * len(kernel)))
    return (1, c_in, *[2 * e + 2 * s for e, s in zip(extent, strides)]), False


def _interior(out: np.ndarray, layer: BiasLayer, node: onnx.NodeProto, idx: GraphIndex) -> np.ndarray:
    """For an unpadded ConvTranspose, the output positions that received every kernel tap (whole strides)."""
    if layer.op_type != "ConvTranspose":
        return out
    w_shape = idx.const_shape(node.input[1])
    kernel = list(attr(node, "kernel_shape", w_shape[2:] if w_shape else []))
    dil = list(attr(node, "dilations", [1] * len(kernel)))
    strides = list(attr(node, "strides", [1] * len(kernel)))
    slices = [slice(None), slice(None)]
    for axis, (k, d, s) in enumerate(zip(kernel, dil, strides)):
        start = (k - 1) * d
        length = out.shape[2 + axis] - 2 * start
        length = max(s, (length // s) * s)
        slices.append(slice(start, start + length))
    return out[tuple(slices)]


def _copy_node(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _dedupe_topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Drop repeated nodes (a constant shared by weight and BN) and order producers before consumers."""
    unique = {}
    for n in nodes:
        unique.setdefault(tuple(n.output), n)
    pending, ready, out = list(unique.values()), set(), []
    produced = {o for n in pending for o in n.output}
    while pending:
        progressed = False
        for n in list(pending):
            if all(i in ready or i not in produced for i in n.input if i):
                out.append(n)
                ready.update(n.output)
                pending.remove(n)
                progressed = True
        if not progressed:
            raise ValueError("cycle in the extracted layer")
    return out


def _quantizers_between(idx: GraphIndex, layer_node: onnx.NodeProto, bias_node: onnx.NodeProto) -> list:
    """The Q -> DQ pair (if any) between a layer's output and the node adding its bias, in order."""
    if layer_node.output[0] in bias_node.input:
        return []
    users = idx.consumer_nodes(layer_node.output[0])
    if len(users) == 1 and users[0].op_type == "QuantizeLinear":
        q = users[0]
        dqs = [n for n in idx.consumer_nodes(q.output[0]) if n.op_type == "DequantizeLinear"]
        for dq in dqs:
            if dq.output[0] in bias_node.input:
                return [q, dq]
    raise ValueError(f"{bias_node.name!r} does not read {layer_node.name!r} (nor its Q/DQ)")


def _input_part(idx: GraphIndex, node: onnx.NodeProto, include_quantizer: bool) -> tuple[list, str]:
    """Nodes between the synthetic input and the layer (its activation Q/DQ when asked) and the tensor fed."""
    if not include_quantizer:
        return [], SYNTH_INPUT
    qdq, _ = _input_quantizer(idx, node.input[0])  # the node's own input: the DQ output in a QDQ model
    if not qdq:
        return [], SYNTH_INPUT
    q, dq = _copy_node(qdq[0]), _copy_node(qdq[1])
    q.input[0] = SYNTH_INPUT
    nodes = [q, dq]
    for const in [c for c in list(q.input[1:]) + list(dq.input[1:]) if c]:
        if not idx.is_constant(const):
            raise ValueError(f"quantizer parameter {const!r} is not constant")
        nodes += idx.constant_closure(const)
    return nodes, dq.output[0]


def _bias_tail(idx: GraphIndex, layer: BiasLayer, layer_node: onnx.NodeProto, include_quantizers: bool,
               out_name: str) -> tuple[list, list]:
    """The layer plus the Add / BatchNormalization that adds its bias, with the bias replaced by zeros.

    Returns (nodes, extra initializers).
    """
    node = idx.by_name[layer.name]
    bias_node = idx.by_name[layer.bias_node]
    between = _quantizers_between(idx, node, bias_node)
    nodes = [layer_node]
    if include_quantizers:
        nodes += [_copy_node(n) for n in between]
        nodes += [c for n in between for name in n.input[1:] if name for c in idx.constant_closure(name)]
    elif between:  # the bias node reads the raw layer output in place of its Q/DQ copy
        layer_node.output[0] = between[-1].output[0]
    tail = _copy_node(bias_node)
    extra, current = [], None
    for k, name in enumerate(tail.input):
        if not extra and (name == layer.bias or name.startswith(f"{layer.bias}__ptqflow_bc")):
            zeros = np.zeros_like(idx.float_init(name), dtype=np.float32)
            extra.append(numpy_helper.from_array(zeros, "ptqflow_fbc_zero_bias"))
            tail.input[k] = "ptqflow_fbc_zero_bias"
        elif name in (node.output[0], *(n.output[0] for n in between)):
            current = name
        elif name:
            nodes += idx.constant_closure(name)
    if not extra or current is None:
        raise ValueError(f"{bias_node.name!r} does not add the bias {layer.bias!r} to {layer.name!r}")
    tail.output[0] = out_name
    del tail.output[1:]
    return nodes + [tail], extra


def extract_layer_model(q_model: onnx.ModelProto, layer: BiasLayer, input_shape: tuple[int, ...],
                        keep_pads: bool, include_activation_quantizers: bool, idx: GraphIndex) -> onnx.ModelProto:
    """A model computing ``layer`` alone from a synthetic input, without its bias. Returns the model.

    Holds the weight's constant subgraph (DequantizeLinear of the int8 weight) and, when asked, the activation
    Q/DQ pairs with the quantized model's scale and zero point.
    """
    node = idx.by_name[layer.name]
    nodes, act = _input_part(idx, node, include_activation_quantizers)
    nodes += idx.constant_closure(node.input[1])  # the q_model's weight (DQ output)
    layer_node = _copy_node(node)
    layer_node.input[0] = act
    if layer.op_type in ("Conv", "ConvTranspose", "Gemm"):
        del layer_node.input[2:]
    if not keep_pads and layer.op_type in ("Conv", "ConvTranspose"):
        keep = [a for a in layer_node.attribute if a.name not in ("pads", "auto_pad", "output_padding", "output_shape")]
        del layer_node.attribute[:]
        layer_node.attribute.extend(keep)
    out_name = "ptqflow_fbc_output"
    extra_inits = []
    if layer.bias_node and layer.bias_node != layer.name:
        tail, extra_inits = _bias_tail(idx, layer, layer_node, include_activation_quantizers, out_name)
        nodes += tail
    else:  # Conv/ConvTranspose/Gemm with the bias input removed
        layer_node.output[0] = out_name
        nodes.append(layer_node)
    nodes = _dedupe_topological(nodes)
    used = {i for n in nodes for i in n.input if i}
    inits = [t for t in q_model.graph.initializer if t.name in used] + extra_inits
    graph = helper.make_graph(
        nodes, f"fbc_{layer.name}",
        [helper.make_tensor_value_info(SYNTH_INPUT, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=list(q_model.opset_import))
    model.ir_version = min(q_model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    return model


def _quantized_output_mean(q_model, layer, idx, mean_in, known_shape, include_activation_quantizers, device):
    """Per-channel output mean (without bias) of the quantized layer on the synthetic mean input."""
    node = idx.by_name[layer.name]
    c_in = mean_in.size
    shape, keep_pads = _synthetic_shape(layer, node, idx, c_in, known_shape)
    model = extract_layer_model(q_model, layer, shape, keep_pads, include_activation_quantizers, idx)
    axis = layer.input_channel_axis % len(shape)
    bcast = [1] * len(shape)
    bcast[axis] = c_in
    synth = np.broadcast_to(mean_in.astype(np.float32).reshape(bcast), shape).copy()
    out = make_session(model, device).run(None, {SYNTH_INPUT: synth})[0]
    if not keep_pads:
        out = _interior(out, layer, node, idx)
    return channel_mean(out, layer.channel_axis)


def statistic_points(layers: list[BiasLayer]) -> list[StatisticPoint]:
    """FastBiasCorrection's statistics: the FP32 per-channel mean of each bias layer's input, keyed by layer."""
    return [StatisticPoint(FAST_BIAS_CORRECTION, layer.name, layer.input, Reducer.MEAN, layer.input_channel_axis)
            for layer in layers]


def apply_fast_bias_correction(
    q_model: onnx.ModelProto,
    layers: list[BiasLayer],
    means_in: dict[str, np.ndarray],
    means_out: dict[str, np.ndarray],
    *,
    threshold: float,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    fp32_model: onnx.ModelProto | None = None,
    include_activation_quantizers: bool = False,
    device: str = "cpu",
) -> list[dict]:
    """Shift the bias of every layer of ``layers`` in ``q_model`` (in place). Returns one summary dict per layer.

    ``means_in`` / ``means_out`` map a layer name to the FP32 per-channel mean of its input / biased output.
    ``input_shapes`` (optional) maps a layer name to the shape its input had in the statistics pass (batch 1):
    with it, convolutions run at their real size and padding; without it, at the size shape inference knows,
    else on a small unpadded patch.
    ``fp32_model`` (optional, recommended): the FP32 layer is run on the same synthetic input and the shift is
    the difference of the two runs, so what the synthetic input gets wrong about real data (borders, means that
    vary over positions) cancels out; ``means_out`` then only judges a zero bias. Without it the quantized run
    is compared with ``means_out`` directly.
    A layer is skipped (applied=False, with a reason) when its statistics are missing or not finite, when the
    shift is implausibly large (max|shift| > threshold * max|bias|; advanced.bias_correction_threshold), or
    when it cannot be cut out and run.
    """
    idx = GraphIndex(q_model.graph)
    ref = (fp32_model, GraphIndex(fp32_model.graph)) if fp32_model is not None else None
    if input_shapes is None:
        input_shapes = _static_input_shapes(fp32_model if fp32_model is not None else q_model, layers)
    records = []
    for layer in layers:
        shape = tuple(input_shapes[layer.name]) if input_shapes and layer.name in input_shapes else None
        records.append(_correct_layer(q_model, idx, layer, means_in.get(layer.name), means_out.get(layer.name),
                                      shape, ref, threshold, include_activation_quantizers, device))
    return records


def _static_input_shapes(model: onnx.ModelProto, layers: list[BiasLayer]) -> dict[str, tuple[int, ...]]:
    """Layer input shapes that shape inference knows completely (batch set to 1); {} when it fails."""
    try:  # on the skeleton: weights' values do not change shapes, and a copy of the weights is a model's size
        graph = onnx.shape_inference.infer_shapes(skeleton(model)).graph
    except Exception:  # inference is only a helper here: without shapes the layers run on a small patch
        return {}
    known = {}
    for vi in list(graph.input) + list(graph.value_info):
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        values = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
        if len(values) >= 3 and all(v > 0 for v in values[1:]):
            known[vi.name] = (1, *values[1:])
    return {layer.name: known[layer.input] for layer in layers if layer.input in known}


def _correct_layer(q_model, idx, layer, m_in, m_out, shape, ref, threshold, include_quantizers, device) -> dict:
    """Correct one layer's bias in place. Returns its summary record."""
    bias = read_bias(q_model, layer)
    if layer.name not in idx.by_name or bias is None:
        return summary(layer, False, "layer or float bias not found in the quantized model", None, bias)
    if m_in is None or (m_out is None and ref is None):
        return summary(layer, False, "statistics missing", None, bias)
    m_in = np.asarray(m_in, dtype=np.float64).reshape(-1)
    if m_out is not None:
        m_out = np.asarray(m_out, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(m_in)) and (m_out is None or np.all(np.isfinite(m_out)))):
        return summary(layer, False, "statistics not finite (NaN/Inf)", None, bias)
    if m_out is not None and m_out.size != bias.size:
        return summary(layer, False, f"output mean has {m_out.size} channels, bias {bias.size}", None, bias)
    try:
        q_mean = _quantized_output_mean(q_model, layer, idx, m_in, shape, include_quantizers, device)
        target = m_out
        if ref is not None:
            fp32_bias = read_bias(ref[0], layer)
            f_mean = _quantized_output_mean(ref[0], layer, ref[1], m_in, shape, False, device)
            target = f_mean + fp32_bias if fp32_bias is not None and f_mean.shape == fp32_bias.shape else None
            if target is None:
                return summary(layer, False, "layer or float bias not found in the FP32 model", None, bias)
    except Exception as exc:  # one layer that cannot be cut out must not stop the others
        return summary(layer, False, f"could not run the layer alone: {type(exc).__name__}: {exc}", None, bias)
    if q_mean.size != bias.size:
        return summary(layer, False, f"layer output has {q_mean.size} channels, bias {bias.size}", None, bias)
    new_bias = target - q_mean
    shift = new_bias - bias
    ok, reason = judge_shift(shift, bias, m_out if m_out is not None else target, threshold)
    if ok and np.all(np.isfinite(new_bias)):
        write_bias(q_model, layer, new_bias)
    return summary(layer, ok, reason, shift, bias)


__all__ = ["apply_fast_bias_correction", "extract_layer_model"]
