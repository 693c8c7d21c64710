"""Error-driven mixed precision (passes/mixed_precision.py, algorithms/error_search.py) and the output error it
measures with (algorithms/output_error.py); the bias-correction guard on held-out samples (bias_step)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders
from ptqflow.api import quantize_with_config
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.quantization.algorithms.output_error import OutputError, channel_axis, token_masks
from ptqflow.quantization.plan import MEASURED_KEYS, QuantizationPlan
from ptqflow.runtime.sessions import run_each
from test_accuracy_control import inputs, outlier_mlp

NO_SEARCH = AdvancedParameters(safeguard_mixed_precision=False, auto_safeguards=False)
SEARCH_ONLY = AdvancedParameters(auto_safeguards=False, safeguard_mixed_precision=True)


def _detector_head(n: int = 4, boxes: int = 50, classes: int = 3, seed: int = 0) -> np.ndarray:
    """[n, boxes, 4 + classes]: box coordinates in pixels (0-640), class scores in [0, 1]."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0, 640, (n, boxes, 4)), rng.uniform(0, 1, (n, boxes, classes))],
                          axis=-1).astype(np.float32)


def test_per_channel_error_sees_broken_scores_next_to_pixel_boxes():
    ref = _detector_head()
    broken_scores = ref.copy()
    broken_scores[..., 4:] = 1.0 - broken_scores[..., 4:]  # every class decision inverted
    shaky_boxes = ref.copy()
    shaky_boxes[..., :4] += np.random.default_rng(1).normal(0, 2.0, shaky_boxes[..., :4].shape)  # 2 px jitter
    error = OutputError(["out"], [[ref]], set(), tie_weight=1e-3)

    def global_rse(out):
        return float(np.sum((out - ref) ** 2) / np.sum(ref.astype(np.float64) ** 2))

    assert global_rse(broken_scores) < global_rse(shaky_boxes)  # the global error hides the broken scores
    assert error([[broken_scores]]) > 100 * error([[shaky_boxes]])
    assert channel_axis(ref.shape) == 2 and channel_axis((1, 3, 8, 8)) == 1 and channel_axis((5,)) is None


def test_decision_outputs_are_judged_by_their_argmax():
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]][None]  # [1, 6 frames, 4 classes]
    flipped = ref.copy()
    flipped[0, 0] = [0.4, 0.6, 0, 0]  # one frame's decision changes
    close = ref * 0.9 + 0.025  # every value moves, no decision does
    error = OutputError(["probs"], [[ref]], {"probs"}, tie_weight=1e-3)
    assert error([[close]]) < 1e-3 < error([[flipped]])
    assert error.per_output([[ref]]) == pytest.approx([0.0])


def _padded_states(n: int = 6, seq: int = 12, hidden: int = 8, seed: int = 0):
    """(samples with an attention_mask, FP32 states [1, seq, hidden]): sample i has 3 + i real tokens."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.5, 10, hidden)  # hidden channels of very different spreads
    samples, states = [], []
    for i in range(n):
        mask = np.zeros((1, seq), np.int64)
        mask[0, :3 + i] = 1
        samples.append({"input_ids": rng.integers(1, 50, (1, seq)), "attention_mask": mask})
        states.append((rng.normal(0, 1, (1, seq, hidden)) * scales).astype(np.float32))
    return samples, states


def test_padded_positions_are_not_judged_when_the_samples_carry_an_attention_mask():
    """A transformer's states at padded positions are computed but read by nothing: an error there alone is no
    error; the same error on one real token is; and the pooled output ([1, hidden]) is judged whole."""
    samples, states = _padded_states()
    masks = token_masks(samples)
    pooled = [s.mean(1) for s in states]
    refs = [[s, p] for s, p in zip(states, pooled)]
    error = OutputError(["hidden", "pooled"], refs, set(), tie_weight=0.0, masks=masks)
    blind = OutputError(["hidden", "pooled"], refs, set(), tie_weight=0.0)
    at_padding = [[s.copy(), p] for s, p in zip(states, pooled)]
    at_token = [[s.copy(), p] for s, p in zip(states, pooled)]
    for i, (pad, tok) in enumerate(zip(at_padding, at_token)):
        pad[0][0, 3 + i:] += 5.0  # every padded position wrong
        tok[0][0, 0] += 5.0  # the first real token wrong
    assert error.per_output(at_padding)[0] == 0.0 and blind.per_output(at_padding)[0] > 0.1
    assert error.per_output(at_token)[0] > 0.1
    moved = [[s, p + 1.0] for s, p in zip(states, pooled)]
    assert error.per_output(moved)[1] == pytest.approx(blind.per_output(moved)[1]) and error.per_output(moved)[1] > 0
    # each real token is a row, normalized per hidden channel: a narrow channel off by its spread counts as much
    # as a wide one off by its own
    real = np.concatenate([st[0][m[0]] for st, m in zip(states, masks)])
    spread = real.std(0)
    narrow, wide = int(np.argmin(spread)), int(np.argmax(spread))
    assert spread[wide] > 10 * spread[narrow]
    errors = []
    for k in (narrow, wide):
        shifted = [[s.copy(), p] for s, p in zip(states, pooled)]
        for st in shifted:
            st[0][..., k] += spread[k]
        errors.append(error.per_output(shifted)[0])
    assert errors[0] == pytest.approx(errors[1], rel=1e-6)
    # masks that are not 0/1, not [batch, sequence], or have no real token are no masks
    assert token_masks([{"attention_mask": np.array([[0, 2]])}, {"attention_mask": np.ones(3, np.int64)},
                        {"input_mask": np.zeros((1, 4), np.int64)}, {"input_ids": np.ones((1, 4))}]) == [None] * 4
    assert token_masks([{"input_mask": np.array([[1, 0]])}])[0].tolist() == [[True, False]]


def test_search_keeps_the_quantizer_that_carries_the_error_in_float_and_records_it():
    """h0's outlier channel owns its per-tensor scale: quantizing h0 rounds the useful channels to zero."""
    model, data = outlier_mlp(1), inputs(32, 0)
    plain = quantize_with_config(model, data, QuantizationConfig(advanced=NO_SEARCH))
    searched = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY))
    decisions = searched.plan.float_tensors
    assert [d.tensor for d in decisions] == ["h0"] and decisions[0].by == "mixed_precision"
    m = decisions[0].measured
    assert set(m) == set(MEASURED_KEYS) and m["output"] == "logits" and m["samples"] == 8
    assert m["gain"] == pytest.approx(m["error_int8"] - m["error_float"]) and m["gain"] > 0.5 * m["error_int8"]
    row = next(r for r in searched.layers if r["name"] == "h0")
    assert row["status"] == "float" and row["decided_by"] == "mixed_precision" and row["measured"] == m
    assert row["output_error"] == pytest.approx(m["gain"])
    # the measurement holds on samples it was not taken on: the INT8 model is closer to FP32
    held_out = inputs(64, 7)
    error = OutputError(["logits"], run_each(model, held_out), set(), tie_weight=1e-3)
    assert error(run_each(searched.model, held_out)) < 0.5 * error(run_each(plain.model, held_out))
    # and the plan carries the decision with its measurement through JSON
    again = QuantizationPlan.from_json(searched.plan.to_json())
    assert again.float_tensors[0].measured == m and again.output_errors == searched.plan.output_errors


def test_search_stops_at_its_budget_and_target():
    model, data = outlier_mlp(2), inputs(32, 0)
    one = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY.model_copy(
        update={"mixed_precision_max_float_share": 0.0})))  # at least one quantizer may always go float
    assert len(one.plan.float_tensors) == 1
    reached = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY.model_copy(
        update={"mixed_precision_target_error": 1e9})))  # the error is already below the target
    assert reached.plan.float_tensors == [] and reached.plan.output_errors == {}
    tiny = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY.model_copy(
        update={"mixed_precision_max_evals": 2})))  # all int8 and weights only: nothing left to search with
    assert tiny.plan.float_tensors == []


def test_search_finds_a_spread_depthwise_input_without_the_depthwise_threshold():
    from test_engine_safeguards import _dw_softmax_model, _spread_inputs

    model, samples = _dw_softmax_model(), _spread_inputs(8, [1.0, 0.05, 0.05, 0.05])
    result = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(
        safeguard_depthwise=False, mixed_precision_weights=False, per_channel_depthwise_inputs=False)))
    rows = {r["name"]: r for r in result.layers}
    assert rows["input"]["decided_by"] == "mixed_precision" and rows["input"]["measured"]["output"] == "prob"
    # with the weights measured too (the head's among them) the spread input still goes float: by itself, or
    # with the depthwise layer when that layer's weights are found to carry more (its only consumer)
    both = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(
        safeguard_depthwise=False, per_channel_depthwise_inputs=False)))
    rows = {r["name"]: r for r in both.layers}
    found = rows["input"] if rows["dwconv"].get("decided_by") != "mixed_precision" else rows["dwconv"]
    assert found["decided_by"] == "mixed_precision" and found["measured"]["output"] == "prob"
    assert all(p.tensor != "input" for p in both.plan.activations)


def test_bias_correction_guard_judges_on_held_out_samples():
    model, data = builders.conv_classifier(seed=1), builders.random_inputs(24, (3, 16, 16), seed=5)
    config = QuantizationConfig(subset_size=24, fast_bias_correction=False, advanced=NO_SEARCH.model_copy(
        update={"bias_correction_subset_size": 8, "bias_correction_threshold": 1e9}))
    result = quantize_with_config(model, data, config)
    verdicts = [r["bias_correction"] for r in result.layers if r.get("bias_correction", {}).get("error_before")]
    assert verdicts, "the guard judged"
    # fitted on samples 0-7, judged on the 8 that follow (no Softmax output: bias_correction_guard_samples_no_softmax)
    assert all(v["held_out"] == 8 and v["error_after"] >= 0 and v["error_before"] >= 0 for v in verdicts)
    fast = quantize_with_config(model, data, QuantizationConfig(subset_size=24, advanced=NO_SEARCH.model_copy(
        update={"bias_correction_threshold": 1e9})))
    judged = [r["bias_correction"] for r in fast.layers if "held_out" in r.get("bias_correction", {})]
    assert judged and all(v["held_out"] == 0 for v in judged)  # FastBiasCorrection's means cover every sample


def test_the_searched_model_is_a_valid_onnx_model():
    model, data = outlier_mlp(2), inputs(16, 0)
    result = quantize_with_config(model, data, QuantizationConfig())
    onnx.checker.check_model(result.model)
    assert run_each(result.model, data[:2])[0][0].shape == (1, 5)


def test_search_takes_a_layer_float_when_its_weights_carry_the_error():
    """padded_input_mlp: fc1's weight scales are set by a row that only ever meets zeros, so its int8 weights lose
    the useful ones; no activation quantizer carries that error, the weight quantizer does."""
    model, data = builders.padded_input_mlp(), builders.padded_inputs(32)
    activations_only = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY.model_copy(
        update={"mixed_precision_weights": False})))
    searched = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY))
    assert activations_only.plan.float_layers == []
    decisions = [f for f in searched.plan.float_layers if f.by == "mixed_precision"]
    assert len(decisions) == 1 and searched.plan.float_tensors == []
    layer, m = decisions[0].node, decisions[0].measured
    assert set(m) == set(MEASURED_KEYS) and m["samples"] == 8 and m["gain"] > 0.9 * m["error_int8"]
    # the layer is float: its weight quantizer and the activation edges into it are gone from the plan and the model
    assert all(e[0] != layer for w in searched.plan.weights for e in w.nodes)
    assert all(e[0] != layer for a in searched.plan.activations for e in a.edges)
    fc1 = next(n for n in searched.model.graph.node if n.name == layer)
    producers = {o: n.op_type for n in searched.model.graph.node for o in n.output}
    assert "DequantizeLinear" not in [producers.get(i) for i in fc1.input]
    row = next(r for r in searched.layers if r["name"] == layer)
    assert row["status"] == "float" and row["decided_by"] == "mixed_precision" and row["measured"] == m
    assert "'w1'" in row["reason"]
    held_out = builders.padded_inputs(64, seed=9)
    error = OutputError(["output"], run_each(model, held_out), set(), tie_weight=0.0)
    assert error(run_each(searched.model, held_out)) < 0.1 * error(run_each(activations_only.model, held_out))
    again = QuantizationPlan.from_json(searched.plan.to_json())
    assert again.float_layers[0].measured == m


def test_weights_stay_out_of_the_search_for_a_model_over_2gb(monkeypatch, caplog):
    from ptqflow.runtime import model_files

    monkeypatch.setattr(model_files, "PROTO_LIMIT", 1024)  # the tiny model counts as large
    model, data = builders.padded_input_mlp(), builders.padded_inputs(32)
    with caplog.at_level("INFO"):
        result = quantize_with_config(model, data, QuantizationConfig(advanced=SEARCH_ONLY))
    assert result.plan.float_layers == []
    assert "weights left out of the search: the model is over 2 GB" in caplog.text


def test_search_on_shared_fp32_outputs_decides_as_on_its_own_session():
    """The engine hands the search the FP32 outputs the bias-correction guard took (runtime.sessions.OutputCache):
    the same measurements and decisions as the search's own FP32 session."""
    from ptqflow.api import collect_statistics
    from ptqflow.quantization.algorithms import error_search
    from ptqflow.quantization.engine import prepare_for
    from ptqflow.quantization.statistics.runner import make_runner
    from ptqflow.runtime.sessions import OutputCache, make_session

    model, data = outlier_mlp(1), inputs(32, 0)
    config = QuantizationConfig(advanced=SEARCH_ONLY)
    stats = collect_statistics(model, data, config)
    prepared = prepare_for(model, stats, config)
    cache = OutputCache(prepared)
    cache(data[:8])  # the guard's samples, taken first

    def run(**kw):
        return error_search.search(prepared, stats.plan, stats.ranges(False), data[:8], make_session,
                                   lambda m, outs: make_runner(m, outs, "cpu", "auto", make_session), max_float=2,
                                   min_share=0.1, target=1e-3, max_evals=16, held_out=data[8:16], weights=True, **kw)

    own, shared = run(), run(references=cache)
    assert [m.as_dict() for m in shared.float_tensors] == [m.as_dict() for m in own.float_tensors] != []
    assert shared.contributions == own.contributions and shared.error_final == own.error_final


class _Additive:
    """A stand-in for the gated model's evaluator (error_search._Evaluator's interface) whose error is known:
    ``floor`` plus each quantizer's ``gains`` unless it is float; ``extra(off)`` adds what depends on others."""

    def __init__(self, gains: np.ndarray, floor: float = 0.01, extra=lambda off: 0.0):
        self.gains, self.floor, self.extra = gains, floor, extra
        self.count, self.cost, self.samples = 0.0, 1.0, 8
        self.metric = type("Metric", (), {"names": ["out"]})()

    def __call__(self, off) -> np.ndarray:
        self.count += self.cost
        on = np.ones(len(self.gains), bool)
        on[list(off)] = False
        return np.array([self.floor + float(self.gains[on].sum()) + self.extra(set(off))])


def _search_loop(ev, n: int, **bounds):
    from ptqflow.quantization.algorithms import error_search

    from ptqflow.quantization.plan import ActivationQuantizer

    plan = QuantizationPlan(preset="performance", target_device="ANY", transformer=False, per_channel=True,
                            activations=[ActivationQuantizer(f"t{k}", [(f"layer{k}", 0)], True) for k in range(n)])
    result = error_search.SearchResult()
    error_search._run(ev, ev, None, plan, [f"t{k}" for k in range(n)], True, result,
                      **{"max_float": 8, "min_share": 0.1, "target": 1e-3, "max_evals": 200, **bounds})
    return result


def test_group_test_keeps_its_measured_blocks_from_one_pick_to_the_next(monkeypatch):
    """Three quantizers carry the error among 64: the picks after the first start from the blocks measured for
    it (lazy greedy), the same picks for fewer evaluations than a group test from the first-level blocks each
    time."""
    from ptqflow.quantization.algorithms import error_search

    gains = np.zeros(64)
    gains[[5, 40, 41]] = [0.5, 0.3, 0.2]
    kept = _search_loop(_Additive(gains), 64)
    assert [m.tensor for m in kept.float_tensors] == ["t5", "t40", "t41"]
    assert kept.stopped == "no quantizer left that carries enough of the error"
    best = error_search._best

    def afresh(ev, off, base, active, spent, result, tensors, frontier):
        frontier.clear()
        return best(ev, off, base, active, spent, result, tensors, frontier)

    monkeypatch.setattr(error_search, "_best", afresh)
    every_time = _search_loop(_Additive(gains), 64)
    assert [m.tensor for m in every_time.float_tensors] == ["t5", "t40", "t41"]
    assert kept.evaluations < 0.7 * every_time.evaluations


def test_group_test_starts_afresh_before_it_stops_when_an_error_was_masked():
    """t60's error shows only once t5 is float (a large error upstream that saturates the output hides it): the
    blocks kept from the first pick rank t60's block at nothing, so the search measures from the first-level
    blocks again before it stops, and finds it."""
    gains = np.zeros(64)
    gains[[5, 40]] = [0.5, 0.3]
    ev = _Additive(gains, extra=lambda off: 0.2 if 5 in off and 60 not in off else 0.0)
    result = _search_loop(ev, 64)
    assert [m.tensor for m in result.float_tensors] == ["t5", "t40", "t60"]
    assert result.error_final == pytest.approx(0.01)


def test_a_pick_is_measured_with_what_goes_float_with_it():
    """An activation kept float takes its layers float (QuantizationPlan.keep_in_float), so the search measures a
    pick with the other quantizers that feed only those layers: ``a`` goes with ``b`` (both feed only the Add),
    ``c`` also feeds a Conv and stays; a weight takes the inputs that feed only its layers."""
    from ptqflow.quantization.algorithms.error_search import layer_inputs
    from ptqflow.quantization.plan import ActivationQuantizer, WeightQuantizer

    plan = QuantizationPlan(preset="performance", target_device="ANY", transformer=False, per_channel=True,
                            activations=[ActivationQuantizer("a", [("add", 0)], True),
                                         ActivationQuantizer("b", [("add", 1)], True),
                                         ActivationQuantizer("c", [("add2", 0), ("conv", 0)], True),
                                         ActivationQuantizer("d", [("add2", 1)], True)],
                            weights=[WeightQuantizer("w", 0, [("conv", 1)], "Conv", 8)])
    assert layer_inputs(plan, weights=False) == {0: {1}, 1: {0}, 2: {3}, 3: set()}
    assert layer_inputs(plan)[4] == set()  # c also feeds add2: it stays with the Conv's weight float


class _CountingRunner:
    """The gated model's runner interface (statistics.runner): each sample's output is its input scaled by the
    mean gate, so every gate setting gives other outputs; counts the samples it ran."""

    def __init__(self):
        self.ran = 0

    def map(self, batches):
        from ptqflow.quantization.algorithms.sensitivity import GATE

        for batch in batches:
            self.ran += 1
            arrays = batch["arrays"]
            gate = arrays[GATE]
            yield {"out": arrays["x"] * (1.0 + float(gate.mean()))}, batch["count"]


def test_a_gate_setting_measured_once_is_not_run_again():
    """The screening half of a setting the full evaluator ran, and a setting the screening measured before the
    full evaluator asks for it, come from the outputs held (error_search._Outputs): only the samples not yet run
    for that setting run and count, and the errors are the ones a fresh run gives."""
    from ptqflow.quantization.algorithms import error_search

    rng = np.random.default_rng(0)
    runs = [{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(8)]
    refs = [[r["x"] * 1.5] for r in runs]

    def evaluators():
        runner = _CountingRunner()
        screen = error_search._Evaluator(runner, runs[:4], OutputError(["out"], refs[:4], set(), tie_weight=0.0), 6,
                                         cost=0.5)
        full = error_search._Evaluator(runner, runs, OutputError(["out"], refs, set(), tie_weight=0.0), 6,
                                       outputs=screen.outputs)
        return runner, screen, full

    runner, screen, full = evaluators()
    base = full({1})
    assert runner.ran == 8 and full.count == 1.0
    again = screen({1})  # the screening half of what the full evaluator just ran
    assert runner.ran == 8 and screen.count == 0.0
    picked = screen({1, 4})
    assert runner.ran == 12 and screen.count == 0.5
    measured = full({1, 4})  # the pick measured on every sample: the screening's four are not run again
    assert runner.ran == 16 and full.count == 1.5
    fresh_runner, fresh_screen, fresh_full = evaluators()
    np.testing.assert_array_equal(again, fresh_screen({1}))
    np.testing.assert_array_equal(picked, fresh_screen({1, 4}))
    np.testing.assert_array_equal(measured, fresh_full({1, 4}))
    np.testing.assert_array_equal(base, fresh_full({1}))
    assert fresh_runner.ran == 4 + 4 + 4 + 4  # {1} and {1, 4} on the screening half, then the other half each


def test_search_reusing_outputs_decides_as_one_that_runs_every_evaluation(monkeypatch):
    """The outputs held change what the search runs, not what it measures or decides."""
    from ptqflow.api import collect_statistics
    from ptqflow.quantization.algorithms import error_search
    from ptqflow.quantization.engine import prepare_for
    from ptqflow.quantization.statistics.runner import make_runner
    from ptqflow.runtime.sessions import make_session

    model, data = outlier_mlp(1), inputs(32, 0)
    config = QuantizationConfig(advanced=SEARCH_ONLY)
    stats = collect_statistics(model, data, config)
    prepared = prepare_for(model, stats, config)

    def run():
        return error_search.search(prepared, stats.plan, stats.ranges(False), data[:8], make_session,
                                   lambda m, outs: make_runner(m, outs, "cpu", "onnxruntime", make_session),
                                   max_float=2, min_share=0.1, target=1e-3, max_evals=16, held_out=data[8:16],
                                   weights=True)

    reused = run()
    monkeypatch.setattr(error_search._Outputs, "KEEP", 0)  # nothing held: every evaluation runs
    every = run()
    assert [m.as_dict() for m in reused.float_tensors] == [m.as_dict() for m in every.float_tensors] != []
    assert reused.contributions == every.contributions and reused.error_final == every.error_final
    assert reused.evaluations < every.evaluations
