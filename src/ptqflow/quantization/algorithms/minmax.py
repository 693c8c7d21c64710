"""MinMax: observed ranges -> quantization parameters, and insertion of QuantizeLinear/DequantizeLinear pairs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqflow.quantization.plan import QuantizationPlan, WeightQuantizer
from ptqflow.quantization.statistics.points import Reducer, StatisticPoint
from ptqflow.quantization.statistics.store import MINMAX

# Floor on a range so constant or all-zero tensors still get a valid (positive) scale.
_MIN_RANGE = 8e-5


def weight_params(w: np.ndarray, axis: int | None, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (``axis``) or per-tensor symmetric narrow-range scales and the int8 codes of ``w``."""
    qmax = 2 ** (bits - 1) - 1  # 127, or 63 for the overflow fix
    if axis is None:
        absmax = np.array(np.abs(w).max(), dtype=np.float64)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        absmax = np.abs(w).max(axis=red).astype(np.float64)
        # Near-empty channels: a floor relative to the largest channel keeps their scale representable.
        absmax = np.maximum(absmax, absmax.max() * 1e-5)
    scale = np.maximum(absmax, _MIN_RANGE) / qmax
    shaped = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    q = np.clip(np.round(w / shaped), -qmax, qmax).astype(np.int8)
    return scale.astype(np.float32), q


def activation_params(lo: float, hi: float, symmetric: bool, signed: bool) -> tuple[float, int, int]:
    """(scale, zero_point, onnx elem type) for one activation range.

    Non-negative ranges use uint8 [0, 255]; symmetric signed ranges int8 with zero point 0; asymmetric signed
    ranges uint8 with an integer zero point (the range is widened so 0 is exactly representable).
    """
    lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
    if not signed:
        return max(hi, _MIN_RANGE) / 255.0, 0, TensorProto.UINT8
    if symmetric:
        return max(abs(lo), abs(hi), _MIN_RANGE) / 127.0, 0, TensorProto.INT8
    span = max(hi - lo, _MIN_RANGE)
    scale = span / 255.0
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return scale, zp, TensorProto.UINT8


def _unique(name: str, used: set[str]) -> str:
    base, k = name, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def statistic_points(plan: QuantizationPlan) -> list[StatisticPoint]:
    """MinMax's statistics: the per-sample minimum and maximum of every planned activation tensor."""
    tensors = sorted({p.tensor for p in plan.activations})
    return [StatisticPoint(MINMAX, t, t, r) for t in tensors for r in (Reducer.MIN, Reducer.MAX)]


def insert_qdq(model: onnx.ModelProto, plan: QuantizationPlan, ranges: dict[str, tuple[float, float]],
               float_weights: onnx.ModelProto | None = None) -> list[dict]:
    """Quantize ``model`` in place per ``plan`` and ``ranges`` (tensor -> (min, max)); returns per-point records.

    ``float_weights``: the model whose initializers hold the planned weights' float values, when ``model`` holds
    them without data (runtime.model_files.copy_without): a weight that stays in use besides its quantized
    form gets its data back from there, one that does not is removed, as when ``model`` held them all."""
    g = model.graph
    used = {n.name for n in g.node} | {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
    used |= {i.name for i in g.input}
    nodes_by_name = {n.name: n for n in g.node}
    inits = {t.name: t for t in g.initializer}
    values = inits if float_weights is None else {t.name: t for t in float_weights.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    records = []
    for entry in plan.weights:
        records.append(_quantize_weight(g, entry, inits, values, nodes_by_name, used, new_nodes))
    for point in plan.activations:
        lo, hi = ranges[point.group]
        signed = bool(point.signed) if point.signed is not None else lo < 0
        scale, zp, dtype = activation_params(lo, hi, point.symmetric, signed)
        t = point.tensor
        s_name, z_name = _unique(t + "_scale", used), _unique(t + "_zero_point", used)
        g.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), s_name))
        g.initializer.append(helper.make_tensor(z_name, dtype, [], [zp]))
        q_out, dq_out = _unique(t + "_quantized", used), _unique(t + "_dequantized", used)
        new_nodes.append(helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_out], name=_unique(t + "_QuantizeLinear", used)))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=_unique(t + "_DequantizeLinear", used)))
        for node_name, idx in point.edges:
            nodes_by_name[node_name].input[idx] = dq_out
        records.append({"tensor": t, "kind": "activation", "scale": scale, "zero_point": zp,
                        "dtype": "int8" if dtype == TensorProto.INT8 else "uint8", "range": [lo, hi],
                        "consumers": sorted({e[0] for e in point.edges}), "output": dq_out})
    _topological_insert(g, new_nodes)
    return records


def _quantize_weight(g, entry: WeightQuantizer, inits, values, nodes_by_name, used, new_nodes) -> dict:
    """Replace a float weight (its value read from ``values``) by an int8 initializer + DequantizeLinear; returns
    its record."""
    name = entry.tensor
    w = numpy_helper.to_array(values[name]).astype(np.float32)
    axis = entry.axis
    scale, q = weight_params(w, axis, entry.narrow_bits)
    q_name, s_name, z_name = _unique(name + "_int8", used), _unique(name + "_scale", used), _unique(name + "_zero_point", used)
    g.initializer.append(numpy_helper.from_array(q, q_name))
    g.initializer.append(numpy_helper.from_array(scale, s_name))
    g.initializer.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name))
    dq_out = _unique(name + "_dequantized", used)
    attrs = {"axis": axis} if axis is not None else {}
    new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out],
                                      name=_unique(name + "_DequantizeLinear", used), **attrs))
    for node_name, idx in entry.nodes:
        nodes_by_name[node_name].input[idx] = dq_out
    still_used = any(name in n.input for n in g.node) or name in {o.name for o in g.output}
    if not still_used:
        g.initializer.remove(inits[name])
    elif values[name] is not inits[name]:
        inits[name].CopyFrom(values[name])
    return {"tensor": name, "kind": "weight", "axis": axis, "dtype": "int8", "bits": entry.narrow_bits,
            "consumers": [n for n, _ in entry.nodes], "max_scale": float(scale.max())}


def _topological_insert(g: onnx.GraphProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Add ``new_nodes`` and re-sort the graph topologically (quantizers sit right after their producers)."""
    nodes = list(g.node) + new_nodes
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    done: set[int] = set()
    order: list[int] = []
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(i)
                continue
            stack.append((i, True))
            for inp in _reads(nodes[i]):
                j = produced_by.get(inp)
                if j is not None and j not in done:
                    stack.append((j, False))
    del g.node[:]
    g.node.extend(nodes[i] for i in order)


def _reads(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` including outer-scope names read by its subgraphs (If/Loop/Scan bodies)."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            local = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                names += [i for i in _reads(n) if i not in local]
    return names
