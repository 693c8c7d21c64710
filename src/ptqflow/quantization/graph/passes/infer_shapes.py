"""Shapes and types of the intermediate tensors, by onnx's shape inference (dynamic dims stay symbolic)."""

from __future__ import annotations

import logging

import onnx
from onnx import shape_inference

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.quantization.graph.prepare import is_large
from ptqflow.runtime.model_files import skeleton

log = logging.getLogger(__name__)


class InferShapes(GraphPass):
    """Always on: placement, the statistics' reduce nodes and the input checks read the inferred shapes and types."""

    name = "infer_shapes"
    switch = None

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """The shape-inferred copy (over 2 GB: ``model`` itself, its value_info and outputs replaced by those
        inferred on its skeleton); ``model`` unchanged when inference fails (a warning in the log: shape inference
        is an aid, not a requirement)."""
        large = is_large(model)
        try:
            # A model over 2 GB cannot be serialized for onnx's inference; its skeleton (graph, types and dims,
            # no weight bytes) can, and weights' values do not change shapes.
            inferred = shape_inference.infer_shapes(skeleton(model) if large else model, strict_mode=False,
                                                    data_prop=True)
        except Exception as exc:
            log.warning("shape inference failed: %s", exc)
            return model, self.result([])
        before, after = len(model.graph.value_info), len(inferred.graph.value_info)
        if large:
            _take_graph_types(model, inferred)
            inferred = model
        return inferred, self.result([f"shapes of {after - before} intermediate value(s) inferred"] if after != before
                                     else [])


def _take_graph_types(model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Give ``model`` the value_info and output types of ``inferred`` (its skeleton after inference), in place."""
    for field in ("value_info", "output"):
        target = getattr(model.graph, field)
        del target[:]
        target.extend(getattr(inferred.graph, field))
