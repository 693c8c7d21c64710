"""Graph regions placement needs: what lies downstream of a node set, which tensors are not float32."""

from __future__ import annotations

from collections import deque

import onnx

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
