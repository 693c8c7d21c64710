"""BatchNormalization folded into the Conv before it, so that its scale ends up in the quantized weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult


class FoldBatchnorm(GraphPass):
    """Switch ``graph_fold_batchnorm``. onnxruntime's basic optimizer (``graph_constant_folding``) fuses the same
    pairs first; this pass folds what is left, e.g. when that is off or skipped."""

    name = "fold_batchnorm"
    switch = "graph_fold_batchnorm"

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``model`` (changed in place) with each BatchNormalization folded into a preceding Conv whose output it
        alone reads and whose weights nothing else reads; one change line per folded pair."""
        g = model.graph
        idx = GraphIndex(g)  # a snapshot of the unfolded graph, not updated while pairs are folded
        inits = idx.inits
        changes = []
        for bn in [n for n in g.node if n.op_type == "BatchNormalization" and len(n.output) == 1]:
            conv = idx.producer.get(bn.input[0])
            if conv is None or conv.op_type != "Conv" or len(idx.consumers.get(bn.input[0], [])) != 1 \
                    or bn.input[0] in idx.outputs:
                continue
            if len(conv.input) < 2 or conv.input[1] not in inits or not all(i in inits for i in bn.input[1:5]):
                continue
            if len(idx.consumers.get(conv.input[1], [])) != 1:
                continue
            change = f"folded BatchNormalization {_label(bn)} into Conv {_label(conv)}"  # before conv is rewired
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            scale, b, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
            w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                    if len(conv.input) > 2 and conv.input[2] in inits else np.zeros(w.shape[0]))
            k = scale / np.sqrt(var + eps)
            w = w * k.reshape(-1, *([1] * (w.ndim - 1)))
            new_bias = (bias - mean) * k + b
            inits[conv.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
            bias_name = conv.output[0] + "_folded_bias"
            g.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), bias_name))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bias_name
            conv.output[0] = bn.output[0]
            g.node.remove(bn)
            changes.append(change)
        return model, self.result(changes)


def _label(node: onnx.NodeProto) -> str:
    """The node's name, or its output's when it has none yet (name_nodes runs later)."""
    return node.name or f"(unnamed, output {node.output[0]})"
