"""The model's ir_version at most MAX_IR_VERSION (an unset one becomes it)."""

from __future__ import annotations

import onnx

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION


class ClampIrVersion(GraphPass):
    """Always on: onnxruntime rejects newer IR versions (the ones onnx's converters and shape inference write)."""

    name = "clamp_ir_version"
    switch = None

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``model`` (changed in place) with ``ir_version = min(ir_version or MAX_IR_VERSION, MAX_IR_VERSION)``."""
        before = model.ir_version
        model.ir_version = min(before or MAX_IR_VERSION, MAX_IR_VERSION)
        if model.ir_version == before:
            return model, self.result([])
        return model, self.result([f"ir_version {before or '0 (unset)'} -> {model.ir_version}"])
