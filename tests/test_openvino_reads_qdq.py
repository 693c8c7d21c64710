"""The ONNX path's INT8 QDQ model for OpenVINO runs alike on onnxruntime and on OpenVINO (CPU, f32 inference precision,
the ONNX file read directly). OpenVINO 2026.4.1 (CPU plugin; not after ov.convert_model) computes int8
QuantizeLinear/DequantizeLinear pairs that meet at a Concat read by a quantized Conv as if their scale were 1
(round(clamp(x, -128, 127))); PP-OCR det's FPN merge (scale 14.7) lost every box that way. The writer puts those
pairs in uint8 with zero point 128: the same grid, which both runtimes read correctly (bench/README.md, IR input)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import builders as B
import ptqflow
from ptqflow.config import AdvancedParameters

ov = pytest.importorskip("openvino")

EXACT = AdvancedParameters(safeguard_mixed_precision=False)


def _zero_point_types(model: onnx.ModelProto) -> dict[str, int]:
    """The zero point's element type of each activation QuantizeLinear, by the tensor it quantizes."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    return {n.input[0]: types[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_concat_of_signed_activations_runs_alike_on_onnxruntime_and_openvino():
    samples = B.random_inputs(8, (3, 8, 8))
    q = ptqflow.quantize(B.wide_concat(), samples, advanced_parameters=EXACT)
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(q.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    for s in samples:
        a, b = sess.run(None, s)[0], compiled(s)[0]
        # one output quantization step of rounding apart at most, not OpenVINO's clipped reading (~0.5 relative)
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02
    zp_types = _zero_point_types(q)
    # the Concat's inputs, signed with scales above 1 (where OpenVINO's clamp cuts), are written in uint8
    assert zp_types["ca"] == zp_types["cb"] == onnx.TensorProto.UINT8
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    assert float(scales["ca_scale"]) > 1 and float(scales["cb_scale"]) > 1
