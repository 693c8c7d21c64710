"""Bias correction (fast and full) on hand-made QDQ models: mean errors shrink, guard rails hold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from builders import (
    coarse_qdq, conv_classifier, conv_zero_bias, deep_mlp, mlp, mlp_rank_lost, random_inputs, tiny_encoder,
    token_inputs, upsample_head,
)
from ptqflow.quantization.algorithms.bias_correction import apply_bias_correction
from ptqflow.quantization.algorithms.bias_layers import channel_mean, find_bias_layers, judge_shift
from ptqflow.quantization.algorithms.fast_bias_correction import apply_fast_bias_correction
from ptqflow.api import collect_statistics, quantize_with_config
from ptqflow.config import AdvancedParameters, QuantizationConfig

THRESHOLD = AdvancedParameters().bias_correction_threshold  # the default a run uses


def _run_tensors(model: onnx.ModelProto, names: list[str], samples) -> list[list[np.ndarray]]:
    """Values of tensors ``names`` for every sample (per name, a list over samples)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(names, s) for s in samples]
    return [[r[k] for r in runs] for k in range(len(names))]


def _fp32_stats(model, layers, samples):
    """Per-layer FP32 per-channel input and output means, as the statistics pass provides them."""
    names = [x for layer in layers for x in (layer.input, layer.output)]
    values = _run_tensors(model, names, samples)
    means_in, means_out = {}, {}
    for k, layer in enumerate(layers):
        means_in[layer.name] = np.mean([channel_mean(v, layer.input_channel_axis) for v in values[2 * k]], axis=0)
        means_out[layer.name] = np.mean([channel_mean(v, layer.channel_axis) for v in values[2 * k + 1]], axis=0)
    return means_in, means_out


def _mean_errors(fp32, q, layers, samples) -> dict[str, np.ndarray]:
    """Per layer, |FP32 - quantized| per-channel output mean on ``samples``."""
    names = [layer.output for layer in layers]
    f_vals, q_vals = _run_tensors(fp32, names, samples), _run_tensors(q, names, samples)
    errors = {}
    for layer, fv, qv in zip(layers, f_vals, q_vals):
        f_mean = np.mean([channel_mean(v, layer.channel_axis) for v in fv], axis=0)
        q_mean = np.mean([channel_mean(v, layer.channel_axis) for v in qv], axis=0)
        errors[layer.name] = np.abs(f_mean - q_mean)
    return errors


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


CASES = {
    "conv": (lambda: conv_classifier(seed=1), (3, 16, 16)),
    "upsample": (lambda: upsample_head(seed=4), (3, 8, 8)),
    "mlp": (lambda: mlp(seed=2), (16,)),
    "mlp_seq": (lambda: mlp(seed=3, seq=True), (5, 16)),
    "encoder": (lambda: tiny_encoder(seed=5), None),
}


def _setup(case, offset=0.5):
    build, shape = CASES[case]
    fp32 = build()
    if shape is None:
        calib, held_out = token_inputs(24, seed=10), token_inputs(24, seed=11)
    else:
        calib, held_out = random_inputs(24, shape, seed=10), random_inputs(24, shape, seed=11)
        for s in calib + held_out:  # a non-zero input mean makes the weight error show in the output mean
            s["input"] += np.float32(offset)
    return fp32, coarse_qdq(fp32, calib, weight_levels=7), calib, held_out


def _input_shapes(model, layers, samples):
    values = _run_tensors(model, [layer.input for layer in layers], samples[:1])
    return {layer.name: v[0].shape for layer, v in zip(layers, values)}


def test_find_bias_layers_conv_gemm_matmul_add():
    conv = find_bias_layers(conv_classifier())
    assert [(layer.name, layer.op_type, layer.output, layer.bias, layer.channel_axis) for layer in conv] == [
        ("conv1", "Conv", "bn1", "bn_bias", 1),  # no bias of its own: the BatchNormalization's B moves
        ("conv2", "Conv", "c2", "b2", 1), ("fc", "Gemm", "logits", "fc_b", 1)]
    lin = find_bias_layers(mlp())
    assert [(layer.name, layer.output, layer.bias, layer.bias_node) for layer in lin] == [
        ("fc1", "a1", "b1", "fc1_bias"), ("fc2", "output", "b2", "fc2_bias")]


def test_find_bias_layers_in_qdq_model_and_add_order():
    fp32 = mlp()
    for node in fp32.graph.node:  # bias first: Add(b, mm)
        if node.op_type == "Add":
            node.input[0], node.input[1] = node.input[1], node.input[0]
    q = coarse_qdq(fp32, random_inputs(4, (16,)))
    assert [layer.name for layer in find_bias_layers(fp32)] == ["fc1", "fc2"]
    assert [layer.name for layer in find_bias_layers(q)] == ["fc1", "fc2"]  # weights through DequantizeLinear


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("algorithm", ["fast", "fast_shapes", "fast_fp32_ref", "full"])
def test_correction_reduces_mean_error(case, algorithm):
    fp32, q, calib, held_out = _setup(case)
    layers = find_bias_layers(fp32)
    before = _mean_errors(fp32, q, layers, held_out)
    if algorithm.startswith("fast"):
        means_in, means_out = _fp32_stats(fp32, layers, calib)
        extra = {}
        if algorithm == "fast_shapes":
            extra["input_shapes"] = _input_shapes(fp32, layers, calib)
        elif algorithm == "fast_fp32_ref":
            extra["fp32_model"] = fp32
        records = apply_fast_bias_correction(q, layers, means_in, means_out, threshold=10.0, **extra)
    else:
        records = apply_bias_correction(fp32, q, layers, calib, threshold=10.0)
        assert all(r["samples"] == len(calib) for r in records)
    assert [r["layer"] for r in records] == [layer.name for layer in layers]
    assert all(r["applied"] for r in records), records
    after = _mean_errors(fp32, q, layers, held_out)
    for layer in layers:
        assert after[layer.name].mean() < 0.7 * before[layer.name].mean(), (layer.name, before, after)
    for init in q.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            assert np.all(np.isfinite(numpy_helper.to_array(init)))


def _zero_bias_setup():
    fp32 = conv_zero_bias()
    calib = random_inputs(16, (4, 8, 8), seed=20)
    held_out = random_inputs(16, (4, 8, 8), seed=21)
    for s in calib + held_out:
        s["input"] += np.float32(0.5)
    return fp32, coarse_qdq(fp32, calib, weight_levels=7), calib, held_out


def test_zero_missing_and_shared_bias():
    fp32, q, calib, held_out = _zero_bias_setup()
    layers = find_bias_layers(fp32)
    assert [layer.name for layer in layers] == ["conv_zero", "conv_shared1", "conv_shared2"]  # conv_nobias left out
    before = _mean_errors(fp32, q, layers, held_out)
    means_in, means_out = _fp32_stats(fp32, layers, calib)
    with np.errstate(divide="raise", invalid="raise"):  # a zero bias must not divide by zero
        records = apply_fast_bias_correction(q, layers, means_in, means_out, threshold=10.0)
    assert all(r["applied"] for r in records), records
    assert records[0]["bias_norm"] == 0.0 and records[0]["max_abs_shift"] > 0
    after = _mean_errors(fp32, q, layers, held_out)
    for layer in layers:
        assert after[layer.name].mean() < 0.7 * before[layer.name].mean(), (layer.name, before, after)
    # the shared bias was split: each conv now reads its own corrected copy, the original stays as it was
    convs = {n.name: n for n in q.graph.node}
    assert convs["conv_shared1"].input[2] != convs["conv_shared2"].input[2]
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert not np.allclose(inits[convs["conv_shared1"].input[2]], inits[convs["conv_shared2"].input[2]])
    # the bias-less conv got no bias input
    assert len(convs["conv_nobias"].input) == 2


def test_zero_bias_full_correction():
    fp32, q, calib, held_out = _zero_bias_setup()
    layers = find_bias_layers(fp32)
    before = _mean_errors(fp32, q, layers, held_out)
    with np.errstate(divide="raise", invalid="raise"):
        records = apply_bias_correction(fp32, q, layers, calib, threshold=10.0)
    assert all(r["applied"] for r in records), records
    after = _mean_errors(fp32, q, layers, held_out)
    for layer in layers:
        assert after[layer.name].mean() < 0.5 * before[layer.name].mean(), (layer.name, before, after)


def test_fp32_means_kept_between_corrections_on_the_same_samples(monkeypatch):
    """A second correction on the same samples (the plan written again after mixed precision) takes the FP32
    output means the first one kept and gives the same biases; other samples get a pass of their own."""
    import ptqflow.quantization.algorithms.bias_correction as bc

    fp32, q, calib, held_out = _setup("conv")
    layers = find_bias_layers(fp32)
    passes = []
    real = bc._fp32_output_means
    monkeypatch.setattr(bc, "_fp32_output_means", lambda *a, **k: passes.append(len(a[2])) or real(*a, **k))
    kept: dict = {}
    first, second = onnx.ModelProto(), onnx.ModelProto()
    first.CopyFrom(q)
    second.CopyFrom(q)
    a = apply_bias_correction(fp32, first, layers, calib, threshold=10.0, fp32_means=kept)
    b = apply_bias_correction(fp32, second, layers, calib, threshold=10.0, fp32_means=kept)
    assert passes == [len(calib)]
    assert [r["shift_norm"] for r in a] == [r["shift_norm"] for r in b] and any(r["applied"] for r in a)
    assert all(np.array_equal(v, _bias_values(second)[k]) for k, v in _bias_values(first).items())
    apply_bias_correction(fp32, second, layers, held_out, threshold=10.0, fp32_means=kept)
    assert passes == [len(calib), len(held_out)]


def _bias_values(model):
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def test_nan_and_missing_stats_are_skipped():
    fp32, q, calib, _ = _setup("conv")
    layers = find_bias_layers(fp32)
    means_in, means_out = _fp32_stats(fp32, layers, calib)
    means_in["conv2"] = means_in["conv2"].copy()
    means_in["conv2"][0] = np.nan
    del means_out["fc"]
    del means_in["conv1"]
    original = _bias_values(q)
    records = apply_fast_bias_correction(q, layers, means_in, means_out, threshold=10.0)
    assert [r["applied"] for r in records] == [False, False, False]
    assert "missing" in records[0]["reason"] and "not finite" in records[1]["reason"]
    assert "missing" in records[2]["reason"]
    now = _bias_values(q)
    assert all(np.array_equal(original[k], now[k]) for k in original)


def test_nan_activations_never_reach_a_bias():
    fp32, q, calib, _ = _setup("mlp")
    layers = find_bias_layers(fp32)
    calib[0]["input"][0, 0] = np.nan  # one poisoned sample makes every mean NaN
    records = apply_bias_correction(fp32, q, layers, calib, threshold=THRESHOLD)
    assert not any(r["applied"] for r in records)
    for init in q.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            assert np.all(np.isfinite(numpy_helper.to_array(init)))


def test_implausible_shift_is_skipped():
    fp32, q, calib, _ = _setup("mlp")
    layers = find_bias_layers(fp32)
    means_in, means_out = _fp32_stats(fp32, layers, calib)
    means_out["fc2"] = means_out["fc2"] + 1000.0  # statistics that would move the bias far beyond itself
    original = _bias_values(q)
    records = apply_fast_bias_correction(q, layers, means_in, means_out, threshold=10.0)
    assert records[0]["applied"] and not records[1]["applied"]
    assert "implausible" in records[1]["reason"] and records[1]["max_abs_shift"] > 999
    assert np.array_equal(_bias_values(q)["b2"], original["b2"])


def test_judge_shift_zero_bias_and_zero_output():
    zero = np.zeros(3)
    assert judge_shift(np.zeros(3), zero, zero, 2.0) == (True, "")
    ok, reason = judge_shift(np.array([1.0, 0, 0]), zero, zero, 2.0)  # nothing to compare with: refuse
    assert not ok and "zero" in reason
    assert judge_shift(np.array([0.1, 0, 0]), zero, np.array([1.0, 2.0, 0.5]), 2.0)[0]
    assert not judge_shift(np.array([np.inf, 0, 0]), np.ones(3), None, 2.0)[0]


def test_fast_without_shapes_on_small_maps_needs_a_reference():
    """On an 8x8 map the unpadded synthetic patch misses the borders the statistics saw; the FP32 reference
    run on the same patch cancels that, so the error it leaves is far below the shapeless comparison's."""
    fp32, _, calib, held_out = _setup("upsample")
    for vi in list(fp32.graph.input) + list(fp32.graph.output):  # spatial size unknown to shape inference
        vi.type.tensor_type.shape.dim[2].dim_param, vi.type.tensor_type.shape.dim[3].dim_param = "H", "W"
    q = coarse_qdq(fp32, calib, weight_levels=7)
    layers = find_bias_layers(fp32)
    means_in, means_out = _fp32_stats(fp32, layers, calib)
    plain, with_ref = _copy(q), _copy(q)
    apply_fast_bias_correction(plain, layers, means_in, means_out, threshold=10.0)
    apply_fast_bias_correction(with_ref, layers, means_in, means_out, threshold=10.0, fp32_model=fp32)
    before = _mean_errors(fp32, q, layers, held_out)["conv"].mean()
    err_plain = _mean_errors(fp32, plain, layers, held_out)["conv"].mean()
    err_ref = _mean_errors(fp32, with_ref, layers, held_out)["conv"].mean()
    assert err_ref < 0.3 * before and err_ref < 0.3 * err_plain


def test_fp32_model_as_its_own_quantized_model_needs_no_shift():
    """Sanity of the FP32-reference mode: correcting an unquantized copy changes nothing."""
    fp32 = conv_classifier(seed=1)
    calib = random_inputs(8, (3, 16, 16), seed=3)
    layers = find_bias_layers(fp32)
    means_in, means_out = _fp32_stats(fp32, layers, calib)
    copy = _copy(fp32)
    records = apply_fast_bias_correction(copy, layers, means_in, means_out, threshold=THRESHOLD, fp32_model=fp32)
    assert all(r["applied"] and r["max_abs_shift"] < 1e-5 for r in records), records


def test_full_correction_on_hundreds_of_layers_is_fast():
    """200 linear layers with skip connections: one segment session per layer, every layer corrected, seconds."""
    import time

    fp32 = deep_mlp(depth=200)
    calib = random_inputs(8, (8,), seed=30)
    q = coarse_qdq(fp32, calib, weight_levels=31)
    layers = find_bias_layers(fp32)
    assert len(layers) == 200
    start = time.perf_counter()
    records = apply_bias_correction(fp32, q, layers, calib, threshold=1000.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, elapsed
    assert sum(r["applied"] for r in records) == 200, [r for r in records if not r["applied"]][:3]
    errors = _mean_errors(fp32, q, layers[-1:], calib)  # on the calibration data itself BC is near exact
    assert errors[layers[-1].name].max() < 1e-3


def test_constant_node_weights_and_biases():
    """Paddle-style exports hold weights and biases in Constant nodes: found, corrected in place, finite."""
    fp32, q, calib, held_out = _setup("mlp")
    for model in (fp32, q):
        for name in ("b1", "b2"):
            init = next(t for t in model.graph.initializer if t.name == name)
            model.graph.initializer.remove(init)
            model.graph.node.insert(0, helper.make_node("Constant", [], [name], name=f"const_{name}", value=init))
    layers = find_bias_layers(fp32)
    assert [layer.bias for layer in layers] == ["b1", "b2"]
    before = _mean_errors(fp32, q, layers, held_out)
    means_in, means_out = _fp32_stats(fp32, layers, calib)
    records = apply_fast_bias_correction(q, layers, means_in, means_out, threshold=10.0, fp32_model=fp32)
    assert all(r["applied"] for r in records), records
    after = _mean_errors(fp32, q, layers, held_out)
    assert all(after[k].mean() < 0.7 * before[k].mean() for k in before)
    const = {n.name: numpy_helper.to_array(n.attribute[0].t) for n in q.graph.node if n.op_type == "Constant"}
    assert not np.allclose(const["const_b1"], numpy_helper.to_array(next(
        n.attribute[0].t for n in fp32.graph.node if n.name == "const_b1")))


def test_fast_correction_of_linear_layers_whose_rank_shape_inference_loses():
    """MatMul + Add layers behind a Reshape with a computed shape (OCR/transformer sequence necks): the statistics
    pass still measures their per-channel means, FastBiasCorrection corrects them from those, and the quantize
    summary lists them."""
    fp32 = mlp_rank_lost(seed=3)
    calib, held_out = random_inputs(24, (5, 16), seed=10), random_inputs(24, (5, 16), seed=11)
    for s in calib + held_out:  # a non-zero input mean makes the weight error show in the output mean
        s["input"] += np.float32(0.5)
    layers = find_bias_layers(fp32)
    stats = collect_statistics(fp32, calib, QuantizationConfig(subset_size=len(calib)))
    expected_in, _ = _fp32_stats(fp32, layers, calib)
    for layer in layers:
        np.testing.assert_allclose(stats.means_in[layer.name], expected_in[layer.name], rtol=1e-4, atol=1e-5)
    q = coarse_qdq(fp32, calib, weight_levels=7)
    before = _mean_errors(fp32, q, layers, held_out)
    records = apply_fast_bias_correction(q, layers, stats.means_in, {}, threshold=10.0,
                                         fp32_model=fp32)
    assert all(r["applied"] for r in records), records
    after = _mean_errors(fp32, q, layers, held_out)
    assert all(after[k].mean() < 0.7 * before[k].mean() for k in before), (before, after)
    no_guard = QuantizationConfig(subset_size=24, advanced=AdvancedParameters(bias_correction_guard_samples=0))
    rows = {r["name"]: r for r in quantize_with_config(fp32, calib, no_guard).layers}
    assert rows["fc1"]["bias_corrected"] and rows["fc2"]["bias_corrected"], rows
