"""Graph preparation as passes: the FP32 model is rewritten by GRAPH_PASSES, in this order, before placement.

1. ``drop_initializer_inputs``: graph inputs an initializer backs become weights;
2. ``upgrade_opset``: opset >= 13 (per-axis quantizers), a warning when impossible;
3. ``clamp_ir_version``: an ir_version onnxruntime accepts, for the optimizer;
4. ``batchnorm_bounds`` (``advanced.cross_layer_equalization``): each BatchNormalization's output moments,
   recorded for bias absorption before folding removes them;
5. ``ort_basic_optimize`` (``advanced.graph_constant_folding``): onnxruntime's basic optimizer (constant
   folding, Conv+BatchNorm/Add/Mul fusion; the function ops it inlines are put back);
6. ``fold_batchnorm`` (``advanced.graph_fold_batchnorm``): the Conv+BatchNorm pairs still left;
7. ``cross_layer_equalization`` (``advanced.cross_layer_equalization``): Conv -> ReLU -> Conv pairs rescaled
   per channel, biases absorbed (``equalize``);
8. ``name_nodes``: every node named;
9. ``infer_shapes``: onnx's shape inference;
10. ``clamp_ir_version`` again: shape inference writes onnx's own IR version.

The passes without a switch are what quantizing an ONNX model correctly needs; the ones with one are
optimizations. The order is the same for every run, so collect-stats and quantize (two processes) prepare the
same model and the tensor names in a saved plan match.
"""

from __future__ import annotations

import logging

import onnx

from ptqflow.config import AdvancedParameters
from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.quantization.graph.passes.batchnorm_bounds import BatchnormBounds
from ptqflow.quantization.graph.passes.clamp_ir_version import ClampIrVersion
from ptqflow.quantization.graph.passes.drop_initializer_inputs import DropInitializerInputs
from ptqflow.quantization.graph.passes.equalize import CrossLayerEqualization
from ptqflow.quantization.graph.passes.fold_batchnorm import FoldBatchnorm
from ptqflow.quantization.graph.passes.infer_shapes import InferShapes
from ptqflow.quantization.graph.passes.name_nodes import NameNodes
from ptqflow.quantization.graph.passes.ort_basic_optimize import OrtBasicOptimize
from ptqflow.quantization.graph.passes.upgrade_opset import UpgradeOpset

log = logging.getLogger(__name__)

GRAPH_PASSES: tuple[GraphPass, ...] = (
    DropInitializerInputs(),
    UpgradeOpset(),
    ClampIrVersion(),
    BatchnormBounds(),
    OrtBasicOptimize(),
    FoldBatchnorm(),
    CrossLayerEqualization(),
    NameNodes(),
    InferShapes(),
    ClampIrVersion(),
)


def run_graph_passes(model: onnx.ModelProto,
                     advanced: AdvancedParameters) -> tuple[onnx.ModelProto, list[GraphPassResult]]:
    """``model`` rewritten by each enabled pass of GRAPH_PASSES in order (``model`` itself may be changed), and
    the result of each pass that ran."""
    results = []
    for p in GRAPH_PASSES:
        if not p.enabled(advanced):
            log.debug("graph pass %s off (advanced.%s)", p.name, p.switch)
            continue
        model, result = p.apply(model, advanced)
        results.append(result)
    return model, results


__all__ = ["GRAPH_PASSES", "GraphPass", "GraphPassResult", "run_graph_passes"]
