"""Detected-transformer safeguard (``safeguard_detected_transformer``): a graph that looks like a transformer
(attention and a normalization) gets transformer placement from its first normalization on; a convolutional
backbone in front of it (OCR recognizers) keeps CNN placement, which is more accurate. A declared transformer
(``model_type='transformer'``) gets it everywhere, whatever the switch."""

from __future__ import annotations

import onnx

from ptqflow.config import ModelType, QuantizationConfig
from ptqflow.quantization.algorithms.quantizer_placement.regions import downstream
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.passes.base import Pass

NORMS = ("LayerNormalization", "ReduceMean")


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    """True when the graph has attention (Softmax between MatMuls) and a layer norm (fused or decomposed)."""
    ops = {n.op_type for n in model.graph.node}
    return "Softmax" in ops and "MatMul" in ops and bool(ops & set(NORMS))


class DetectedTransformer(Pass):
    name = "safeguard_detected_transformer"
    switch = "safeguard_detected_transformer"

    def detected(self, model: onnx.ModelProto, config: QuantizationConfig) -> bool:
        """True when the model is treated as a detected (not declared) transformer."""
        return (config.model_type != ModelType.TRANSFORMER and self.enabled(config.advanced)
                and looks_like_transformer(model))

    def region(self, g: GraphIndex) -> set[str]:
        """The first normalization and every node downstream of it."""
        norms = [n for n in g.nodes if n.op_type in NORMS]
        return {n.name for n in norms} | downstream(g, norms)


PASS = DetectedTransformer()


def transformer_nodes(model: onnx.ModelProto, config: QuantizationConfig) -> set[str]:
    """Nodes that get transformer treatment: every node of a declared transformer; of a detected one, the first
    normalization and everything downstream of it; none otherwise."""
    if config.model_type == ModelType.TRANSFORMER:
        return {n.name for n in model.graph.node}
    if not PASS.detected(model, config):
        return set()
    return PASS.region(GraphIndex(model))
