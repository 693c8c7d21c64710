"""The per-channel mean and standard deviation a BatchNormalization gives its output, recorded before the
BatchNormalizations are folded away: cross-layer equalization's bias absorption reads them (Nagel et al. 2019,
section 4.2: a ReLU input of mean beta and deviation gamma stays above beta - 3 gamma on nearly every input)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult

# The model's metadata key the bounds travel under from this pass to ``equalize`` (which removes it): the graph
# passes hand each other nothing but the model.
METADATA_KEY = "ptqflow.batchnorm_output_moments"


class BatchnormBounds(GraphPass):
    """Switch ``cross_layer_equalization``. Runs before BatchNormalization fusion; the fused Conv keeps the
    BatchNormalization's output name, so the record is keyed by that tensor."""

    name = "batchnorm_bounds"
    switch = "cross_layer_equalization"

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``model`` with a metadata entry {BatchNormalization output: [beta per channel], [|gamma| per channel]}
        for every BatchNormalization whose scale and bias are initializers; one change line when any."""
        inits = {t.name: t for t in model.graph.initializer}
        moments = {}
        for n in model.graph.node:
            if n.op_type == "BatchNormalization" and len(n.input) >= 3 and all(i in inits for i in n.input[1:3]):
                gamma, beta = (numpy_helper.to_array(inits[i]).astype(np.float64).ravel() for i in n.input[1:3])
                moments[n.output[0]] = [beta.tolist(), np.abs(gamma).tolist()]
        if not moments:
            return model, self.result([])
        pop(model)
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(moments))
        return model, self.result([f"recorded the output moments of {len(moments)} BatchNormalization(s)"])


def pop(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The recorded moments {tensor: (beta, |gamma|)}, removed from ``model`` (empty when none)."""
    for i, p in enumerate(model.metadata_props):
        if p.key == METADATA_KEY:
            del model.metadata_props[i]
            return {t: (np.asarray(b), np.asarray(g)) for t, (b, g) in json.loads(p.value).items()}
    return {}
