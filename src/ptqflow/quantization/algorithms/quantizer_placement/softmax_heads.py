"""Softmax-heads safeguard (``safeguard_softmax_heads``): the last weighted layer before a Softmax/LogSoftmax output
head stays in float, its input and weights.

Class distributions (CTC character probabilities, classifier scores) are argmaxed, and INT8 rounding of the
logits flips those decisions; these layers are small (Gemm/MatMul over a few positions). Sigmoid maps (detection
masks) are thresholded, not argmaxed: their last layer is quantized, which also lets the runtime fuse the Sigmoid
into the INT8 layer at full resolution.

The walk from each output follows values only: a Shape/Size branch carries no values, so it neither reaches a
layer nor hides one (an exported head reads Reshape(Softmax(Flatten(x)), Shape(x)), and x's layer was once reached
first through the Shape, without the Softmax gate, and left quantized). A layer is visited once per gate, so
an ungated path to it never hides a gated one, whatever the order.
"""

from __future__ import annotations

from collections import deque

from ptqflow.quantization.algorithms.quantizer_placement.ops import METADATA, WEIGHTED
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.passes.base import Pass, PassResult

HEAD_GATES = {"Softmax", "LogSoftmax"}


class SoftmaxHeads(Pass):
    """Decides, before activations are placed, which layers stay in float: node -> (pass, reason)."""

    name = "safeguard_softmax_heads"
    switch = "safeguard_softmax_heads"

    def enabled(self, advanced) -> bool:
        """Left at None, the rule stands in only where error-driven mixed precision, which measures the head's
        quantizers, does not run (AdvancedParameters.safeguard)."""
        return advanced.safeguard("softmax_heads")

    def float_nodes(self, g: GraphIndex) -> tuple[dict[str, tuple[str, str]], PassResult]:
        found: dict[str, tuple[str, str]] = {}
        for out in g.outputs:
            queue, seen, gate = deque([(out, None)]), set(), None
            while queue:
                name, gate = queue.popleft()
                node = g.producer.get(name)
                if node is None or node.op_type in METADATA or (node.name, gate) in seen:
                    continue
                seen.add((node.name, gate))
                if node.op_type in WEIGHTED and not g.is_const_input(node.input[0]):
                    if gate:
                        found[node.name] = (self.name, f"auto_safeguard: last layer before the {gate} output head")
                    continue
                g2 = gate or (node.op_type if node.op_type in HEAD_GATES else None)
                queue.extend((i, g2) for i in node.input if i and not g.is_const_input(i))
        return found, PassResult(self.name, bool(found), [f"{k}: {why}" for k, (_, why) in found.items()])


PASS = SoftmaxHeads()
