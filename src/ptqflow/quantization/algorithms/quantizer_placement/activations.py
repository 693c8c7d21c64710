"""Activation quantizers: the requested input quantizers merged, each moved up through ops that only move or
select values, one quantizer per tensor and one scale per group of tensors that meet (Concat); and the
self-gated products x * f(x) (swish, hard-swish) that get none."""

from __future__ import annotations

import onnx

from ptqflow.quantization.algorithms.quantizer_placement.ops import AGNOSTIC, POINTWISE
from ptqflow.quantization.graph.index import GraphIndex


def self_gated(g: GraphIndex, n: onnx.NodeProto) -> bool:
    """True when one input of the binary op ``n`` is computed from the other by pointwise ops alone (x * f(x))."""
    a, b = n.input[0], n.input[1]
    return _pointwise_from(g, b, a) or _pointwise_from(g, a, b)


def _pointwise_from(g: GraphIndex, t: str, root: str, depth: int = 4) -> bool:
    """True when tensor ``t`` is ``root`` transformed by at most ``depth`` single-input pointwise ops."""
    for _ in range(depth):
        node = g.producer.get(t)
        if node is None or node.op_type not in POINTWISE:
            return False
        acts = [i for i in node.input if i and not g.is_const_input(i)]
        if len(acts) != 1:
            return False
        t = acts[0]
        if t == root:
            return True
    return False


def place_activations(g: GraphIndex, requests, ignored: set[str], symmetric: bool,
                       asymmetric_nodes: set[str] = frozenset(), movable: dict | None = None) -> list[dict]:
    """Merge the requested input quantizers: move each up through the ops of ``movable`` (op -> data input
    indices, None: all; default AGNOSTIC), one quantizer per tensor."""
    movable = AGNOSTIC if movable is None else movable
    req_edges = {(node, idx) for _, node, idx, _ in requests}
    memo: dict[str, bool] = {}

    def all_quantized(t: str) -> bool:  # every reader of t leads to a quantizer
        if t not in memo:
            memo[t] = False
            cons = g.consumers.get(t, [])
            memo[t] = bool(cons) and all((c.name, i) in req_edges or _movable(c, i) for c, i in cons)
        return memo[t]

    def _movable(c, i) -> bool:
        if c.op_type not in movable or c.name in ignored or (movable[c.op_type] and i not in movable[c.op_type]):
            return False
        return all(all_quantized(o) for o in c.output if o)

    def walk(t: str, edge: tuple[str, int]) -> list[tuple[str, tuple[str, int]]]:
        node = g.producer.get(t)
        if node is None or node.op_type not in movable or node.name in ignored:
            return [(t, edge)]
        data = [i for i, name in enumerate(node.input) if name and (movable[node.op_type] is None or i in movable[node.op_type])]
        if any(g.is_const_input(node.input[i]) for i in data) or not all(all_quantized(node.input[i]) for i in data):
            return [(t, edge)]
        out: list = []
        for i in data:
            out += walk(node.input[i], (node.name, i))
        return out

    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    points: dict[str, dict] = {}
    for tensor, node, idx, aa in requests:
        placed = walk(tensor, (node, idx))
        for t, e in placed:
            sym = symmetric and node not in asymmetric_nodes
            p = points.setdefault(t, {"tensor": t, "edges": [], "symmetric": sym, "signed": None})
            p["symmetric"] = p["symmetric"] or sym  # a consumer outside the asymmetric region keeps it symmetric
            if list(e) not in p["edges"]:
                p["edges"].append(list(e))
            if aa:
                p["symmetric"] = True  # activation x activation MatMul: symmetric on both sides
        for t, _ in placed[1:]:
            parent[find(t)] = find(placed[0][0])
    for t, p in points.items():
        p["group"] = find(t)
    # one grid per group: tensors that meet at a Concat share a scale, so they share symmetry too (symmetric
    # where any of them must be); a symmetric and an asymmetric input of one Concat give the runtime two grids,
    # and the layer reading the Concat runs in float
    group_symmetric: dict[str, bool] = {}
    for p in points.values():
        group_symmetric[p["group"]] = group_symmetric.get(p["group"], False) or p["symmetric"]
    for p in points.values():
        p["symmetric"] = group_symmetric[p["group"]]
    return list(points.values())
