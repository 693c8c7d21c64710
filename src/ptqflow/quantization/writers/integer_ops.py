"""The IntegerOps writer: Conv -> ConvInteger, MatMul/Gemm -> MatMulInteger, each followed by the float rescale
(Cast to float, Mul by input scale x weight scale, Add bias), as onnxruntime's IntegerOps format.

Static (``write``): the activation input is the integer tensor of its QuantizeLinear, with the calibrated scale.
Dynamic (``write_dynamic``): the activation input is float and a DynamicQuantizeLinear quantizes it at run time
(uint8, its own scale and zero point per call), so no calibration is needed. Weights are the int8 initializers
of the QDQ graph's DequantizeLinear (uint8 too); onnxruntime's ConvInteger takes one weight zero point, the
per-channel scales go into the float rescale.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptqflow.quantization.graph.index import attr
from ptqflow.quantization.writers.units import Context, Converter, Dq, rewrite


def _rescale(ctx: Context, node: onnx.NodeProto, acc: str, x_scale: str | None, scale: np.ndarray,
             bias: np.ndarray | None, shape: list[int]) -> list[onnx.NodeProto]:
    """int32 ``acc`` -> float * (``x_scale``, a run-time tensor when given, * ``scale``) (+ ``bias``), both
    reshaped to ``shape``, into ``node``'s output. The scales are multiplied first, the pattern onnxruntime fuses
    into MatMulIntegerToFloat / DynamicQuantizeMatMul."""
    base = node.name or node.output[0]
    f = ctx.name(base + "_float")
    nodes = [helper.make_node("Cast", [acc], [f], name=ctx.name(base + "_Cast"), to=TensorProto.FLOAT)]
    c = ctx.const(base + "_rescale", scale.astype(np.float32).reshape(shape))
    if x_scale is not None:
        both = ctx.name(base + "_scale")
        nodes.append(helper.make_node("Mul", [x_scale, c], [both], name=ctx.name(base + "_MulScales")))
        c = both
    out = node.output[0] if bias is None else ctx.name(base + "_nobias")
    nodes.append(helper.make_node("Mul", [f, c], [out], name=ctx.name(base + "_Mul")))
    if bias is not None:
        b = ctx.const(base + "_bias", bias.astype(np.float32).reshape(shape))
        nodes.append(helper.make_node("Add", [out, b], [node.output[0]], name=ctx.name(base + "_Add")))
    return nodes


def _activation(ctx: Context, node: onnx.NodeProto, dynamic: bool):
    """(integer tensor, zero point, scale name or None, constant scale factor, nodes to add) for input 0: from its
    DequantizeLinear (static) or a new DynamicQuantizeLinear (dynamic); None when it is neither."""
    x = ctx.dq(node.input[0])
    if x is not None and not x.scale_value.ndim:
        return x.q, x.zero_point, None, x.scale_value.astype(np.float64), []
    if not dynamic or x is not None or ctx.g.is_const_input(node.input[0]):
        return None
    base = node.name or node.output[0]
    q, s, z = ctx.name(base + "_input_quantized"), ctx.name(base + "_input_scale"), ctx.name(base + "_input_zp")
    dql = helper.make_node("DynamicQuantizeLinear", [node.input[0]], [q, s, z], name=ctx.name(base + "_DynamicQuantize"))
    return q, z, s, np.float64(1.0), [dql]


def _weight(ctx: Context, node: onnx.NodeProto) -> Dq | None:
    w = ctx.dq(node.input[1])
    return w if w is not None and ctx.value(w.q) is not None else None


def _conv(dynamic: bool) -> Converter:
    def convert(ctx: Context, node: onnx.NodeProto):
        w, x = _weight(ctx, node), _activation(ctx, node, dynamic)
        if w is None or x is None or np.any(w.zp_value != w.zp_value.flat[0]):
            return None
        xq, xzp, xs, xscale, pre = x
        wzp = ctx.const(w.zero_point + "_scalar", w.zp_value.flat[0:1].reshape(()))
        acc = ctx.name((node.name or node.output[0]) + "_int32")
        conv = helper.make_node("ConvInteger", [xq, w.q, xzp, wzp], [acc], name=node.name,
                                **{a.name: helper.get_attribute_value(a) for a in node.attribute})
        bias = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            return None
        scale = xscale * w.scale_value.astype(np.float64) * np.ones(ctx.value(w.q).shape[0])
        return pre + [conv] + _rescale(ctx, node, acc, xs, scale, bias, [1, -1, 1, 1]), []
    return convert


def _matmul(dynamic: bool) -> Converter:
    def convert(ctx: Context, node: onnx.NodeProto):
        w, x = _weight(ctx, node), _activation(ctx, node, dynamic)
        if w is None or x is None:
            return None
        wq = ctx.value(w.q)
        if node.op_type == "Gemm":
            if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
                return None
            if attr(node, "transB", 0):  # MatMulInteger takes B as [K, N]
                wq = np.ascontiguousarray(wq.T)
        if wq.ndim != 2 or (w.scale_value.ndim and w.scale_value.size != wq.shape[1]):
            return None
        xq, xzp, xs, xscale, pre = x
        b = ctx.const(w.q + "_KxN", wq) if node.op_type == "Gemm" else w.q
        acc = ctx.name((node.name or node.output[0]) + "_int32")
        mm = helper.make_node("MatMulInteger", [xq, b, xzp, w.zero_point], [acc], name=node.name)
        bias = ctx.constant(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] and bias is None:
            return None
        scale = xscale * w.scale_value.astype(np.float64) * np.ones(wq.shape[1])
        return pre + [mm] + _rescale(ctx, node, acc, xs, scale, bias, [-1]), []
    return convert


def registry(dynamic: bool) -> dict[str, Converter]:
    """Op type -> converter, static or dynamic."""
    return {"Conv": _conv(dynamic), "MatMul": _matmul(dynamic), "Gemm": _matmul(dynamic)}


def write(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ, changed in place) with its Conv/MatMul/Gemm units as ConvInteger/MatMulInteger. Returns it."""
    return rewrite(model, registry(False))


def write_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (weights as DequantizeLinear of integer initializers, activations float; changed in place) with
    each such Conv/MatMul/Gemm as DynamicQuantizeLinear + ConvInteger/MatMulInteger. Returns it."""
    return rewrite(model, registry(True))
