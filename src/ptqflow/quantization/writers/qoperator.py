"""The QOperator writer: each node unit of the QDQ graph as one integer op (onnxruntime's QOperator format).

Registry op type -> converter. Conv -> QLinearConv (bias int32 at scale x_scale * w_scale), MatMul ->
QLinearMatMul, or com.microsoft MatMulIntegerToFloat where the output stays float (onnxruntime's own choice for
a MatMul without an output quantizer), Gemm -> com.microsoft QGemm (int8 or float output), Add/Mul ->
com.microsoft QLinearAdd/QLinearMul, AveragePool/GlobalAveragePool -> com.microsoft QLinearAveragePool/
QLinearGlobalAveragePool. A unit needs its activation inputs and output in one integer type (the kernels are
typed so); otherwise it stays QDQ.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ptqflow.quantization.graph.index import attr
from ptqflow.quantization.writers.units import MS, Context, Converter, Dq, Unit, rewrite


def _same_type(dqs: list[Dq]) -> bool:
    return len({d.elem_type for d in dqs}) == 1


def _int32_bias(ctx: Context, node: onnx.NodeProto, index: int, x: Dq, w: Dq, alpha: float = 1.0) -> str | None:
    """The float bias input ``index`` of ``node`` as int32 at scale alpha * x_scale * w_scale; "" when there is
    none, None when it is not a constant."""
    if len(node.input) <= index or not node.input[index]:
        return ""
    given = ctx.dq(node.input[index])
    scale = alpha * x.scale_value.astype(np.float64) * w.scale_value.astype(np.float64)
    if given is not None and ctx.value(given.q) is not None and given.zp_value.dtype == np.int32 and np.allclose(
            given.scale_value, scale, rtol=1e-6) and not np.any(given.zp_value):
        return given.q  # already int32 at the kernel's scale (bias.quantize_biases)
    bias = ctx.constant(node.input[index])
    if bias is None:
        return None
    q = np.clip(np.round(bias.astype(np.float64) / scale), -2**31, 2**31 - 1).astype(np.int32)
    return ctx.const(node.input[index] + "_int32", q)


def _attrs(node: onnx.NodeProto, skip: tuple[str, ...] = ()) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in skip}


def _qparams(d: Dq) -> list[str]:
    return [d.q, d.scale, d.zero_point]


def _output(ctx: Context, u: Unit) -> str:
    return u.q.output[0] if u.q is not None else u.node.output[0]


def _conv(ctx: Context, node: onnx.NodeProto):
    u = ctx.unit(node, [0, 1])
    if u is None or u.q is None or not _same_type([u.inputs[0], u.q_params]):
        return None
    x, w = u.inputs[0], u.inputs[1]
    bias = _int32_bias(ctx, node, 2, x, w)
    if bias is None or np.any(w.zp_value != w.zp_value.flat[0]):
        return None
    ins = _qparams(x) + _qparams(w) + [u.q_params.scale, u.q_params.zero_point] + ([bias] if bias else [])
    return [helper.make_node("QLinearConv", ins, [_output(ctx, u)], name=node.name, **_attrs(node))], u.absorbed


def _matmul(ctx: Context, node: onnx.NodeProto):
    u = ctx.unit(node, [0, 1])
    if u is None:
        return None
    a, b = u.inputs[:2]
    if u.q is not None and _same_type([a, u.q_params]):
        ins = _qparams(a) + _qparams(b) + [u.q_params.scale, u.q_params.zero_point]
        return [helper.make_node("QLinearMatMul", ins, [_output(ctx, u)], name=node.name)], u.absorbed
    ins = [a.q, b.q, a.scale, b.scale, a.zero_point, b.zero_point]
    return [helper.make_node("MatMulIntegerToFloat", ins, [node.output[0]], name=node.name, domain=MS)], []


def _gemm(ctx: Context, node: onnx.NodeProto):
    u = ctx.unit(node, [0, 1])
    if u is None or attr(node, "beta", 1.0) != 1.0 or (u.q is not None and not _same_type([u.inputs[0], u.q_params])):
        return None
    a, b = u.inputs[:2]
    alpha = attr(node, "alpha", 1.0)
    bias = _int32_bias(ctx, node, 2, a, b, alpha)
    if bias is None:
        return None
    ins = [a.q, a.scale, a.zero_point, b.q, b.scale, b.zero_point, bias]
    out, absorbed = node.output[0], []
    if u.q is not None:
        ins += [u.q_params.scale, u.q_params.zero_point]
        out, absorbed = _output(ctx, u), u.absorbed
    return [helper.make_node("QGemm", ins, [out], name=node.name, domain=MS, **_attrs(node, ("beta",)))], absorbed


def _binary(op: str) -> Converter:
    def convert(ctx: Context, node: onnx.NodeProto):
        u = ctx.unit(node, [0, 1])
        if u is None or u.q is None or not _same_type([u.inputs[0], u.inputs[1], u.q_params]):
            return None
        ins = _qparams(u.inputs[0]) + _qparams(u.inputs[1]) + [u.q_params.scale, u.q_params.zero_point]
        return [helper.make_node(op, ins, [_output(ctx, u)], name=node.name, domain=MS)], u.absorbed
    return convert


def _pool(op: str) -> Converter:
    def convert(ctx: Context, node: onnx.NodeProto):
        u = ctx.unit(node, [0])
        if u is None or u.q is None or not _same_type([u.inputs[0], u.q_params]):
            return None
        ins = _qparams(u.inputs[0]) + [u.q_params.scale, u.q_params.zero_point]
        return [helper.make_node(op, ins, [_output(ctx, u)], name=node.name, domain=MS, channels_last=0,
                                 **_attrs(node))], u.absorbed
    return convert


REGISTRY: dict[str, Converter] = {
    "Conv": _conv,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Add": _binary("QLinearAdd"),
    "Mul": _binary("QLinearMul"),
    "AveragePool": _pool("QLinearAveragePool"),
    "GlobalAveragePool": _pool("QLinearGlobalAveragePool"),
}


def write(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ, changed in place) with its node units as QOperator ops. Returns it."""
    return rewrite(model, REGISTRY)
