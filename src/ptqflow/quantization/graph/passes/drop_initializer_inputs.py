"""Graph inputs that an initializer backs become plain weights (old IR 3 exports list every weight as an input)."""

from __future__ import annotations

import copy

import onnx

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.quantization.graph.prepare import graph_inputs


class DropInitializerInputs(GraphPass):
    """Always on: left as inputs, weights would be activations to folding and placement (no quantized weights)."""

    name = "drop_initializer_inputs"
    switch = None

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``model`` (changed in place) without the graph inputs an initializer backs."""
        keep = [copy.deepcopy(vi) for vi in graph_inputs(model)]
        dropped = len(model.graph.input) - len(keep)
        if not dropped:
            return model, self.result([])
        del model.graph.input[:]
        model.graph.input.extend(keep)
        changes = [f"{dropped} graph input(s) backed by an initializer treated as weights"]
        if model.ir_version < 4:  # IR 3 required every initializer to be a graph input; from IR 4 on they need not be
            changes.append(f"ir_version {model.ir_version} -> 4")
            model.ir_version = 4
        return model, self.result(changes)
