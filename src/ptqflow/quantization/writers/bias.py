"""Biases of the QDQ units as int32 (``target_runtime: onnxruntime``): a float bias of a Conv/Gemm whose input
and weight are dequantized becomes DequantizeLinear(int32 codes, scale input_scale x weight_scale, zero point 0),
the form onnxruntime's quantizer writes and its QLinearConv/QGemm kernels compute. The QDQ model then computes
exactly what those kernels do, and the QOperator writer takes the codes as they are.

Runs after bias correction, which corrects the float biases.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ptqflow.quantization.graph.index import attr
from ptqflow.quantization.writers.units import Context

_LAYERS = {"Conv", "Gemm"}


def quantize_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (QDQ, changed in place) with each eligible float bias as int32 + DequantizeLinear. Returns it."""
    ctx = Context(model)
    new = []
    for node in model.graph.node:
        if node.op_type not in _LAYERS or len(node.input) < 3 or not node.input[2]:
            continue
        if node.op_type == "Gemm" and (attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0):
            continue
        x, w, bias = ctx.dq(node.input[0]), ctx.dq(node.input[1]), ctx.value(node.input[2])
        if x is None or w is None or bias is None or x.scale_value.ndim or bias.ndim != 1:
            continue
        scale = (x.scale_value.astype(np.float64) * w.scale_value.astype(np.float64)) * np.ones(bias.shape)
        codes = np.clip(np.round(bias.astype(np.float64) / scale), -2**31, 2**31 - 1).astype(np.int32)
        base = node.input[2]
        q = ctx.const(base + "_int32", codes)
        s = ctx.const(base + "_int32_scale", scale.astype(np.float32))
        z = ctx.const(base + "_int32_zero_point", np.zeros(bias.shape, np.int32))
        out = ctx.name(base + "_dequantized")
        new.append(helper.make_node("DequantizeLinear", [q, s, z], [out], name=ctx.name(base + "_DequantizeLinear"),
                                    axis=0))
        node.input[2] = out
    if new:
        nodes = new + list(model.graph.node)  # constants first: the order stays topological
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        for t in [t for t in model.graph.initializer if t.name not in read]:
            model.graph.initializer.remove(t)
    return model
