"""What every graph pass has in common: ``run(model) -> (model, GraphPassResult)``.

A graph pass rewrites the FP32 model before placement. It may change ``model`` in place and return it, or return
a new ModelProto; either way the caller continues with the returned one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ptqflow.config import AdvancedParameters
from ptqflow.quantization.passes.base import Pass, PassResult


@dataclass
class GraphPassResult(PassResult):
    """A PassResult that can also carry ``warnings``: what the user should know although nothing failed (they
    end up in the plan's warnings, e.g. a model left at an old opset)."""

    warnings: list[str] = field(default_factory=list)


class GraphPass(Pass):
    """Base of the graph passes (see ``ptqflow.quantization.graph.passes.GRAPH_PASSES``)."""

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """The rewritten model (``model`` itself or a new one) and what changed."""
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto, advanced: AdvancedParameters) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``run`` for a pass that reads thresholds from ``advanced`` besides its switch (it overrides this)."""
        return self.run(model)

    def result(self, changes: list[str], warnings: list[str] | None = None) -> GraphPassResult:
        """This pass's result: changed when there is at least one change line."""
        return GraphPassResult(self.name, bool(changes), changes, warnings or [])
