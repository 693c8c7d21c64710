"""FastBiasCorrection: correct each quantized layer's bias from the statistics pass alone.

For every correctable layer the statistics pass measured the FP32 per-channel means of its input and output.
After quantization the layer is cut out of the quantized model alone (with its weight DequantizeLinear), fed a
synthetic tensor whose channel c is constant at the FP32 input mean, and its per-channel output mean is compared
with the FP32 output mean; the difference moves the bias. Cost: one tiny inference per layer, no data pass.

Why the activation quantizer is left out by default: on real data the input's rounding errors average out, but
a constant synthetic input rounds every position the same way, which would "correct" an error the model does not
make. Clipping is the only systematic activation error, and MinMax ranges cover the calibration data.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqflow.algorithms.bias_layers import (
    BiasLayer,
    GraphIndex,
    _attr,
    channel_mean,
    judge_shift,
    make_session,
    read_bias,
    summary,
    write_bias,
)

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
    kernel = list(_attr(node, "kernel_shape", w_shape[2:] if w_shape else []))
    if not kernel:
        raise ValueError("kernel shape unknown")
    dil = list(_attr(node, "dilations", [1] * len(kernel)))
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    if layer.op_type == "Conv":
        return (1, c_in, *extent), False
    strides = list(_attr(node, "strides", [1] * len(kernel)))
    return (1, c_in, *[2 * e + 2 * s for e, s in zip(extent, strides)]), False


def _interior(out: np.ndarray, layer: BiasLayer, node: onnx.NodeProto, idx: GraphIndex) -> np.ndarray:
    """For an unpadded ConvTranspose, the output positions that received every kernel tap (whole strides)."""
    if layer.op_type != "ConvTranspose":
        return out
    w_shape = idx.const_shape(node.input[1])
    kernel = list(_attr(node, "kernel_shape", w_shape[2:] if w_shape else []))
    dil = list(_attr(node, "dilations", [1] * len(kernel)))
    strides = list(_attr(node, "strides", [1] * len(kernel)))
    slices = [slice(None), slice(None)]
    for axis, (k, d, s) in enumerate(zip(kernel, dil, strides)):
        start = (k - 1) * d
        length = out.shape[2 + axis] - 2 * start
        length = max(s, (length // s) * s)
        slices.append(slice(start, start + length))
    return out[tuple(slices)]


def extract_layer_model(q_model: onnx.ModelProto, layer: BiasLayer, input_shape: tuple[int, ...],
                        keep_pads: bool, include_input_quantizer: bool, idx: GraphIndex) -> onnx.ModelProto:
    """A model computing ``layer`` alone from a synthetic input, without its bias. Returns the model.

    Holds the weight's constant subgraph (DequantizeLinear of the int8 weight) and, when asked, the activation
    Q/DQ pair with the quantized model's scale and zero point.
    """
    node = idx.nodes[layer.name]
    nodes: list[onnx.NodeProto] = []
    act = layer.input
    if include_input_quantizer:
        qdq, _ = _input_quantizer(idx, node.input[0])  # the node's own input: the DQ output in a QDQ model
        if qdq:
            q, dq = (onnx.NodeProto(), onnx.NodeProto())
            q.CopyFrom(qdq[0])
            dq.CopyFrom(qdq[1])
            q.input[0] = SYNTH_INPUT
            nodes += [q, dq]
            for const in list(q.input[1:]) + list(dq.input[1:]):
                if const and not idx.is_constant(const):
                    raise ValueError(f"quantizer parameter {const!r} is not constant")
                nodes += idx.constant_closure(const) if const else []
            act = dq.output[0]
    if not nodes:
        act = SYNTH_INPUT
    nodes += idx.constant_closure(node.input[1])  # the q_model's weight (DQ output)
    layer_node = onnx.NodeProto()
    layer_node.CopyFrom(node)
    layer_node.input[0] = act
    if layer.op_type in ("Conv", "ConvTranspose", "Gemm"):
        del layer_node.input[2:]
    if not keep_pads and layer.op_type in ("Conv", "ConvTranspose"):
        keep = [a for a in layer_node.attribute if a.name not in ("pads", "auto_pad", "output_padding", "output_shape")]
        del layer_node.attribute[:]
        layer_node.attribute.extend(keep)
    out_name = "ptqflow_fbc_output"
    extra_inits = []
    bias_node = idx.nodes.get(layer.bias_node)
    if bias_node is not None and bias_node.op_type == "BatchNormalization":
        # the bias is BN's B: run the BN too, with B = 0, so only the scale and mean remain
        if bias_node.input[0] != node.output[0]:
            raise ValueError(f"{bias_node.name!r} does not read {layer.name!r} directly")
        layer_node.output[0] = "ptqflow_fbc_pre_bn"
        bn = onnx.NodeProto()
        bn.CopyFrom(bias_node)
        bn.input[0], bn.input[2], bn.output[0] = "ptqflow_fbc_pre_bn", "ptqflow_fbc_zero_bias", out_name
        for const in (bn.input[1], bn.input[3], bn.input[4]):
            nodes += idx.constant_closure(const)
        channels = idx.float_init(bias_node.input[2]).size
        extra_inits.append(numpy_helper.from_array(np.zeros(channels, np.float32), "ptqflow_fbc_zero_bias"))
        nodes += [layer_node, bn]
    else:  # Conv/Gemm with the bias input removed, or the MatMul/Conv before its bias Add
        layer_node.output[0] = out_name
        nodes.append(layer_node)
    used = {i for n in nodes for i in n.input if i}
    inits = [t for t in q_model.graph.initializer if t.name in used] + extra_inits
    graph = helper.make_graph(
        nodes, f"fbc_{layer.name}",
        [helper.make_tensor_value_info(SYNTH_INPUT, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=list(q_model.opset_import))
    model.ir_version = min(q_model.ir_version or 10, 10)
    return model


def _quantized_output_mean(q_model, layer, idx, mean_in, known_shape, include_input_quantizer, device):
    """Per-channel output mean (without bias) of the quantized layer on the synthetic mean input."""
    node = idx.nodes[layer.name]
    c_in = mean_in.size
    shape, keep_pads = _synthetic_shape(layer, node, idx, c_in, known_shape)
    model = extract_layer_model(q_model, layer, shape, keep_pads, include_input_quantizer, idx)
    axis = layer.input_channel_axis % len(shape)
    bcast = [1] * len(shape)
    bcast[axis] = c_in
    synth = np.broadcast_to(mean_in.astype(np.float32).reshape(bcast), shape).copy()
    out = make_session(model, device).run(None, {SYNTH_INPUT: synth})[0]
    if not keep_pads:
        out = _interior(out, layer, node, idx)
    return channel_mean(out, layer.channel_axis)


def apply_fast_bias_correction(
    q_model: onnx.ModelProto,
    layers: list[BiasLayer],
    means_in: dict[str, np.ndarray],
    means_out: dict[str, np.ndarray],
    threshold: float = 2.0,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    include_input_quantizer: bool = False,
    device: str = "cpu",
) -> list[dict]:
    """Shift the bias of every layer of ``layers`` in ``q_model`` (in place). Returns one summary dict per layer.

    ``means_in`` / ``means_out`` map a layer name to the FP32 per-channel mean of its input / biased output.
    ``input_shapes`` (optional) maps a layer name to the shape its input had in the statistics pass (batch 1):
    with it, convolutions run at their real size and padding; without it, on a small unpadded patch.
    A layer is skipped (applied=False, with a reason) when its statistics are missing or not finite, when the
    shift is implausibly large (max|shift| > threshold * max|bias|), or when it cannot be cut out and run.
    """
    idx = GraphIndex(q_model.graph)
    records = []
    for layer in layers:
        bias = read_bias(q_model, layer)
        if layer.name not in idx.nodes or bias is None:
            records.append(summary(layer, False, "layer or float bias not found in the quantized model", None, bias))
            continue
        m_in, m_out = means_in.get(layer.name), means_out.get(layer.name)
        if m_in is None or m_out is None:
            records.append(summary(layer, False, "statistics missing", None, bias))
            continue
        m_in = np.asarray(m_in, dtype=np.float64).reshape(-1)
        m_out = np.asarray(m_out, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(m_in)) and np.all(np.isfinite(m_out))):
            records.append(summary(layer, False, "statistics not finite (NaN/Inf)", None, bias))
            continue
        if m_out.size != bias.size:
            records.append(summary(layer, False, f"output mean has {m_out.size} channels, bias {bias.size}", None, bias))
            continue
        shape = tuple(input_shapes[layer.name]) if input_shapes and layer.name in input_shapes else None
        try:
            q_mean = _quantized_output_mean(q_model, layer, idx, m_in, shape, include_input_quantizer, device)
        except Exception as exc:  # one layer that cannot be cut out must not stop the others
            records.append(summary(layer, False, f"could not run the layer alone: {type(exc).__name__}: {exc}",
                                   None, bias))
            continue
        if q_mean.size != bias.size:
            records.append(summary(layer, False, f"layer output has {q_mean.size} channels, bias {bias.size}",
                                   None, bias))
            continue
        new_bias = m_out - q_mean
        shift = new_bias - bias
        ok, reason = judge_shift(shift, bias, m_out, threshold)
        if ok and np.all(np.isfinite(new_bias)):
            write_bias(q_model, layer, new_bias)
        records.append(summary(layer, ok, reason, shift, bias))
    return records


__all__ = ["apply_fast_bias_correction", "extract_layer_model"]
