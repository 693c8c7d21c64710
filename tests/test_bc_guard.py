"""The bias correction guard: output error with and without correction, class-balanced decisions, revert."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import helper

from builders import conv_classifier, mask_and_class_heads, random_inputs
from ptqflow.quantization.algorithms import bc_guard, output_error
from ptqflow.quantization.algorithms.output_error import OutputError
from ptqflow.quantization.algorithms.bias_layers import find_bias_layers, read_bias, write_bias
from ptqflow.api import collect_statistics, quantize_with_summary
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.quantization.graph.prepare import prepare_model

TIE = AdvancedParameters().bias_correction_guard_tie_weight  # the default a run uses


def _shifted(model: onnx.ModelProto, layer_name: str, delta: float) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    layer = next(layer for layer in find_bias_layers(out) if layer.name == layer_name)
    write_bias(out, layer, read_bias(out, layer) + delta)
    return out


def test_decision_outputs_are_softmax_heads_through_shape_ops():
    model = mask_and_class_heads()
    assert bc_guard.decision_outputs(model) == {"probs"}
    model.graph.node.append(helper.make_node("Identity", ["probs"], ["probs_id"], name="id"))
    model.graph.output.append(helper.make_tensor_value_info("probs_id", onnx.TensorProto.FLOAT, None))
    assert bc_guard.decision_outputs(model) == {"probs", "probs_id"}


def test_class_balanced_disagreement_counts_flips_of_a_rare_class():
    """90 frames of class 0 and 10 of class 1; flipping the 10 rare frames is worse than flipping 10 common ones."""
    ref = np.zeros((100, 2), np.float32)
    ref[:90, 0], ref[90:, 1] = 1.0, 1.0
    rare_flipped, common_flipped = ref.copy(), ref.copy()
    rare_flipped[90:] = ref[90:, ::-1]
    common_flipped[:10] = ref[:10, ::-1]
    def error(out, decisions):
        return OutputError(["probs"], [[ref]], decisions, tie_weight=TIE)([[out]])

    rare, common = error(rare_flipped, {"probs"}), error(common_flipped, {"probs"})
    assert rare > 0.99 * 0.5 and common < 0.12, (rare, common)
    # the same arrays judged as a plain float output: only the squared error, the same for both
    assert error(rare_flipped, set()) == error(common_flipped, set())


def test_judge_keeps_a_correction_towards_fp32_and_rejects_one_away_from_it():
    fp32 = conv_classifier(seed=2)
    off = _shifted(fp32, "conv2", 0.3)
    samples = random_inputs(6, (3, 16, 16), seed=4)
    keep, before, after, lower, higher = bc_guard.judge(fp32, off, fp32, samples, tie_weight=TIE)
    assert keep and after < before and (lower, higher) == (6, 0)
    keep, before, after, lower, higher = bc_guard.judge(fp32, fp32, off, samples, tie_weight=TIE)
    assert not keep and after > before and (lower, higher) == (0, 6)


def test_a_correction_that_wins_the_total_on_one_sample_and_loses_most_is_reverted():
    """The total over the samples is carried by the one the model gets most wrong: a correction that mends that one
    and makes the other five worse lowers the total and is still reverted, with a reason that says so."""
    rng = np.random.default_rng(0)
    refs = [[rng.normal(0, 1, (1, 8)).astype(np.float32)] for _ in range(6)]
    noise = [0.1 * rng.normal(0, 1, (1, 8)).astype(np.float32) for _ in range(6)]
    uncorrected = [[r[0] + (20 if i == 0 else 1) * e] for i, (r, e) in enumerate(zip(refs, noise))]
    corrected = [[r[0] + (2 if i == 0 else 1.5) * e] for i, (r, e) in enumerate(zip(refs, noise))]
    error = output_error.OutputError(["y"], refs, set(), tie_weight=TIE)
    found = bc_guard.verdict(error, uncorrected, corrected)
    assert found.after < found.before and (found.lower, found.higher) == (1, 5) and not found.keep
    assert "raised the model's output error on 5 of 6 fitted calibration samples and lowered it on 1" in found.why(
        "6 fitted")
    # the same correction on all six alike (each sample's error a third lower) is kept
    mended = [[r[0] + (12 if i == 0 else 0.6) * e] for i, (r, e) in enumerate(zip(refs, noise))]
    assert bc_guard.verdict(error, uncorrected, mended).keep


def _offset_states(real: float, padded: float) -> onnx.ModelProto:
    """states[1, S, 4] = x + ``real`` at real tokens + ``padded`` at padded ones (attention_mask[1, S])."""
    from builders import make_model
    from onnx import TensorProto, numpy_helper

    inits = [numpy_helper.from_array(np.array([2], np.int64), "axis"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(real, np.float32), "real"),
             numpy_helper.from_array(np.array(padded, np.float32), "padded")]
    n = helper.make_node
    nodes = [n("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT), n("Unsqueeze", ["m", "axis"], ["m3"]),
             n("Sub", ["one", "m3"], ["p3"]), n("Mul", ["m3", "real"], ["r"]), n("Mul", ["p3", "padded"], ["p"]),
             n("Add", ["x", "r"], ["xr"]), n("Add", ["xr", "p"], ["states"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", 4]),
                              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "S"])],
                      [helper.make_tensor_value_info("states", TensorProto.FLOAT, [1, "S", 4])], inits)


def test_judge_sees_the_real_tokens_of_padded_samples_only(monkeypatch):
    """The correction halves the error at real tokens and puts a large one at padded positions, which nothing
    reads: kept. Judged on every position (no mask input known), it is reverted."""
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(0, 1, (1, 10, 4)).astype(np.float32),
                "attention_mask": (np.arange(10) < 4 + k).astype(np.int64)[None]} for k in range(4)]
    fp32, uncorrected, corrected = _offset_states(0, 0), _offset_states(0.2, 0), _offset_states(0.1, 5.0)
    keep, before, after, *_ = bc_guard.judge(fp32, uncorrected, corrected, samples, tie_weight=1e-3)
    assert keep and after < before
    monkeypatch.setattr(output_error, "MASK_INPUTS", ())
    assert not bc_guard.judge(fp32, uncorrected, corrected, samples, tie_weight=1e-3)[0]


def test_quantize_reverts_a_correction_that_raises_the_output_error(monkeypatch):
    """The guard's verdict decides: reverted means the uncorrected biases and a reason on every layer."""
    model, data = conv_classifier(seed=1), random_inputs(24, (3, 16, 16), seed=5)
    for s in data:
        s["input"] += np.float32(0.7)
    stats = collect_statistics(model, data, QuantizationConfig(subset_size=24))
    plain = quantize_with_summary(model, stats, QuantizationConfig(
        subset_size=24, advanced=AdvancedParameters(disable_bias_correction=True)))
    seen = {}

    def verdict(fp32, uncorrected, corrected, samples, device="cpu", *, tie_weight, fp32_outputs=None,
                uncorrected_outputs=None):
        seen["tie_weight"] = tie_weight
        seen["samples"] = len(samples)
        return bc_guard.Verdict(False, 1.0, 2.0)

    monkeypatch.setattr(bc_guard, "judge", verdict)
    result = quantize_with_summary(model, stats, QuantizationConfig(subset_size=24), dataset=data)
    assert seen["samples"] == 8  # no Softmax output: bias_correction_guard_samples_no_softmax (squared error alone)
    assert seen["tie_weight"] == TIE
    rows = [r for r in result.layers if r.get("bias_correction")]
    assert rows and all(not r["bias_correction"]["applied"] for r in rows)
    assert all("reverted: bias correction raised the model's output error on 8 fitted calibration samples (1 -> 2)"
               in r["bias_correction"]["reason"] for r in rows)
    for layer in find_bias_layers(prepare_model(model)[0]):
        np.testing.assert_array_equal(read_bias(result.model, layer), read_bias(plain.model, layer))


def test_quantize_keeps_a_correction_the_guard_accepts_and_guard_can_be_turned_off(monkeypatch):
    model, data = conv_classifier(seed=1), random_inputs(24, (3, 16, 16), seed=5)
    for s in data:
        s["input"] += np.float32(0.7)
    stats = collect_statistics(model, data, QuantizationConfig(subset_size=24))
    monkeypatch.setattr(bc_guard, "judge", lambda *a, **k: bc_guard.Verdict(True, 2.0, 1.0))
    kept = quantize_with_summary(model, stats, QuantizationConfig(subset_size=24), dataset=data)
    calls = []
    monkeypatch.setattr(bc_guard, "judge", lambda *a, **k: calls.append(1) or bc_guard.Verdict(False, 1.0, 2.0))
    unguarded = quantize_with_summary(model, stats, QuantizationConfig(
        subset_size=24, advanced=AdvancedParameters(bias_correction_guard_samples=0)), dataset=data)
    assert not calls
    for result in (kept, unguarded):
        applied = [r["bias_correction"]["applied"] for r in result.layers if r.get("bias_correction")]
        assert applied and any(applied)


def test_guard_samples_without_a_softmax_output_are_their_own_field(monkeypatch):
    model, data = conv_classifier(seed=1), random_inputs(24, (3, 16, 16), seed=5)
    stats = collect_statistics(model, data, QuantizationConfig(subset_size=24))
    seen = []
    monkeypatch.setattr(bc_guard, "judge", lambda fp32, u, c, samples, *a, **k: seen.append(len(samples)) or (
        bc_guard.Verdict(True, 1.0, 1.0)))
    quantize_with_summary(model, stats, QuantizationConfig(
        subset_size=24, advanced=AdvancedParameters(bias_correction_guard_samples_no_softmax=5)), dataset=data)
    assert seen == [5]
    quantize_with_summary(model, stats, QuantizationConfig(
        subset_size=24, advanced=AdvancedParameters(bias_correction_guard_samples_no_softmax=0)), dataset=data)
    assert seen == [5]  # 0: no guard for models judged by squared error alone


def test_declared_logits_are_judged_as_decisions(monkeypatch):
    """advanced.decision_outputs: a logits output with no Softmax in the graph is judged by its decisions (the
    guard then takes the decision outputs' sample count, 32, not squared error's 8); the INT8 model written
    carries no trace of the declaration; a name that is not an output is refused by the field's name."""
    from ptqflow.errors import ConfigError

    model, data = conv_classifier(seed=1), random_inputs(40, (3, 16, 16), seed=5)
    real, seen = bc_guard.judge, []

    def spy(fp32, uncorrected, corrected, samples, *a, **k):
        seen.append((len(samples), output_error.decision_outputs(fp32)))
        return real(fp32, uncorrected, corrected, samples, *a, **k)

    monkeypatch.setattr(bc_guard, "judge", spy)
    for declared, expected in ((None, (8, set())), (["logits"], (32, {"logits"}))):
        config = QuantizationConfig(subset_size=40, advanced=AdvancedParameters(decision_outputs=declared))
        result = quantize_with_summary(model, collect_statistics(model, data, config), config, dataset=data)
        assert seen[-1] == expected
        assert output_error.DECLARED_KEY not in {p.key for p in result.model.metadata_props}
    with pytest.raises(ConfigError, match=r"decision_outputs: 'logit' is not an output of the model"):
        collect_statistics(model, data, QuantizationConfig(advanced=AdvancedParameters(decision_outputs=["logit"])))


def test_logits_judged_as_decisions_are_softmaxed():
    """Moved mass between class distributions: a declared output's logits are softmaxed first (probabilities and
    log-probabilities are read as they are)."""
    logits = [[np.array([[5.0, 0.0, 0.0]], np.float32)]]
    flipped = [[np.array([[0.0, 5.0, 0.0]], np.float32)]]
    error = OutputError(["y"], logits, {"y"}, tie_weight=0.0, decisions_as="mass")
    p = np.exp([5.0, 0.0, 0.0]) / np.exp([5.0, 0.0, 0.0]).sum()
    assert error(flipped) == pytest.approx(1 + (p[0] - p[1]))  # one decision changed + the mass that moved
    probs = [[np.array([[0.7, 0.2, 0.1]], np.float32)]]
    assert OutputError(["y"], probs, {"y"}, tie_weight=0.0, decisions_as="mass")(
        [[np.array([[0.6, 0.3, 0.1]], np.float32)]]) == pytest.approx(0.1)


def test_a_reverted_fast_correction_falls_back_to_full_bias_correction_judged_the_same_way(monkeypatch):
    """FastBiasCorrection reverted by the guard: full BiasCorrection is fitted on the first calibration samples and
    judged on the ones after them, then on the fitted ones; kept, the model has full BiasCorrection's biases and the
    records say so. Reverted as well, the biases stay uncorrected and the fast records say both were tried.
    Switched off, the fast correction's verdict stands alone."""
    model, data = conv_classifier(seed=1), random_inputs(24, (3, 16, 16), seed=5)
    for s in data:
        s["input"] += np.float32(0.7)
    stats = collect_statistics(model, data, QuantizationConfig(subset_size=24))
    keeps, calls = [], []

    shared = []

    def verdict(fp32, uncorrected, corrected, samples, device="cpu", *, tie_weight, fp32_outputs=None,
                uncorrected_outputs=None):
        calls.append((len(samples), fp32_outputs is not None))
        shared.append(uncorrected_outputs)
        return bc_guard.Verdict(keeps.pop(0), 1.0, 2.0)

    monkeypatch.setattr(bc_guard, "judge", verdict)
    fallback = QuantizationConfig(subset_size=24, advanced=AdvancedParameters(bias_correction_fallback_samples=4))
    keeps[:] = [False, True, True]  # fast reverted; full kept on held-out samples, then on the fitted ones
    result = quantize_with_summary(model, stats, fallback, dataset=data)
    # full BiasCorrection fits on bias_correction_fallback_samples (4); the guard (8: no Softmax output) judges 4..11
    assert calls == [(8, True), (8, True), (4, True)], calls
    # the uncorrected model ran once on each sample: the fallback's fitted samples (0..3) are among the fast
    # correction's judged ones (0..7), and their outputs are the same arrays
    assert all(o is not None for o in shared)
    assert all(a is b for a, b in zip(shared[2], shared[0][:4]))
    records = [r["bias_correction"] for r in result.layers if r.get("bias_correction")]
    assert records and all(r["method"] == "bias_correction" for r in records) and any(r["applied"] for r in records)
    keeps[:] = [True, True]
    full = quantize_with_summary(model, stats, QuantizationConfig(subset_size=24, fast_bias_correction=False),
                                 dataset=data)
    for layer in find_bias_layers(prepare_model(model)[0]):
        np.testing.assert_array_equal(read_bias(result.model, layer), read_bias(full.model, layer))

    calls.clear()
    keeps[:] = [False, False]
    both = quantize_with_summary(model, stats, fallback, dataset=data)
    plain = quantize_with_summary(model, stats, QuantizationConfig(
        subset_size=24, advanced=AdvancedParameters(disable_bias_correction=True)))
    records = [r["bias_correction"] for r in both.layers if r.get("bias_correction")]
    assert all(r["method"] == "fast_bias_correction" and not r["applied"] for r in records)
    assert any("full BiasCorrection also raised" in r.get("fallback", "") for r in records)
    for layer in find_bias_layers(prepare_model(model)[0]):
        np.testing.assert_array_equal(read_bias(both.model, layer), read_bias(plain.model, layer))

    calls.clear()
    keeps[:] = [False]
    alone = quantize_with_summary(model, stats, QuantizationConfig(
        subset_size=24, advanced=AdvancedParameters(bias_correction_fallback=False)), dataset=data)
    assert len(calls) == 1 and not keeps
    assert all(not r["bias_correction"]["applied"] for r in alone.layers if r.get("bias_correction"))
