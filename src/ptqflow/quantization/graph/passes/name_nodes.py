"""Every node named, uniquely."""

from __future__ import annotations

import onnx

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult

_LISTED = 5  # names listed in the change line; the count covers the rest


class NameNodes(GraphPass):
    """Always on: placement, the plan, the summaries and bias correction refer to nodes by name."""

    name = "name_nodes"
    switch = None

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``model`` (changed in place) with each unnamed node named ``<op type>_<index>`` (``_`` appended until
        unique); one change line counting them."""
        used = {n.name for n in model.graph.node if n.name}
        named = []
        for i, node in enumerate(model.graph.node):
            if not node.name:
                name = f"{node.op_type}_{i}"
                while name in used:
                    name += "_"
                node.name = name
                used.add(name)
                named.append(name)
        if not named:
            return model, self.result([])
        more = f", ... ({len(named) - _LISTED} more)" if len(named) > _LISTED else ""
        return model, self.result([f"named {len(named)} unnamed node(s): {', '.join(named[:_LISTED])}{more}"])
