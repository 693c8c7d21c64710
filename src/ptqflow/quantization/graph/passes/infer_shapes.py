"""Shapes and types of the intermediate tensors, by onnx's shape inference (dynamic dims stay symbolic)."""

from __future__ import annotations

import logging

import onnx
from onnx import shape_inference

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.quantization.graph.prepare import is_large

log = logging.getLogger(__name__)


class InferShapes(GraphPass):
    """Always on: placement, the statistics' reduce nodes and the input checks read the inferred shapes and types."""

    name = "infer_shapes"
    switch = None

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """The shape-inferred copy; ``model`` unchanged when it is over 2 GB or inference fails (a warning in the
        log: shape inference is an aid, not a requirement)."""
        if is_large(model):
            return model, self.result([])
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as exc:
            log.warning("shape inference failed: %s", exc)
            return model, self.result([])
        before, after = len(model.graph.value_info), len(inferred.graph.value_info)
        return inferred, self.result([f"shapes of {after - before} intermediate value(s) inferred"] if after != before
                                     else [])
