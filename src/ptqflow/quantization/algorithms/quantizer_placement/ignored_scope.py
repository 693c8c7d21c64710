"""``ignored_scope``: the nodes a user keeps out of quantization, by name, pattern, type or subgraph."""

from __future__ import annotations

import re
from collections import deque

import onnx

from ptqflow.config import IgnoredScope
from ptqflow.errors import InputError
from ptqflow.quantization.graph.index import GraphIndex


def ignored_nodes(model: onnx.ModelProto, scope: IgnoredScope | None) -> set[str]:
    """Node names matched by ``scope``; InputError naming an entry that matches nothing when validating."""
    if scope is None or scope.is_empty():
        return set()
    names = {n.name for n in model.graph.node}
    hits: set[str] = set()
    missing: list[str] = []
    for name in scope.names:
        (hits.add(name) if name in names else missing.append(f"name {name!r}"))
    for pat in scope.patterns:
        found = {n for n in names if re.fullmatch(pat, n) or re.search(pat, n)}
        hits |= found
        if not found:
            missing.append(f"pattern {pat!r}")
    for op in scope.types:
        found = {n.name for n in model.graph.node if n.op_type == op}
        hits |= found
        if not found:
            missing.append(f"type {op!r}")
    for sub in scope.subgraphs:
        found = _subgraph_nodes(model, sub.inputs, sub.outputs)
        hits |= found
        if not found:
            missing.append(f"subgraph inputs={sub.inputs} outputs={sub.outputs}")
    if missing and scope.validate:
        raise InputError(f"ignored_scope: {', '.join(missing)} matched no node of the model")
    return hits


def _subgraph_nodes(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> set[str]:
    """Nodes on a path from a tensor or node in ``inputs`` to one in ``outputs`` (both ends included)."""
    g = GraphIndex(model)
    by_name = g.by_name
    start = {by_name[i].output[0] if i in by_name else i for i in inputs}
    # nodes reachable backwards from outputs, stopping at inputs
    back: set[str] = set()
    queue = deque(by_name[o] if o in by_name else g.producer.get(o) for o in outputs)
    while queue:
        n = queue.popleft()
        if n is None or n.name in back:
            continue
        back.add(n.name)
        for i in n.input:
            if i and i not in start and i in g.producer:
                queue.append(g.producer[i])
            elif i in start and i in g.producer:
                back.add(g.producer[i].name)
    fwd: set[str] = set()
    queue = deque(c for s in start for c, _ in g.consumers.get(s, []))
    queue.extend(by_name[i] for i in inputs if i in by_name)
    while queue:
        n = queue.popleft()
        if n.name in fwd or n.name not in back:
            continue
        fwd.add(n.name)
        for o in n.output:
            queue.extend(c for c, _ in g.consumers.get(o, []))
    return fwd
