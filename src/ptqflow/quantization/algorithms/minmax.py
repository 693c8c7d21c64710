"""MinMax: observed ranges -> quantization parameters, and insertion of QuantizeLinear/DequantizeLinear pairs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptqflow.quantization.graph.index import unique_name
from ptqflow.quantization.plan import ActivationQuantizer, QuantizationPlan, WeightQuantizer
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


def activation_params(lo: float, hi: float, symmetric: bool, signed: bool,
                      qtype: str | None = None) -> tuple[float, int, int]:
    """(scale, zero_point, onnx elem type) for one activation range.

    ``qtype`` None (OpenVINO's choice per tensor): non-negative ranges use uint8 [0, 255]; symmetric signed
    ranges int8 with zero point 0; asymmetric signed ranges uint8 with an integer zero point (the range is widened
    so 0 is exactly representable). ``qtype`` "uint8" / "int8": every range in that type (onnxruntime's fused
    kernels take one type in and out); a symmetric signed range then has the type's middle as zero point.
    """
    lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
    if qtype is None:
        if not signed:
            return max(hi, _MIN_RANGE) / 255.0, 0, TensorProto.UINT8
        if symmetric:
            return max(abs(lo), abs(hi), _MIN_RANGE) / 127.0, 0, TensorProto.INT8
        qtype = "uint8"
    qmin, dtype = (0, TensorProto.UINT8) if qtype == "uint8" else (-128, TensorProto.INT8)
    if signed and symmetric:
        absmax = max(abs(lo), abs(hi), _MIN_RANGE)
        return 2 * absmax / 255.0, qmin + 128, dtype
    if not signed:
        return max(hi, _MIN_RANGE) / 255.0, qmin, dtype
    scale = max(hi - lo, _MIN_RANGE) / 255.0
    return scale, int(np.clip(qmin + np.round(-lo / scale), qmin, qmin + 255)), dtype


@dataclass(frozen=True)
class NumberFormats:
    """How the plan's quantizers are written: ``activation`` the activation type ("uint8", "int8" or None:
    per tensor), ``weight`` the weight type ("int8": zero point 0; "uint8": zero point 128), ``given``
    parameters by tensor ({tensor: (zero_point, scale)}) that replace the calibrated ones."""

    activation: str | None = None
    weight: str = "int8"
    given: dict = field(default_factory=dict)

    def activation_of(self, tensor: str, lo: float, hi: float, symmetric: bool,
                      signed: bool) -> tuple[float, int, int]:
        """(scale, zero_point, onnx elem type) of ``tensor``: the given parameters, else from its range."""
        if tensor not in self.given:
            return activation_params(lo, hi, symmetric, signed, self.activation)
        zp, scale = self.given[tensor]
        int8 = self.activation == "int8" if self.activation else zp < 0
        return float(scale), int(zp), TensorProto.INT8 if int8 else TensorProto.UINT8


_unique = unique_name


def statistic_points(plan: QuantizationPlan) -> list[StatisticPoint]:
    """MinMax's statistics: the per-sample minimum and maximum of every planned activation tensor, and each
    channel's largest |x| for a per-channel one."""
    tensors = sorted({p.tensor for p in plan.activations})
    channels = sorted({(p.tensor, p.axis) for p in plan.activations if p.axis is not None})
    return ([StatisticPoint(MINMAX, t, t, r) for t in tensors for r in (Reducer.MIN, Reducer.MAX)]
            + [StatisticPoint(MINMAX, t, t, Reducer.PEAK, axis) for t, axis in channels])


def insert_qdq(model: onnx.ModelProto, plan: QuantizationPlan, ranges: dict[str, tuple[float, float]],
               formats: NumberFormats = NumberFormats(), float_weights: onnx.ModelProto | None = None,
               codes: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Quantize ``model`` in place per ``plan`` and ``ranges`` (tensor -> (min, max)) in ``formats``; returns
    per-point records.

    ``float_weights``: the model whose initializers hold the planned weights' float values, when ``model`` holds
    them without data (runtime.model_files.copy_without): a weight that stays in use besides its quantized
    form gets its data back from there, one that does not is removed, as when ``model`` held them all.
    ``codes``: int8 codes by weight tensor (AdaRound's) written instead of the nearest ones, at the same scales."""
    g = model.graph
    used = {n.name for n in g.node} | {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
    used |= {i.name for i in g.input}
    nodes_by_name = {n.name: n for n in g.node}
    inits = {t.name: t for t in g.initializer}
    values = inits if float_weights is None else {t.name: t for t in float_weights.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    records = []
    for entry in plan.weights:
        records.append(_quantize_weight(g, entry, inits, values, nodes_by_name, used, new_nodes, formats.weight,
                                        (codes or {}).get(entry.tensor)))
    for point in plan.activations:
        scale, zp, dtype, record = activation_quantizer(point, ranges, formats)
        if dtype == TensorProto.INT8 and formats.activation is None and _reaches_concat(point, nodes_by_name):
            zp, dtype = zp + 128, TensorProto.UINT8
            record = {**record, "zero_point": zp, "dtype": "uint8"}
        t = point.tensor
        s_name, z_name = _unique(t + "_scale", used), _unique(t + "_zero_point", used)
        g.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), s_name))
        shape = list(np.shape(scale))  # [] for one scale, [channels] for a per-channel quantizer
        g.initializer.append(helper.make_tensor(z_name, dtype, shape, [zp] * int(np.prod(shape))))
        q_out, dq_out = _unique(t + "_quantized", used), _unique(t + "_dequantized", used)
        axis = {"axis": point.axis} if shape else {}
        new_nodes.append(helper.make_node("QuantizeLinear", [t, s_name, z_name], [q_out],
                                          name=_unique(t + "_QuantizeLinear", used), **axis))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                          name=_unique(t + "_DequantizeLinear", used), **axis))
        for node_name, idx in point.edges:
            nodes_by_name[node_name].input[idx] = dq_out
        records.append({**record, "output": dq_out})
    _topological_insert(g, new_nodes)
    return records


def _reaches_concat(point: ActivationQuantizer, nodes_by_name: dict[str, onnx.NodeProto]) -> bool:
    """True when a Concat reads the quantizer ``point``'s output.

    Such a pair is written in uint8 with zero point 128 where the per-tensor choice (OpenVINO's) gives int8 with
    zero point 0: the same grid, read alike by onnxruntime, while OpenVINO 2026.4.1 reading the ONNX file (CPU
    plugin; ov.convert_model's model is right) computes int8 pairs meeting at a Concat that a quantized Conv reads
    as if their scale were 1, round(clamp(x, -128, 127)) (PP-OCR det's FPN merge, scale 14.7, lost every box;
    bench/README.md, IR input).
    """
    return any(nodes_by_name[name].op_type == "Concat" for name, _ in point.edges)


def activation_quantizer(point: ActivationQuantizer, ranges: dict[str, tuple[float, float]],
                         formats: NumberFormats = NumberFormats()) -> tuple[float, int, int, dict]:
    """(scale, zero point, onnx elem type) of the activation quantizer ``point`` from its group's range in
    ``formats``, and its summary record (every writer adds the name of the tensor it outputs as "output").

    A per-channel quantizer (channel_scales) is always int8: an unsigned one takes zero point -128, the grid
    [0, 255 * scale] of uint8 with zero point 0. onnxruntime (1.31, x86 CPU) fuses DequantizeLinear -> depthwise Conv
    -> QuantizeLinear into a QLinearConv when the input's and the output's types agree after it has turned
    single-scale int8 pairs into uint8, and QLinearConv refuses a per-channel input; it leaves per-channel int8
    pairs as they are, so an int8 per-channel input never agrees with a converted output and the Conv runs on
    dequantized values (tests/test_per_channel_activations.py runs every pairing on onnxruntime's default
    session). OpenVINO reads both types as the same FakeQuantize."""
    lo, hi = ranges[point.group]
    signed = bool(point.signed) if point.signed is not None else lo < 0
    scale, zp, dtype = formats.activation_of(point.tensor, lo, hi, point.symmetric, signed)
    record = {"tensor": point.tensor, "kind": "activation", "scale": scale, "zero_point": zp,
              "dtype": "int8" if dtype == TensorProto.INT8 else "uint8", "range": [lo, hi],
              "given": point.tensor in formats.given, "consumers": sorted({e[0] for e in point.edges})}
    channels = channel_scales(point, scale, zp, dtype, formats)
    if channels is not None:
        scale = channels
        if dtype == TensorProto.UINT8:  # the same grid in int8 with zero point -128, which onnxruntime runs
            zp, dtype = -128, TensorProto.INT8
        record = {**record, "scale": float(channels.max()), "axis": point.axis, "channels": int(channels.size),
                  "min_scale": float(channels.min()), "zero_point": zp,
                  "dtype": "int8" if dtype == TensorProto.INT8 else "uint8"}
    return scale, zp, dtype, record


def channel_scales(point: ActivationQuantizer, scale: float, zp: int, dtype: int,
                   formats: NumberFormats = NumberFormats()) -> np.ndarray | None:
    """The per-channel scales of a per-channel activation quantizer (``point.axis``; its ``channel_absmax`` from
    the statistics): each channel's largest |x| over the grid's positive codes, at most the per-tensor ``scale``
    (the tensor's largest channel keeps the per-tensor range, which the range estimator chose) and at least 1e-5
    of it (an empty channel); None where the quantizer has one scale: no axis or maxima, a given scale, a type the
    user fixed (onnxruntime's kernels), or a zero point other than 0 (an asymmetric signed range)."""
    if (point.axis is None or not point.channel_absmax or point.tensor in formats.given
            or formats.activation is not None or zp != 0):
        return None
    positive = 127.0 if dtype == TensorProto.INT8 else 255.0
    peaks = np.asarray(point.channel_absmax, np.float64) / positive
    return np.clip(peaks, scale * 1e-5, scale).astype(np.float32)


def weight_record(entry: WeightQuantizer, scale: np.ndarray, wtype: str = "int8") -> dict:
    """The summary record of weight quantizer ``entry`` with its scales ``scale``, stored as ``wtype``."""
    return {"tensor": entry.tensor, "kind": "weight", "axis": entry.axis, "dtype": wtype, "bits": entry.narrow_bits,
            "consumers": [n for n, _ in entry.nodes], "max_scale": float(scale.max())}


def _quantize_weight(g, entry: WeightQuantizer, inits, values, nodes_by_name, used, new_nodes,
                     wtype: str = "int8", codes: np.ndarray | None = None) -> dict:
    """Replace a float weight (its value read from ``values``) by an int8 (or uint8, codes + 128) initializer +
    DequantizeLinear, its codes ``codes`` where given (else the nearest); returns its record."""
    name = entry.tensor
    w = numpy_helper.to_array(values[name]).astype(np.float32)
    axis = entry.axis
    scale, q = weight_params(w, axis, entry.narrow_bits)
    if codes is not None:
        q = codes.astype(np.int8)
    q_name, s_name, z_name = _unique(name + "_int8", used), _unique(name + "_scale", used), _unique(name + "_zero_point", used)
    zero = np.zeros(scale.shape, np.int8)
    if wtype == "uint8":  # the same symmetric codes around 128
        q, zero = (q.astype(np.int16) + 128).astype(np.uint8), np.full(scale.shape, 128, np.uint8)
    g.initializer.append(numpy_helper.from_array(q, q_name))
    g.initializer.append(numpy_helper.from_array(scale, s_name))
    g.initializer.append(numpy_helper.from_array(zero, z_name))
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
    return weight_record(entry, scale, wtype)


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
