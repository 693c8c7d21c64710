"""Node units of a QDQ graph and the rewrite that replaces them, shared by the writers.

A unit is an op whose quantized inputs each come from a DequantizeLinear (``Dq``: the integer tensor, its scale
and zero point, as names and values) and whose output, directly or through a Relu/Clip that onnxruntime would
drop, is read by exactly one QuantizeLinear (``Q``). A converter gets the unit and returns the nodes that replace
the op (and the Relu and QuantizeLinear it absorbs); ``rewrite`` splices them in and drops what became dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqflow.quantization.algorithms.minmax import _reads
from ptqflow.quantization.graph.index import GraphIndex, attr

MS = "com.microsoft"  # onnxruntime's contrib op domain
_QMIN = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT8: -128}


@dataclass
class Dq:
    """A DequantizeLinear input: integer tensor, scale and zero point names, their values, and the per-axis axis."""

    q: str
    scale: str
    zero_point: str
    scale_value: np.ndarray
    zp_value: np.ndarray
    axis: int | None

    @property
    def elem_type(self) -> int:
        return onnx.helper.np_dtype_to_tensor_dtype(self.zp_value.dtype)


@dataclass
class Unit:
    """An op with its DequantizeLinear inputs (None where an input is float) and the QuantizeLinear of its output."""

    node: onnx.NodeProto
    inputs: list[Dq | None]
    q: onnx.NodeProto | None = None  # its output is the unit's integer output
    q_params: Dq | None = None  # the output's scale and zero point (``q`` empty)
    absorbed: list[onnx.NodeProto] = field(default_factory=list)  # Relu/Clip and Q the replacement stands for


class Context:
    """The graph being rewritten: constant values, unique names, new initializers."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = GraphIndex(model)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.used = {o for n in model.graph.node for o in n.output} | set(self.inits) | {
            i.name for i in model.graph.input} | {n.name for n in model.graph.node}

    def value(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name``: an initializer, or the DequantizeLinear of one (an int32 bias), else None."""
        value = self.value(name)
        if value is not None:
            return value
        d = self.dq(name)
        if d is None or self.value(d.q) is None:
            return None
        q = self.value(d.q).astype(np.float64)
        shape = [-1 if i == (d.axis or 0) % max(q.ndim, 1) else 1 for i in range(q.ndim)] if d.scale_value.ndim else []
        s, z = d.scale_value.reshape(shape or ()), d.zp_value.reshape(shape or ())
        return ((q - z) * s).astype(np.float32)

    def name(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        """A new initializer holding ``array``; returns its name."""
        name = self.name(base)
        t = numpy_helper.from_array(np.asarray(array), name)
        self.model.graph.initializer.append(t)
        self.inits[name] = t
        return name

    def dq(self, tensor: str) -> Dq | None:
        """The DequantizeLinear producing ``tensor`` with constant scale and zero point, else None."""
        node = self.g.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
            return None
        scale, zp = self.value(node.input[1]), self.value(node.input[2])
        if scale is None or zp is None:
            return None
        axis = attr(node, "axis", 1) if scale.ndim else None
        return Dq(node.input[0], node.input[1], node.input[2], scale, zp, axis)

    def unit(self, node: onnx.NodeProto, quantized: list[int]) -> Unit | None:
        """``node`` as a unit when every input index in ``quantized`` comes from a DequantizeLinear, else None."""
        dqs = [self.dq(t) if i in quantized and t else None for i, t in enumerate(node.input)]
        if any(dqs[i] is None for i in quantized if i < len(node.input)):
            return None
        unit = Unit(node, dqs)
        out, absorbed = node.output[0], []
        readers = self.g.consumers.get(out, [])
        if len(readers) == 1 and readers[0][0].op_type in ("Relu", "Clip") and out not in self.g.outputs:
            absorbed.append(readers[0][0])
            out = readers[0][0].output[0]
            readers = self.g.consumers.get(out, [])
        if len(readers) == 1 and readers[0][0].op_type == "QuantizeLinear" and out not in self.g.outputs:
            q = readers[0][0]
            params = self.dq_params(q)
            if params is not None and (not absorbed or _drops_activation(absorbed[0], params, self)):
                unit.q, unit.q_params, unit.absorbed = q, params, absorbed + [q]
        return unit

    def dq_params(self, q: onnx.NodeProto) -> Dq | None:
        """The per-tensor scale and zero point of the QuantizeLinear ``q``, else None."""
        if len(q.input) < 3:
            return None
        scale, zp = self.value(q.input[1]), self.value(q.input[2])
        if scale is None or zp is None or scale.ndim:
            return None
        return Dq(q.output[0], q.input[1], q.input[2], scale, zp, None)


def _drops_activation(act: onnx.NodeProto, params: Dq, ctx: Context) -> bool:
    """True when the Relu/Clip ``act`` changes nothing after quantization with ``params``: its lower bound is the
    integer type's minimum (zero point) and a Clip's upper bound is not inside the range (onnxruntime's rule)."""
    zp = int(params.zp_value)
    if zp != _QMIN.get(params.elem_type):
        return False
    if act.op_type == "Relu":
        return True
    lo = ctx.value(act.input[1]) if len(act.input) > 1 and act.input[1] else None
    hi = ctx.value(act.input[2]) if len(act.input) > 2 and act.input[2] else None
    top = float(params.scale_value) * (255 + _QMIN[params.elem_type] - zp)
    return lo is not None and float(lo) == 0.0 and (hi is None or float(hi) >= top)


# A converter: (context, node) -> (the nodes replacing it, the nodes it absorbs), or None to leave it as is.
Converter = Callable[[Context, onnx.NodeProto], tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None]


def rewrite(model: onnx.ModelProto, registry: dict[str, Converter]) -> onnx.ModelProto:
    """``model`` with every node whose op type has a converter in ``registry`` replaced by what it returns (None:
    left as is), the nodes each replacement absorbs removed, then dead DequantizeLinear/QuantizeLinear nodes and
    unused initializers dropped. Returns ``model`` (changed in place)."""
    ctx = Context(model)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    gone: set[int] = set()
    for node in list(model.graph.node):
        convert = registry.get(node.op_type)
        if convert is None or node.domain not in ("", "ai.onnx"):
            continue
        result = convert(ctx, node)
        if result is None:
            continue
        new, absorbed = result
        replaced[id(node)] = new
        gone |= {id(n) for n in absorbed}
    nodes = []
    for n in model.graph.node:
        if id(n) in gone:
            continue
        nodes.extend(replaced.get(id(n), [n]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_dead(model)
    if any(n.domain == MS for n in model.graph.node) and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return model


_REMOVABLE = {"QuantizeLinear", "DequantizeLinear"}


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove QuantizeLinear/DequantizeLinear nodes whose output nothing reads (repeatedly), then initializers
    nothing reads."""
    g = model.graph
    while True:
        read = {i for n in g.node for i in _reads(n)} | {o.name for o in g.output}
        keep = [n for n in g.node if n.op_type not in _REMOVABLE or n.output[0] in read]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    read = {i for n in g.node for i in _reads(n)} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in read]
    for t in unused:
        g.initializer.remove(t)
