"""Overflow fix (``overflow_fix``: disable / first_layer / enable): 7-bit weight codes for the first Conv after
each input (first_layer) or every weighted layer (enable), so pre-VNNI CPUs' int16 accumulation cannot overflow."""

from __future__ import annotations

from collections import deque

from ptqflow.config import AdvancedParameters
from ptqflow.quantization.algorithms.quantizer_placement.ops import WEIGHTED
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.passes.base import Pass, PassResult


class OverflowFix(Pass):
    name = "overflow_fix"
    switch = "overflow_fix"

    def enabled(self, advanced: AdvancedParameters) -> bool:
        return advanced.overflow_fix.value != "disable"

    def run(self, g: GraphIndex, weights: dict, mode: str) -> PassResult:
        """Set ``narrow_bits`` = 7 on the placed weights (dicts by tensor) that ``mode`` selects."""
        changed = []
        for entry in weights.values():
            if entry["op_type"] in ("Conv", "ConvTranspose", "Gemm", "MatMul") and mode == "enable":
                entry["narrow_bits"] = 7
                changed.append(entry["tensor"])
        if mode == "first_layer":
            graph_inputs = {name for name in g.consumers if name not in g.producer and name not in g.inits}
            for entry in weights.values():
                node_names = {nm for nm, _ in entry["nodes"]}
                for n in g.nodes:
                    if n.name in node_names and _reaches_input(g, n.input[0], graph_inputs):
                        entry["narrow_bits"] = 7
                        changed.append(entry["tensor"])
        return PassResult(self.name, bool(changed), [f"{t}: 7-bit weight codes" for t in dict.fromkeys(changed)])


def _reaches_input(g: GraphIndex, tensor: str, graph_inputs: set[str]) -> bool:
    """True when ``tensor`` comes from a graph input without passing another weighted layer."""
    seen, queue = set(), deque([tensor])
    while queue:
        t = queue.popleft()
        if t in graph_inputs:
            return True
        node = g.producer.get(t)
        if node is None or node.name in seen or node.op_type in WEIGHTED:
            continue
        seen.add(node.name)
        queue.extend(i for i in node.input if i and not g.is_const_input(i))
    return False


PASS = OverflowFix()
