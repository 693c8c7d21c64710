"""Dynamic quantization of the ops onnxruntime runs with its own int8 contrib kernels, as onnxruntime's
quantize_dynamic writes them:

- ``LSTM`` -> ``com.microsoft.DynamicQuantizeLSTM``: W and R as int8 (symmetric, per gate row and direction
  with ``per_channel``, else per direction), transposed to [directions, input, 4 x hidden]; the kernel quantizes
  X and the hidden state at run time.
- ``com.microsoft.Attention`` -> ``com.microsoft.QAttention``: the QKV weight as int8 (per column with
  ``per_channel``), the input by a DynamicQuantizeLinear. An Attention with ``qkv_hidden_sizes`` or inputs past
  ``past`` stays float (QAttention has neither).
- ``GRU`` stays float: onnxruntime has no int8 GRU kernel (no DynamicQuantizeGRU contrib op; its quantize_dynamic
  leaves GRU float too).

Each decision is a summary row. The weights are written from the float initializers; a node whose weights are
not constants stays float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ptqflow.quantization.algorithms.minmax import weight_params
from ptqflow.quantization.graph.index import attr
from ptqflow.quantization.writers.units import MS, Context

NO_INT8_KERNEL = "onnxruntime has no int8 GRU kernel (no DynamicQuantizeGRU); kept in float, as its quantize_dynamic does"
# Attention inputs QAttention has: input, weights, bias, mask_index, past (0-4)
_ATTENTION_INPUTS = 5


def _int8(w: np.ndarray, per_channel: bool):
    """Symmetric int8 codes of the 2-D ``w`` [rows, k] per row (``per_channel``) or per tensor: (codes, scale,
    zero point) with scale and zero point of shape [rows] or []."""
    scale, q = weight_params(w, 0 if per_channel else None)
    if not per_channel:
        scale = np.asarray(scale).reshape(())
    return q, scale, np.zeros(scale.shape, np.int8)


def _lstm(ctx: Context, node: onnx.NodeProto, per_channel: bool) -> tuple[list[onnx.NodeProto], dict] | None:
    w, r = (ctx.value(node.input[i]) if len(node.input) > i else None for i in (1, 2))
    if w is None or r is None or w.ndim != 3 or r.ndim != 3 or attr(node, "layout", 0) != 0:
        return None
    names = []
    for tensor, value in ((node.input[1], w), (node.input[2], r)):
        dirs, rows, k = value.shape
        if per_channel:
            q, scale, zp = _int8(value.reshape(dirs * rows, k), True)
            scale, zp = scale.reshape(dirs, rows), zp.reshape(dirs, rows)
        else:  # one scale per direction
            parts = [_int8(value[d], False) for d in range(dirs)]
            q = np.stack([p[0] for p in parts])
            scale, zp = np.stack([p[1] for p in parts]), np.zeros(dirs, np.int8)
        q = np.ascontiguousarray(q.reshape(dirs, rows, k).transpose(0, 2, 1))  # [dirs, k, 4 x hidden]
        names.append((ctx.const(tensor + "_int8", q), ctx.const(tensor + "_scale", scale.astype(np.float32)),
                      ctx.const(tensor + "_zero_point", zp)))
    optional = [node.input[i] if len(node.input) > i else "" for i in range(3, 8)]
    (wq, ws, wz), (rq, rs, rz) = names
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
    lstm = helper.make_node("DynamicQuantizeLSTM", [node.input[0], wq, rq, *optional, ws, wz, rs, rz],
                            list(node.output), name=node.name, domain=MS, **attrs)
    return [lstm], {"name": node.name, "op_type": "LSTM", "status": "quantized", "format": "DynamicQuantizeLSTM",
                    "weight": {"tensor": node.input[1], "per_channel": per_channel, "bits": 8},
                    "recurrence_weight": {"tensor": node.input[2], "per_channel": per_channel, "bits": 8},
                    "quantized_inputs": [node.input[0]]}


def _attention(ctx: Context, node: onnx.NodeProto, per_channel: bool) -> tuple[list[onnx.NodeProto], dict] | None:
    w = ctx.value(node.input[1]) if len(node.input) > 1 else None
    extra = [i for i in node.input[_ATTENTION_INPUTS:] if i]
    if w is None or w.ndim != 2 or extra or any(a.name == "qkv_hidden_sizes" for a in node.attribute):
        return None
    q, scale, zp = _int8(np.ascontiguousarray(w.T), per_channel)  # per column of [k, 3h]
    wq = ctx.const(node.input[1] + "_int8", np.ascontiguousarray(q.T))
    ws, wz = ctx.const(node.input[1] + "_scale", scale), ctx.const(node.input[1] + "_zero_point", zp)
    base = node.name or node.output[0]
    xq, xs, xz = (ctx.name(base + s) for s in ("_input_quantized", "_input_scale", "_input_zp"))
    dql = helper.make_node("DynamicQuantizeLinear", [node.input[0]], [xq, xs, xz],
                           name=ctx.name(base + "_DynamicQuantize"))
    opt = [node.input[i] if len(node.input) > i else "" for i in (2, 3, 4)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    qatt = helper.make_node("QAttention", [xq, wq, opt[0], xs, ws, opt[1], xz, wz, opt[2]], list(node.output),
                            name=node.name, domain=MS, **attrs)
    return [dql, qatt], {"name": node.name, "op_type": "Attention", "status": "quantized", "format": "QAttention",
                         "weight": {"tensor": node.input[1], "per_channel": per_channel, "bits": 8},
                         "quantized_inputs": [node.input[0]]}


def _gru(node: onnx.NodeProto) -> dict:
    return {"name": node.name, "op_type": "GRU", "status": "float", "reason": NO_INT8_KERNEL,
            "decided_by": "dynamic_contrib"}


def write(model: onnx.ModelProto, per_channel: bool, ignored: set[str]) -> list[dict]:
    """Rewrite ``model`` (changed in place) with each LSTM and com.microsoft Attention outside ``ignored`` as its
    onnxruntime dynamic int8 op; GRU kept float. Returns one summary row per LSTM/GRU/Attention node."""
    ctx = Context(model)
    rows, nodes = [], []
    for node in model.graph.node:
        kind = (node.op_type, node.domain or "")
        convert = {("LSTM", ""): _lstm, ("Attention", MS): _attention}.get(kind)
        if kind == ("GRU", ""):
            rows.append(_gru(node))
        elif convert is not None and node.name in ignored:
            rows.append({"name": node.name, "op_type": node.op_type, "status": "float", "reason": "ignored_scope",
                         "decided_by": "ignored_scope"})
        elif convert is not None:
            result = convert(ctx, node, per_channel)
            if result is not None:
                new, row = result
                nodes.extend(new)
                rows.append(row)
                continue
            rows.append({"name": node.name, "op_type": node.op_type, "status": "float", "decided_by": "dynamic_contrib",
                         "reason": "weights are not constants, or a layout/attribute the int8 kernel lacks"})
        nodes.append(node)
    if any(r["status"] == "quantized" for r in rows):
        replaced = {i for n in model.graph.node for i in n.input[1:3] if n.op_type in ("LSTM", "Attention")}
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        for t in [t for t in model.graph.initializer if t.name in replaced and t.name not in read]:
            model.graph.initializer.remove(t)
        if not any(o.domain == MS for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS, 1))
    return rows
