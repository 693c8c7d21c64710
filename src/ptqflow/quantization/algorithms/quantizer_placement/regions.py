"""Graph regions placement needs: what lies downstream of a node set, which tensors are not float32, which are
statistics computed from reductions."""

from __future__ import annotations

from collections import deque

import onnx

from ptqflow.quantization.algorithms.quantizer_placement.ops import AGNOSTIC, POINTWISE
from ptqflow.quantization.graph.index import GraphIndex


def downstream(g: GraphIndex, roots) -> set[str]:
    """Names of every node fed, directly or not, by the outputs of ``roots``."""
    seen: set[str] = set()
    queue = deque(roots)
    while queue:
        n = queue.popleft()
        for o in n.output:
            for c, _ in g.consumers.get(o, []):
                if c.name not in seen:
                    seen.add(c.name)
                    queue.append(c)
    return seen


def non_float_tensors(model: onnx.ModelProto, g: GraphIndex) -> set[str]:
    """Tensors known not to be float32: typed non-float by shape inference or derived from Shape/Size."""
    bad = set()
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        et = vi.type.tensor_type.elem_type
        if et and et != onnx.TensorProto.FLOAT:
            bad.add(vi.name)
    shape_ops = [n for n in g.nodes if n.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin")]
    for n in shape_ops:
        bad.update(n.output)
    by_name = g.by_name
    typed = _typed_float(model)
    for name in downstream(g, shape_ops):  # shape arithmetic: integer unless typed float by inference
        node = by_name[name]
        if node.op_type not in ("Cast", "ConstantOfShape", "Range"):
            bad.update(o for o in node.output if o not in typed)
    return bad


def _typed_float(model: onnx.ModelProto) -> set[str]:
    """Tensors that shape inference typed as float32."""
    return {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)
            if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceL1",
                        "ReduceL2", "ReduceLogSumExp", "ReduceProd"})
# Ops through which a statistic stays a statistic: values computed from it alone, elementwise, or only moved.
_STAT_OPS = POINTWISE | frozenset(AGNOSTIC) | {"Sqrt", "Reciprocal", "Pow", "Exp", "Log", "Abs", "Cast"}


def reduced_statistics(g: GraphIndex) -> set[str]:
    """Tensors computed from reductions alone (a mean, a variance, a Softmax's sum, a normalization's 1/sigma):
    a Reduce* output, and what pointwise or value-moving ops compute from such tensors and constants only.

    Elementwise ops get no input quantizer on them (build_plan): a statistic is a reduced tensor, so quantizing it
    saves no compute, and a decomposed normalization subtracts two of them, E[x^2] - E[x]^2, where int8 codes
    cancel (magika's LayerNorm_0: 0.654 - 0.641 on a step of 0.005, 1/sigma six times too large on some inputs)."""
    found: set[str] = set()
    for n in g.nodes:  # topological order: a node's inputs are decided before it
        if n.op_type in REDUCTIONS:
            found.update(o for o in n.output if o)
        elif n.op_type in _STAT_OPS:
            acts = [i for i in n.input if i and not g.is_const_input(i)]
            if acts and all(i in found for i in acts):
                found.update(o for o in n.output if o)
    return found
