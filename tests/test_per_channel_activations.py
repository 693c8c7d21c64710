"""Per-channel activation quantizers (a depthwise conv's input) run on onnxruntime's default session and read the
same on OpenVINO: every pairing of the input's sign with what follows the depthwise conv."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as B
from ptqflow.api import quantize_with_config
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.pipeline.report.decisions import layer_rows

C, SIZE = 8, 10


def _depthwise_net(activation: str | None, bias: bool, after: str, seed: int = 0) -> onnx.ModelProto:
    """input[N,3,10,10] -> Conv (channels spread over 50x) -> [activation] -> depthwise Conv [+ bias] -> ``after``:
    "pool" (GlobalAveragePool: the depthwise output is quantized as it is, the pattern onnxruntime fuses into a
    QLinearConv), "depthwise" (a second depthwise conv, whose input is per-channel too) or "relu" (Relu, then a
    pointwise Conv)."""
    rng = np.random.default_rng(seed)
    gain = np.geomspace(0.05, 2.5, C).astype(np.float32)[:, None, None, None]
    inits = [B._init("w1", (rng.normal(0, 1, (C, 3, 3, 3)) * gain).astype(np.float32)),
             B._init("w2", rng.normal(0, 1, (C, 1, 3, 3)).astype(np.float32)),
             B._init("w3", rng.normal(0, 1, (C, 1, 3, 3)).astype(np.float32)),
             B._init("w4", rng.normal(0, 1, (4, C, 1, 1)).astype(np.float32)),
             B._init("b2", rng.normal(0, 0.1, C).astype(np.float32))]
    n = helper.make_node
    nodes = [n("Conv", ["input", "w1"], ["c1"], name="conv", pads=[1, 1, 1, 1])]
    x = "c1"
    if activation:
        nodes.append(n(activation, ["c1"], ["a1"], name="act"))
        x = "a1"
    nodes.append(n("Conv", [x, "w2"] + (["b2"] if bias else []), ["d"], name="dwconv", group=C, pads=[1, 1, 1, 1]))
    if after == "pool":
        nodes.append(n("GlobalAveragePool", ["d"], ["output"], name="pool"))
    elif after == "depthwise":
        nodes += [n("Conv", ["d", "w3"], ["d2"], name="dwconv2", group=C, pads=[1, 1, 1, 1]),
                  n("GlobalAveragePool", ["d2"], ["output"], name="pool")]
    else:
        nodes += [n("Relu", ["d"], ["r"], name="relu"), n("Conv", ["r", "w4"], ["output"], name="pwconv")]
    out_shape = ["N", 4, SIZE, SIZE] if after == "relu" else ["N", C, 1, 1]
    return B.make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], inits)


def _qdq(model: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    axis = next((a.i for a in q.attribute if a.name == "axis"), None)
    return inits[q.input[1]], inits[q.input[2]], axis


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("after", ["pool", "depthwise", "relu"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ["Relu", None])
def test_a_per_channel_depthwise_input_runs_on_onnxruntimes_default_session(activation, bias, after):
    model = _depthwise_net(activation, bias, after)
    samples = B.random_inputs(12, (3, SIZE, SIZE), seed=1)
    # mixed precision measures on these few samples and may keep the input float: this test is about its form
    result = quantize_with_config(model, samples, QuantizationConfig(
        subset_size=12, advanced=AdvancedParameters(safeguard_mixed_precision=False)))
    x = "a1" if activation else "c1"
    scale, zero_point, axis = _qdq(result.model, x)
    assert axis == 1 and scale.shape == (C,) and scale.max() > 5 * scale.min()
    # unsigned (after Relu): uint8's grid [0, 255 * scale] written as int8 with zero point -128; signed: int8, 0
    assert zero_point.dtype == np.int8 and set(zero_point.tolist()) == ({-128} if activation else {0})
    row = next(r for r in result.layers if r["name"] == "dwconv")
    assert row["per_channel_inputs"] == [x] and row["quantized_inputs"] == [x]
    assert not any(r.get("per_channel_inputs") for r in result.layers if r["name"] != "dwconv" and r["op_type"] == "Conv"
                   and r["name"] != "dwconv2")
    shown = {r["name"]: r for r in layer_rows(result.layers)}["dwconv"]
    assert f"input scale per channel: {x}" in shown["why"]
    fused, plain = _session(result.model), _session(result.model, optimize=False)
    for s in samples[:3]:
        got, ref = fused.run(None, s)[0], plain.run(None, s)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_openvino_reads_an_unsigned_per_channel_input_as_onnxruntime_does():
    """OpenVINO turns the int8 pair with zero point -128 into the same FakeQuantize grid as uint8 with 0: its
    output agrees with onnxruntime's on the quantized model to within int8 rounding of the output."""
    ov = pytest.importorskip("openvino")
    model = _depthwise_net("Relu", False, "pool")
    samples = B.random_inputs(12, (3, SIZE, SIZE), seed=1)
    q = quantize_with_config(model, samples, QuantizationConfig(
        subset_size=12, advanced=AdvancedParameters(safeguard_mixed_precision=False))).model
    assert _qdq(q, "a1")[2] == 1
    compiled = ov.Core().compile_model(ov.Core().read_model(q.SerializeToString(), b""), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    ref = _session(q)
    out_scale = float(_qdq(q, "d")[0])
    for s in samples[:3]:
        got, want = compiled(s)[0], ref.run(None, s)[0]
        assert np.abs(got - want).max() <= 2 * out_scale
