"""Sessions: onnxruntime on cpu, OpenVINO behind the same run() interface for the npu execution device."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import ptqflow
from ptqflow.runtime import sessions as runtime
from ptqflow.errors import DeviceUnavailableError
from builders import conv_classifier, random_inputs

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # this CPU would run bf16 otherwise


def test_openvino_session_matches_onnxruntime_per_input_shape():
    model = conv_classifier(dynamic_batch=True)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = runtime.OpenVINOSession(model, "CPU", F32)
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]
    for batch in (1, 3, 1):  # a new shape compiles once more; a known one reuses its compiled model
        x = np.random.default_rng(batch).normal(size=(batch, 3, 16, 16)).astype(np.float32)
        (got,) = sess.run(None, {"input": x})
        (want,) = ref.run(None, {"input": x})
        assert got.shape == want.shape == (batch, 5)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert len(sess._compiled) == 2


def test_unknown_output_name_is_named():
    sess = runtime.OpenVINOSession(conv_classifier(), "CPU")
    with pytest.raises(KeyError, match="no_such_tensor"):
        sess.run(["no_such_tensor"], {"input": np.zeros((1, 3, 16, 16), np.float32)})


def test_npu_without_an_npu_names_the_devices_openvino_sees():
    import openvino as ov

    if "NPU" in ov.Core().available_devices:
        pytest.skip("this machine has an NPU")
    with pytest.raises(DeviceUnavailableError, match=r"'NPU' is not present; available: .*CPU"):
        runtime.make_session(conv_classifier(), "npu")


def test_unknown_device_lists_the_runners():
    with pytest.raises(DeviceUnavailableError, match="available: cpu, cuda, npu"):
        runtime.make_session(conv_classifier(), "tpu")


def test_statistics_on_the_openvino_runner_match_onnxruntime(monkeypatch):
    """The npu path end to end (reduce nodes run by OpenVINO), on OpenVINO's CPU device standing in for the NPU."""
    model = conv_classifier(dynamic_batch=True)
    data = random_inputs(12, (3, 16, 16), seed=3)
    on_cpu = ptqflow.collect_statistics(model, ptqflow.Dataset(data), device="cpu")
    monkeypatch.setitem(runtime._OPENVINO_DEVICES, "npu", ("CPU", F32))
    on_ov = ptqflow.collect_statistics(model, ptqflow.Dataset(data), device="npu")
    assert on_ov.mins.keys() == on_cpu.mins.keys() and on_ov.means_in.keys() == on_cpu.means_in.keys()
    for kind in ("mins", "maxs", "means_in"):
        for name, value in getattr(on_cpu, kind).items():
            np.testing.assert_allclose(getattr(on_ov, kind)[name], value, rtol=1e-3, atol=1e-4, err_msg=f"{kind} {name}")


def test_a_float_input_to_an_int8_weight_matmul_stays_float():
    """onnxruntime fuses DequantizeLinear(int8 weight) -> MatMul into MatMulNBits and, by default, quantizes the
    float input at run time; ptqflow's sessions compute what the graph says (the input ptqflow kept float)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n = 64, 32
    wq = rng.integers(-127, 128, size=(k, n)).astype(np.int8)
    scale = ((rng.random(n) + 0.5) * 0.01).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "ws"),
         numpy_helper.from_array(np.zeros(n, np.int8), "wz")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    x = rng.normal(size=(4, k)).astype(np.float32)
    x[:, 0] *= 1000  # one outlier channel: int8 input quantization would lose the others
    reference = x.astype(np.float64) @ (wq.astype(np.float64) * scale)
    y = runtime.make_session(model).run(None, {"x": x})[0]
    assert np.abs(y - reference).max() / np.abs(reference).max() < 1e-5


def test_output_cache_runs_each_feed_once_and_matches_run_each():
    model = conv_classifier(dynamic_batch=True)
    feeds = random_inputs(5, (3, 16, 16), seed=3)
    cache = runtime.OutputCache(model)
    first = cache(feeds[:3])
    want = runtime.run_each(model, feeds)
    for got, ref in zip(first, want):
        np.testing.assert_array_equal(got[0], ref[0])
    again = cache(feeds[1:])  # two known feeds, two new ones
    assert again[0] is first[1] and again[1] is first[2]  # known feeds are not run again
    np.testing.assert_array_equal(again[3][0], want[4][0])
    cache.keep(feeds[3:])  # the others are forgotten: asked again, they run again
    assert cache(feeds[3:4])[0] is again[2] and cache(feeds[:1])[0] is not first[0]
