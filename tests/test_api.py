"""The public API: Dataset forms, quantize from a path, the two halves, the per-layer summary."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders as B
import ptqflow
from ptqflow.api import quantize_with_summary
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.errors import InputError


def test_dataset_accepts_pot_tuples_bare_arrays_and_transform():
    arrays = [s["input"] for s in B.random_inputs(6, (16,))]
    a = ptqflow.quantize(B.mlp(), ptqflow.Dataset([(x, 0) for x in arrays]))
    b = ptqflow.quantize(B.mlp(), ptqflow.Dataset(arrays))
    c = ptqflow.quantize(B.mlp(), ptqflow.Dataset([(x, 0, {"id": i}) for i, x in enumerate(arrays)],
                                                   transform_fn=lambda item: {"input": item[0]}))
    assert a.SerializeToString() == b.SerializeToString() == c.SerializeToString()


def test_quantize_from_path_equals_from_proto(tmp_path):
    samples = B.random_inputs(5, (3, 16, 16))
    path = B.save(B.conv_classifier(), tmp_path / "model.onnx")
    assert (ptqflow.quantize(path, samples).SerializeToString()
            == ptqflow.quantize(B.conv_classifier(), samples).SerializeToString())


def test_two_halves_equal_one_call(tmp_path):
    samples = B.random_inputs(6, (3, 16, 16))
    cfg = QuantizationConfig()
    stats = ptqflow.collect_statistics(B.conv_classifier(), iter(samples), cfg)
    stats.save(tmp_path / "stats")
    # the calibration samples reach the second half too: the bias correction guard runs on them
    q = ptqflow.apply_quantization(B.conv_classifier(), ptqflow.Statistics.load(tmp_path / "stats"), cfg,
                                   dataset=samples)
    assert q.SerializeToString() == ptqflow.quantize(B.conv_classifier(), samples).SerializeToString()


def test_summary_reports_quantized_float_and_bias_correction():
    model = B.detection_head()
    samples = [{"input": np.random.default_rng(i).normal(size=(1, 16, 8)).astype(np.float32)} for i in range(6)]
    cfg = QuantizationConfig()
    stats = ptqflow.collect_statistics(model, samples, cfg)
    result = quantize_with_summary(model, stats, cfg)
    rows = {r["name"]: r for r in result.layers}
    assert rows["box_fc"]["status"] == "quantized" and rows["box_fc"]["weight"]["per_channel"]
    assert rows["post_fc"]["status"] == "float" and "TopK" in rows["post_fc"]["reason"]
    conv = quantize_with_summary(B.conv_classifier(), ptqflow.collect_statistics(
        B.conv_classifier(), B.random_inputs(6, (3, 16, 16)), cfg), cfg)
    assert any("bias_correction" in r for r in conv.layers)


def test_full_bias_correction_needs_and_uses_dataset():
    samples = B.random_inputs(6, (3, 16, 16))
    cfg = QuantizationConfig(fast_bias_correction=False)
    stats = ptqflow.collect_statistics(B.conv_classifier(), samples, cfg)
    with pytest.raises(InputError, match="dataset"):
        quantize_with_summary(B.conv_classifier(), stats, cfg)
    result = quantize_with_summary(B.conv_classifier(), stats, cfg, dataset=samples)
    assert any(r.get("bias_correction", {}).get("samples") for r in result.layers)
    q = ptqflow.quantize(B.conv_classifier(), samples, fast_bias_correction=False)
    onnx.checker.check_model(q)


def test_disable_bias_correction_leaves_biases():
    samples = B.random_inputs(6, (3, 16, 16))
    cfg = QuantizationConfig(advanced=AdvancedParameters(disable_bias_correction=True))
    result = quantize_with_summary(B.conv_classifier(), ptqflow.collect_statistics(B.conv_classifier(), samples, cfg), cfg)
    assert not any("bias_correction" in r for r in result.layers)
