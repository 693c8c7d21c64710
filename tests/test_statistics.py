"""Reduce-node statistics against numpy on the same data; save/load without pickle."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest

import builders as B
import ptqflow
from ptqflow.config import AdvancedParameters, QuantizationConfig, RangeEstimator
from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import prepare_model
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.quantization.statistics.points import StatisticPoint
from ptqflow.runtime.sessions import make_session


def _fp32_tensors(model, names, samples):
    prepared, _ = prepare_model(model)
    for n in names:
        prepared.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = make_session(prepared)
    return [dict(zip(names, sess.run(names, s))) for s in samples]


@pytest.mark.parametrize("builder,shape", [(B.conv_classifier, (3, 16, 16)), (B.mlp, (16,))])
def test_minmax_equals_numpy(builder, shape):
    model, samples = builder(), B.random_inputs(11, shape, seed=3)
    stats = ptqflow.collect_statistics(model, samples, QuantizationConfig())
    assert stats.num_samples == 11
    names = sorted(stats.mins)
    fp32 = _fp32_tensors(model, names, samples)
    for n in names:
        np.testing.assert_allclose(stats.mins[n], [f[n].min() for f in fp32], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats.maxs[n], [f[n].max() for f in fp32], rtol=1e-5, atol=1e-6)
    mean_ranges = stats.ranges(mean_minmax=True)
    global_ranges = stats.ranges(mean_minmax=False)
    p = stats.plan.activations[0]
    lo, hi = global_ranges[p.group]
    assert lo == pytest.approx(min(f[p.tensor].min() for f in fp32), rel=1e-5)
    assert hi == pytest.approx(max(f[p.tensor].max() for f in fp32), rel=1e-5)
    assert mean_ranges[p.group][1] <= hi


def test_subset_size_limits_samples_and_means_recorded():
    stats = ptqflow.collect_statistics(B.conv_classifier(), B.random_inputs(9, (3, 16, 16)),
                                       QuantizationConfig(subset_size=4))
    assert stats.num_samples == 4
    assert stats.plan.bias_layers, "bias layers are listed in the plan"
    for name in stats.plan.bias_layers:
        assert stats.means_in[name].ndim == 1
    assert {(p.consumer, p.reducer.value) for p in stats.points if p.reducer.value == "mean"} == {
        ("fast_bias_correction", "mean")}, "output means are not observed (FastBiasCorrection runs the FP32 layer instead)"


def test_batched_statistics_equal_per_sample(monkeypatch):
    samples = B.random_inputs(10, (16,), seed=1)
    batched = ptqflow.collect_statistics(B.mlp(), samples, QuantizationConfig())
    from ptqflow.quantization.statistics import accumulate
    monkeypatch.setattr(accumulate, "batchable", lambda *a: False)
    single = ptqflow.collect_statistics(B.mlp(), samples, QuantizationConfig())
    for n in single.mins:
        np.testing.assert_allclose(batched.mins[n], single.mins[n], rtol=1e-5)
        np.testing.assert_allclose(batched.maxs[n], single.maxs[n], rtol=1e-5)
    for n in single.means_in:
        np.testing.assert_allclose(batched.means_in[n], single.means_in[n], rtol=1e-4, atol=1e-6)


def test_save_load_roundtrip_without_pickle(tmp_path):
    cfg = QuantizationConfig(advanced=AdvancedParameters(activations_range=RangeEstimator.MINMAX))
    stats = ptqflow.collect_statistics(B.conv_classifier(), B.random_inputs(5, (3, 16, 16)), cfg)
    stats.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "statistics.npz"]
    with zipfile.ZipFile(tmp_path / "statistics.npz") as z:
        for name in z.namelist():
            with z.open(name) as fh:
                np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0(fh)
                assert header[2] != np.dtype(object)
    loaded = ptqflow.Statistics.load(tmp_path)
    assert loaded.plan == stats.plan and loaded.num_samples == 5
    for n in stats.mins:
        np.testing.assert_array_equal(loaded.mins[n], stats.mins[n])
    a = ptqflow.apply_quantization(B.conv_classifier(), stats, cfg)
    b = ptqflow.apply_quantization(B.conv_classifier(), loaded, cfg)
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("damage", ["object array", "not a zip", "plan without index"])
def test_damaged_statistics_are_an_input_error_that_never_suggests_pickles(tmp_path, damage):
    points = [StatisticPoint("minmax", "a", "a", r) for r in ("min", "max")]
    plan = QuantizationPlan(preset="performance", target_device="ANY", transformer=False, per_channel=True)
    ptqflow.Statistics(plan=plan, points=points, values={points[0].observation: np.zeros(2),
                                                         points[1].observation: np.ones(2)}, num_samples=2).save(tmp_path)
    if damage == "object array":
        np.savez(tmp_path / "statistics.npz", v_0=np.array([object()], dtype=object))
    elif damage == "not a zip":
        (tmp_path / "statistics.npz").write_bytes(b"\x80\x04K\x01.")  # a pickle
    else:
        (tmp_path / "plan.json").write_text('{"plan": {}}')
    with pytest.raises(InputError, match="statistics in .* are missing or damaged") as err:
        ptqflow.Statistics.load(tmp_path)
    assert "allow_pickle" not in str(err.value)


def _with_runtime(runtime: str, **kw) -> QuantizationConfig:
    return QuantizationConfig(advanced=AdvancedParameters(statistics_runtime=runtime), **kw)


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_openvino_statistics_runtime_equals_onnxruntime_sample_by_sample(dynamic_batch, caplog):
    """Two OpenVINO streams finish in any order; the per-sample minima/maxima still come back in sample order."""
    model = B.conv_classifier(dynamic_batch=dynamic_batch)
    samples = B.random_inputs(23, (3, 16, 16), seed=5)
    for i, s in enumerate(samples):  # sample i has its own range, so an order mix-up cannot go unseen
        s["input"] = s["input"] * np.float32(1 + i)
    with caplog.at_level("INFO", logger="ptqflow.quantization.statistics.runner"):
        on_ov = ptqflow.collect_statistics(model, samples, _with_runtime("openvino"))
    assert "statistics pass on OpenVINO CPU" in caplog.text
    on_ort = ptqflow.collect_statistics(model, samples, _with_runtime("onnxruntime"))
    assert on_ov.num_samples == on_ort.num_samples == 23
    for kind in ("mins", "maxs", "means_in"):
        theirs = getattr(on_ort, kind)
        assert getattr(on_ov, kind).keys() == theirs.keys()
        for name, value in theirs.items():
            np.testing.assert_allclose(getattr(on_ov, kind)[name], value, rtol=1e-4, atol=1e-5, err_msg=f"{kind} {name}")
    if not dynamic_batch:  # batch-1 runs: one minimum per sample, in sample order
        first = sorted(on_ov.mins)[0]
        assert len(on_ov.mins[first]) == 23


def test_auto_statistics_runtime_falls_back_to_onnxruntime_and_says_why(monkeypatch, caplog):
    from ptqflow.quantization.statistics import runner

    def broken(*a, **k):
        raise RuntimeError("no plugin for this op")

    monkeypatch.setattr(runner, "OpenVINORunner", broken)
    model, samples = B.conv_classifier(), B.random_inputs(4, (3, 16, 16), seed=1)
    with caplog.at_level("INFO", logger="ptqflow.quantization.statistics.runner"):
        stats = ptqflow.collect_statistics(model, samples, _with_runtime("auto"))
    assert stats.num_samples == 4
    assert "statistics pass on onnxruntime (OpenVINO not usable: no plugin for this op)" in caplog.text
    from ptqflow.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match="statistics_runtime 'openvino' is not usable: RuntimeError"):
        ptqflow.collect_statistics(model, samples, _with_runtime("openvino"))


def test_openvino_statistics_runtime_is_cpu_only_and_a_bad_name_is_refused():
    from pydantic import ValidationError

    from ptqflow.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError, match="runs on CPU only; device is 'cuda'"):
        ptqflow.collect_statistics(B.conv_classifier(), B.random_inputs(2, (3, 16, 16)), _with_runtime("openvino"),
                                   device="cuda")
    with pytest.raises(ValidationError, match="statistics_runtime"):
        AdvancedParameters(statistics_runtime="tensorrt")


def test_large_samples_are_stacked_fewer_at_a_time_within_their_blocks():
    """Stacks stay within MAX_STACK_BYTES of input (a run's activations grow with its stack) and never cross a
    multiple of their size, so shards (whole blocks of MAX_BATCH) stack what one collection does."""
    from ptqflow.quantization.statistics import accumulate

    def runs(shape, n, first=0):
        samples = [{"x": np.zeros((1, *shape), np.float32)} for _ in range(n)]
        return [b["count"] for b in accumulate.batches(iter(samples), True, 0, None, first)]

    small = (3, 48, 192)  # 110 KiB: 8 a run, as before
    assert accumulate.stack_size({"x": np.zeros((1, *small), np.float32)}) == accumulate.MAX_BATCH
    assert runs(small, 20) == [8, 8, 4]
    large = (3, 480, 640)  # 3.5 MiB: one at a time
    assert accumulate.stack_size({"x": np.zeros((1, *large), np.float32)}) == 1 and runs(large, 3) == [1, 1, 1]
    middle = (3, 256, 256)  # 768 KiB: stacks of 2, aligned also when a shard starts mid-stream
    assert runs(middle, 7) == [2, 2, 2, 1] and runs(middle, 3, first=8) == [2, 1]
    mixed = [{"x": np.zeros((1, *small), np.float32)}] * 3 + [{"x": np.zeros((1, *middle), np.float32)}] * 5
    assert [b["count"] for b in accumulate.batches(iter(mixed), True, 0, None)] == [3, 1, 2, 2]
    # a run of one sample is the sample's own dict, which runtime.sessions.OutputCache knows by identity: the
    # guard's FP32 outputs serve the mixed-precision search on PP-OCR det (3x480x640, one at a time)
    samples = [{"x": np.zeros((1, *large), np.float32)} for _ in range(2)]
    assert all(b["arrays"] is s for b, s in zip(accumulate.batches(iter(samples), True, 0, None), samples))
