"""Reduce-node statistics against numpy on the same data; save/load without pickle."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest

import builders as B
import ptqflow
from ptqflow.config import AdvancedParameters, QuantizationConfig, RangeEstimator
from ptqflow.graph.prepare import prepare_model
from ptqflow.runtime import make_session


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
    p = stats.plan["activations"][0]
    lo, hi = global_ranges[p["group"]]
    assert lo == pytest.approx(min(f[p["tensor"]].min() for f in fp32), rel=1e-5)
    assert hi == pytest.approx(max(f[p["tensor"]].max() for f in fp32), rel=1e-5)
    assert mean_ranges[p["group"]][1] <= hi


def test_subset_size_limits_samples_and_means_recorded():
    stats = ptqflow.collect_statistics(B.conv_classifier(), B.random_inputs(9, (3, 16, 16)),
                                       QuantizationConfig(subset_size=4))
    assert stats.num_samples == 4
    assert stats.plan["bias_layers"], "bias layers are listed in the plan"
    for name in stats.plan["bias_layers"]:
        assert stats.means_in[name].ndim == 1 and stats.means_out[name].ndim == 1


def test_batched_statistics_equal_per_sample(monkeypatch):
    samples = B.random_inputs(10, (16,), seed=1)
    batched = ptqflow.collect_statistics(B.mlp(), samples, QuantizationConfig())
    import ptqflow.api as api
    monkeypatch.setattr(api, "_batchable", lambda *a: False)
    single = ptqflow.collect_statistics(B.mlp(), samples, QuantizationConfig())
    for n in single.mins:
        np.testing.assert_allclose(batched.mins[n], single.mins[n], rtol=1e-5)
        np.testing.assert_allclose(batched.maxs[n], single.maxs[n], rtol=1e-5)
    for n in single.means_in:
        np.testing.assert_allclose(batched.means_out[n], single.means_out[n], rtol=1e-4, atol=1e-6)


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
