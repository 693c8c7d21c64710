"""Placement for onnxruntime (``target_runtime: onnxruntime``): quantizers around each node unit.

onnxruntime's CPU provider runs a layer in int8 only when its graph optimizer finds a *node unit*: the op with a
DequantizeLinear on every input and a QuantizeLinear on its output, which it fuses into QLinearConv, QLinearAdd,
QGemm, ... (a MatMul with a float output becomes MatMulIntegerToFloat, so MatMul needs no output quantizer). A
layer whose output stays float runs as DequantizeLinear (of the weight, every run) + float op: slower than FP32.
OpenVINO's placement (quantizers on layer inputs only, moved up through every op that only moves values) leaves
most outputs float, so this module adds, for onnxruntime:

- an output quantizer on every quantized unit (Conv, Gemm, Add, Mul, pooling), after a Relu/Clip that is the
  output's only reader (onnxruntime drops such an activation in front of a QuantizeLinear whose zero point is the
  type's minimum, so the unit still fuses);
- input quantizers moved up only through the ops onnxruntime itself moves DequantizeLinear across
  (QDQPropagationTransformer), so every unit still sees a DequantizeLinear on its inputs.
"""

from __future__ import annotations

from ptqflow.quantization.algorithms.quantizer_placement.ops import AGNOSTIC
from ptqflow.quantization.graph.index import GraphIndex

# Ops whose DequantizeLinear/QuantizeLinear onnxruntime moves across (its QDQ propagation): input quantizers may
# move up through them and the unit still sees a DequantizeLinear.
ORT_MOVABLE = {op: AGNOSTIC[op] for op in ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze")}
# Units fused into a QLinear kernel only with a QuantizeLinear on their output.
ORT_OUTPUT_UNITS = {"Conv", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool"}
# Activations onnxruntime removes between a unit and its QuantizeLinear (zero point at the type's minimum).
FUSED_ACTIVATIONS = {"Relu", "Clip"}


def unit_output(g: GraphIndex, node) -> str:
    """The tensor whose quantizer completes ``node``'s unit: its output, or that of a Relu/Clip reading it alone."""
    out = node.output[0]
    readers = g.consumers.get(out, [])
    if len(readers) == 1 and readers[0][0].op_type in FUSED_ACTIVATIONS and out not in g.outputs:
        return readers[0][0].output[0]
    return out


def _dequantized(g: GraphIndex, node, index: int, rewired: set) -> bool:
    """True when input ``index`` of ``node`` reads a DequantizeLinear once onnxruntime has moved them down through
    the ORT_MOVABLE ops: the edge is rewired, or its producer is movable and its data input is (recursively)."""
    while (node.name, index) not in rewired:
        producer = g.producer.get(node.input[index])
        if producer is None or producer.op_type not in ORT_MOVABLE:
            return False
        node, index = producer, 0
    return True


def add_unit_outputs(g: GraphIndex, points: list[dict], skip: set[str], symmetric: bool) -> list[dict]:
    """``points`` (placed activation quantizers, dicts as place_activations returns) with an output quantizer,
    reading edges to every consumer, on each unit of ORT_OUTPUT_UNITS whose activation inputs are all quantized.
    Tensors in ``skip`` (not float32) and graph outputs (no QuantizeLinear can follow them) get none."""
    rewired = {tuple(e) for p in points for e in p["edges"]}
    by_tensor = {p["tensor"]: p for p in points}
    for n in g.nodes:
        if n.op_type not in ORT_OUTPUT_UNITS:
            continue
        acts = [i for i, t in enumerate(n.input) if t and not g.is_const_input(t)]
        if n.op_type in ("Conv", "Gemm"):
            acts = acts[:1]
        if not acts or not all(_dequantized(g, n, i, rewired) for i in acts):
            continue
        t = unit_output(g, n)
        if t in skip or t in g.outputs or not g.consumers.get(t):
            continue
        p = by_tensor.get(t)
        if p is None:
            p = by_tensor[t] = {"tensor": t, "edges": [], "symmetric": symmetric, "signed": None, "group": t}
            points.append(p)
        for c, i in g.consumers[t]:
            if [c.name, i] not in p["edges"]:
                p["edges"].append([c.name, i])
    return points
