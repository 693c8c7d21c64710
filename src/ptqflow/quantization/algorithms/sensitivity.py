"""Automatic safeguard: find the few activation quantizers that alone cost most of the accuracy.

One model holds every quantizer behind a switch (a gate input: out = x + g_i * (QDQ(x) - x)), so a single
session measures, on a handful of calibration samples, the output error each quantizer causes on its own
(all weights quantized). Quantizers whose error dominates the rest are kept in float and reported.
"""

from __future__ import annotations


import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqflow.quantization.algorithms.minmax import _topological_insert, insert_qdq
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.runtime.model_files import copy_without

GATE = "ptqflow_quantizer_gate"


def gated_model(prepared: onnx.ModelProto, plan: QuantizationPlan, ranges: dict,
                weights: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """The quantized model with every activation quantizer switchable; and the point tensors in gate order. With
    ``weights``, each planned weight quantizer has a gate too, after the activations' (W = W_f + g * (W_q - W_f):
    the float weight and the quantized one as constants, so the model holds the weights twice), and its tensor
    follows the activations' in the returned list."""
    # A copy without the planned weights' bytes, which insert_qdq reads from prepared: no second float copy.
    q = copy_without(prepared, {w.tensor for w in plan.weights})
    records = [r for r in insert_qdq(q, plan, ranges, float_weights=prepared) if r["kind"] == "activation"]
    g = q.graph
    gates = [(r["tensor"], r["output"]) for r in records]  # (float tensor, its quantized value)
    if weights:
        gates += _float_weights(q, prepared, plan)
    g.input.append(helper.make_tensor_value_info(GATE, onnx.TensorProto.FLOAT, [len(gates)]))
    consumers = GraphIndex(g).consumers  # the readers of each DequantizeLinear output, before rewiring
    new = []
    for k, (x, dq) in enumerate(gates):
        idx = f"{GATE}_{k}_idx"
        g.initializer.append(numpy_helper.from_array(np.array(k, np.int64), idx))
        names = [f"{GATE}_{k}_{s}" for s in ("g", "diff", "scaled", "out")]
        for n, i in consumers.get(dq, []):
            n.input[i] = names[3]
        new += [helper.make_node("Gather", [GATE, idx], [names[0]], name=names[0]),
                helper.make_node("Sub", [dq, x], [names[1]], name=names[1]),
                helper.make_node("Mul", [names[1], names[0]], [names[2]], name=names[2]),
                helper.make_node("Add", [x, names[2]], [names[3]], name=names[3])]
    _topological_insert(g, new)
    return q, [r["tensor"] for r in records] + ([w.tensor for w in plan.weights] if weights else [])


def _float_weights(q: onnx.ModelProto, prepared: onnx.ModelProto, plan: QuantizationPlan) -> list[tuple[str, str]]:
    """(float weight, its DequantizeLinear output) per planned weight of ``q`` (insert_qdq has run): each float
    value goes back into ``q`` under a name of its own, beside the quantized one its consumers read."""
    nodes = {n.name: n for n in q.graph.node}
    floats = {t.name: t for t in prepared.graph.initializer}
    pairs = []
    for k, w in enumerate(plan.weights):
        node, index = w.nodes[0]
        copy = q.graph.initializer.add()
        copy.CopyFrom(floats[w.tensor])
        copy.name = f"{GATE}_weight_{k}_float"
        pairs.append((copy.name, nodes[node].input[index]))
    return pairs


def fold_constant_dequantize(model: onnx.ModelProto, store=numpy_helper.from_array) -> None:
    """Replace each DequantizeLinear of an int8 initializer (the weights) by its float result, in place: the same
    numbers, but onnxruntime (1.2x, CPU) fuses DequantizeLinear -> MatMul/Gemm whose other input is float into
    MatMulNBits, which quantizes that input per block at run time, so the gated model (whose gates make every
    activation input float) would measure that quantization instead of ptqflow's. ``store(value, name)`` makes the initializer of a folded value
    (e.g. runtime.model_files.DataFile.tensor: its bytes in a file, for a model over 2 GB)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    folded = []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or not all(i in inits for i in n.input if i):
            continue
        x, scale = (numpy_helper.to_array(inits[i]) for i in n.input[:2])
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] else np.zeros_like(scale)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and x.ndim > 1:
            shape = [-1 if i == axis % x.ndim else 1 for i in range(x.ndim)]
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        value = ((x.astype(np.float32) - zp.astype(np.float32)) * scale).astype(np.float32)
        g.initializer.append(store(value, n.output[0]))
        folded.append(n)
    for n in folded:
        g.node.remove(n)


def output_error(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """Relative squared error plus, for score-like outputs, the share of changed argmax decisions."""
    total = 0.0
    for out, ref in zip(outs, refs):
        if not np.issubdtype(ref.dtype, np.floating):
            total += float(np.mean(out != ref))
            continue
        total += float(np.sum((out - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-12))
        if ref.ndim >= 2 and ref.shape[-1] >= 2:
            total += float(np.mean(out.argmax(-1) != ref.argmax(-1)))
    return total


def leave_one_out(session, n_points: int, samples: list[dict], refs: list[list[np.ndarray]],
                  off: set[int]) -> tuple[float, np.ndarray]:
    """(error with every quantizer on except ``off``, error when each other quantizer is also switched off)."""
    def err(gate):
        return sum(output_error(session.run(None, {**s, GATE: gate}), r) for s, r in zip(samples, refs)) / len(samples)

    base_gate = np.ones(n_points, np.float32)
    base_gate[list(off)] = 0.0
    base = err(base_gate)
    errs = np.full(n_points, np.inf)
    for k in range(n_points):
        if k in off:
            continue
        gate = base_gate.copy()
        gate[k] = 0.0
        errs[k] = err(gate)
    return base, errs


def find_sensitive(prepared: onnx.ModelProto, plan: QuantizationPlan, ranges: dict, samples: list[dict], make_session, *,
                   max_points: int, min_gain: float, min_error: float) -> list[tuple[str, float, float]]:
    """Greedy: switch off, one pass at a time (at most ``max_points``), the quantizer whose removal cuts the
    output error by at least ``min_gain`` of it, while that error is at least ``min_error`` (the
    advanced.sensitivity_* fields). Returns (tensor, error before, error after) per quantizer to keep in float."""
    if not samples or len(plan.activations) < 2:
        return []
    gated, tensors = gated_model(prepared, plan, ranges)
    fp32, sess = make_session(prepared), make_session(gated)
    refs = [fp32.run(None, s) for s in samples]
    return greedy(sess, tensors, samples, refs, max_points=max_points, min_gain=min_gain, min_error=min_error)


def greedy(session, tensors: list[str], samples: list[dict], refs: list[list[np.ndarray]], *, max_points: int,
           min_gain: float, min_error: float) -> list[tuple[str, float, float]]:
    """find_sensitive's choice on a gated ``session`` (any runtime's, ``run(None, feed)``; ``tensors`` in gate order,
    ``refs`` the FP32 outputs on ``samples``): (tensor, error before, error after) per quantizer to keep in float."""
    off: set[int] = set()
    found = []
    for _ in range(max_points):
        base, errs = leave_one_out(session, len(tensors), samples, refs, off)
        k = int(np.argmin(errs))
        if base < min_error or not np.isfinite(errs[k]) or errs[k] > (1 - min_gain) * base:
            break
        off.add(k)
        found.append((tensors[k], base, float(errs[k])))
    return found
