"""quantize_with_accuracy_control (ptqflow.accuracy_control): NNCF's quantization with a metric budget.

The models are small MLPs with an outlier channel: one hidden layer's output has a channel a thousand times larger
than the others, which the next layer ignores (its weight row is zero). A per-tensor quantizer on that tensor
spends its range on the outlier and rounds the other channels to zero, so that one quantizer is clearly harmful;
the automatic safeguards are off so that the outlier safeguard does not keep it in float first. The metric is the
share of validation samples whose top-1 class is the FP32 model's (the FP32 model scores 1).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
import ptqflow
from ptqflow import AdvancedAccuracyRestorerParameters, DropType
from ptqflow.config import AdvancedParameters
from ptqflow.errors import ConfigError, InputError
from ptqflow.quantization.advanced_parameters import RestoreMode

FEATURES = 16
NO_SAFEGUARDS = AdvancedParameters(auto_safeguards=False)


def outlier_mlp(outliers: int = 1, seed: int = 0, hidden: int = 32, classes: int = 5) -> onnx.ModelProto:
    """input[N,16] -> ``outliers`` + 1 MatMul + Add layers -> logits[N,classes]. Hidden output ``h{i}`` has channel 0
    a thousand times larger than the rest, and the next layer's weight row 0 is zero, so that channel changes
    nothing but the range of ``h{i}``."""
    rng = np.random.default_rng(seed)
    dims = [FEATURES] + [hidden] * outliers + [classes]
    inits, nodes, x = [], [], "input"
    for i in range(len(dims) - 1):
        w = rng.normal(0, 1 / np.sqrt(dims[i]), (dims[i], dims[i + 1])).astype(np.float32)
        if i > 0:
            w[0, :] = 0.0
        if i < outliers:
            w[:, 0] *= 1000.0
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, dims[i + 1]).astype(np.float32), f"b{i}")]
        y = "logits" if i == len(dims) - 2 else f"h{i}"
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [y], name=f"bias{i}")]
        x = y
    return builders.make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
                               [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits,
                               name="outlier_mlp")


def inputs(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(0, 1, (1, FEATURES)).astype(np.float32)} for _ in range(n)]


def agreement(fp32: onnx.ModelProto, items: list[dict], *, scale: float = 1.0, optimize: bool = True, calls=None):
    """validation_fn: ``scale`` x the share of ``items`` whose top-1 class is the FP32 model's. ``optimize=False``
    runs onnxruntime with basic optimizations only (no DequantizeLinear -> MatMulNBits fusion, which quantizes a
    float input of an int8-weight MatMul at run time)."""
    def run(model, data):
        opts = ort.SessionOptions()
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return [s.run(None, d)[0].argmax(-1) for d in data]

    ref = run(fp32, items)

    def validate(model: onnx.ModelProto, data) -> float:
        if calls is not None:
            calls.append(model)
        return scale * float(np.mean([np.array_equal(p, r) for p, r in zip(run(model, data), ref)]))

    return validate


def quantized_tensors(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def reads_int8_weight(model: onnx.ModelProto, activation: str) -> bool:
    """Whether the layer reading ``activation`` also reads a DequantizeLinear of an initializer (an int8 weight)."""
    inits = {t.name for t in model.graph.initializer}
    dq_of_init = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    layer = next(n for n in model.graph.node if activation in n.input)
    return any(i in dq_of_init for i in layer.input)


def test_within_max_drop_nothing_is_reverted():
    model, val, calls = builders.mlp(), inputs(64, 1), []
    result = ptqflow.quantize_with_accuracy_control_result(model, inputs(32, 0), val,
                                                           agreement(model, val, calls=calls), max_drop=0.1)
    assert result.met and result.steps == [] and result.ranking == [] and result.reverted == []
    assert result.fp32_metric == 1.0 and result.metric == result.int8_metric >= 0.9
    assert result.drop == pytest.approx(1.0 - result.int8_metric)
    assert len(calls) == 2  # FP32 and INT8, nothing else
    # the model ptqflow.quantize gives (its mixed precision search included): nothing reverted on top
    assert quantized_tensors(result.model) == quantized_tensors(ptqflow.quantize(model, inputs(32, 0))) != set()


def test_harmful_quantizer_reverted_first_with_its_layer(tmp_path, caplog):
    model, val = outlier_mlp(1), inputs(64, 1)
    params = AdvancedAccuracyRestorerParameters(intermediate_model_dir=str(tmp_path / "intermediate"))
    with caplog.at_level(logging.INFO, logger="ptqflow"):
        result = ptqflow.quantize_with_accuracy_control_result(
            model, inputs(32, 0), val, agreement(model, val), max_drop=0.05,
            advanced_quantization_parameters=NO_SAFEGUARDS, advanced_accuracy_restorer_parameters=params)
    assert result.int8_metric < 0.8  # the outlier quantizer costs many top-1 decisions
    assert result.ranking[0][0] == "h0" and result.ranking[0][1] > 10 * result.ranking[1][1]
    assert [s.tensor for s in result.steps] == ["h0"] and result.steps[0].kept
    assert result.met and result.drop <= 0.05 and result.metric == result.steps[0].metric
    assert quantized_tensors(result.model) == {"input"}
    assert not reads_int8_weight(result.model, "h0")  # ACTIVATIONS_AND_WEIGHTS: the layer it fed is float
    decided = {row["name"]: row.get("decided_by") for row in result.layers if row["status"] == "float"}
    assert decided["h0"] == "accuracy_control" and decided[result.steps[0].layers[0]] == "accuracy_control"
    assert "step 1, reverted h0" in caplog.text
    saved = onnx.load(str(tmp_path / "intermediate" / "intermediate_model.onnx"))
    assert "h0" in quantized_tensors(saved)  # the fully quantized model, as NNCF saves it


def test_only_activations_keeps_the_layer_weights_int8():
    model, val = outlier_mlp(1), inputs(64, 1)
    result = ptqflow.quantize_with_accuracy_control_result(
        model, inputs(32, 0), val, agreement(model, val, optimize=False), max_drop=0.05,
        advanced_quantization_parameters=NO_SAFEGUARDS,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            restore_mode=RestoreMode.ONLY_ACTIVATIONS))
    assert [s.tensor for s in result.steps] == ["h0"] and result.steps[0].layers == [] and result.met
    assert quantized_tensors(result.model) == {"input"} and reads_int8_weight(result.model, "h0")


def test_relative_drop_is_relative_to_fp32():
    model, val = outlier_mlp(1), inputs(64, 1)
    validate = agreement(model, val, scale=100.0)  # a metric in percent: FP32 scores 100
    one_shot = (item for item in val)  # a generator is read once and handed to validation_fn as a list
    relative = ptqflow.quantize_with_accuracy_control_result(
        model, inputs(32, 0), one_shot, validate, max_drop=0.6, drop_type=DropType.RELATIVE,
        advanced_quantization_parameters=NO_SAFEGUARDS)
    assert relative.fp32_metric == 100.0 and 40.0 < relative.int8_metric < 80.0
    assert relative.drop == pytest.approx((100.0 - relative.int8_metric) / 100.0)
    assert relative.met and relative.steps == []  # a relative drop of 0.2-0.6 is within 0.6
    # The same budget as an absolute drop is 0.6 points of a 100-point metric: the outlier quantizer must go.
    absolute = ptqflow.quantize_with_accuracy_control_result(
        model, inputs(32, 0), val, validate, max_drop=0.6, drop_type="absolute",
        advanced_quantization_parameters=NO_SAFEGUARDS)
    assert absolute.int8_metric == relative.int8_metric and absolute.steps[0].tensor == "h0"
    assert absolute.steps[0].drop == pytest.approx(100.0 - absolute.steps[0].metric)


def test_max_num_iterations_bounds_the_work_and_failure_is_reported(caplog):
    model, val, calls = outlier_mlp(2), inputs(64, 1), []
    with caplog.at_level(logging.WARNING, logger="ptqflow"):
        result = ptqflow.quantize_with_accuracy_control_result(
            model, inputs(32, 0), val, agreement(model, val, calls=calls), max_drop=0.02,
            advanced_quantization_parameters=NO_SAFEGUARDS,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=1))
    first, second = [t for t, _ in result.ranking[:2]]
    assert {first, second} == {"h0", "h1"}  # the two outlier quantizers, far ahead of the rest
    assert result.ranking[1][1] > max(h for _, h in result.ranking[2:])
    assert len(result.steps) == 1 and len(calls) == 3  # FP32, INT8, one revert
    assert result.steps[0].tensor == first
    assert not result.met and result.drop > 0.02 and result.metric > result.int8_metric
    assert quantized_tensors(result.model) == {"input", second}
    assert "could not meet max_drop 0.02" in caplog.text and "iteration budget reached (reverts tried: 1)" in caplog.text
    # Without the bound, both outlier quantizers go (then whatever else the metric still needs).
    full = ptqflow.quantize_with_accuracy_control_result(model, inputs(32, 0), val, agreement(model, val),
                                                         max_drop=0.02, advanced_quantization_parameters=NO_SAFEGUARDS)
    assert full.met and {s.tensor for s in full.steps[:2]} == {"h0", "h1"}


def test_returns_the_model_as_nncf_does():
    model, val = outlier_mlp(1), inputs(16, 1)
    q = ptqflow.quantize_with_accuracy_control(model, inputs(16, 0), val, agreement(model, val), max_drop=1.0)
    assert isinstance(q, onnx.ModelProto) and "input" in quantized_tensors(q)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_drop": -0.1}, ConfigError, r"max_drop must be a number >= 0.*-0\.1"),
    ({"max_drop": "1%"}, ConfigError, r"max_drop must be a number"),
    ({"drop_type": "sideways"}, ConfigError, r"drop_type 'sideways' is not one of 'absolute', 'relative'"),
    ({"validation_fn": 0.5}, ConfigError, r"validation_fn must be a function"),
    ({"advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(tune_hyperparams=True)},
     ConfigError, r"tune_hyperparams=True is not supported"),
    ({"advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(max_num_iterations=-1)},
     ConfigError, r"max_num_iterations must be an integer >= 0"),
    ({"advanced_accuracy_restorer_parameters": AdvancedAccuracyRestorerParameters(ranking_subset_size=0)},
     ConfigError, r"ranking_subset_size must be an integer >= 1"),
    ({"advanced_accuracy_restorer_parameters": {"restore_mode": "weights_only"}},
     ConfigError, r"restore_mode 'weights_only' is not one of"),
    ({"validation_fn": lambda model, data: "high"}, InputError,
     r"validation_fn returned 'high' \(str\) for the FP32 model; it must return a number"),
    ({"validation_fn": lambda model, data: math.nan}, InputError, r"validation_fn returned nan .*finite"),
    ({"validation_fn": lambda model, data: 0.0, "drop_type": DropType.RELATIVE}, InputError,
     r"relative drop is undefined when the FP32 metric is 0"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    model, val = outlier_mlp(1), inputs(8, 1)
    args = {"validation_fn": lambda model, data: 1.0, **kwargs}
    with pytest.raises(error, match=match):
        ptqflow.quantize_with_accuracy_control_result(model, inputs(8, 0), val, **args)


def test_validation_fn_may_return_nncf_tuple():
    model, val = outlier_mlp(1), inputs(16, 1)
    validate = agreement(model, val)
    result = ptqflow.quantize_with_accuracy_control_result(
        model, inputs(16, 0), val, lambda m, d: (validate(m, d), None), max_drop=1.0)
    assert result.met and result.fp32_metric == 1.0


def test_ranking_screens_on_the_worst_samples_then_measures_its_head_on_all():
    """Past SCREEN_SAMPLES samples the ranking measures every quantizer on the samples the INT8 model gets most
    wrong, then its head (at most max_num_iterations) again on all: the head's harm is the one a full leave-one-out
    measures, and every quantizer is ranked once."""
    from ptqflow import accuracy_control as ac
    from ptqflow.api import _stream_for
    from ptqflow.config import QuantizationConfig
    from ptqflow.quantization import engine

    model, calib, val = outlier_mlp(2), inputs(32, 0), inputs(24, 1)
    config = QuantizationConfig(subset_size=32, advanced=NO_SAFEGUARDS)
    col = engine.collect(model, _stream_for(ptqflow.Dataset(calib)), config, "cpu", engine.samples_needed(config))
    assert len(val) > ac.SCREEN_SAMPLES
    full = ac._rank(col.prepared, col.statistics, config.advanced, val, "cpu", reverts=10**6)
    staged = ac._rank(col.prepared, col.statistics, config.advanced, val, "cpu", reverts=1)
    assert sorted(t for t, _ in staged) == sorted(t for t, _ in full) and len(full) == len(col.statistics.plan.activations)
    assert staged[0] == pytest.approx(full[0]) and staged[0][0] in ("h0", "h1")
    assert staged[1][1] != pytest.approx(dict(full)[staged[1][0]])  # the rest carry the screening's harm


def flat_metric(model: onnx.ModelProto, needed: int, calls: list | None = None):
    """validation_fn of a metric that moves only when ``needed`` activation quantizers of ``model``'s INT8 model
    are in float together (as detection F1 over a few pages or exact match over a few lines, where one quantizer
    rarely changes a decision): 1.0 then, else 0.5."""
    quantized = len(quantized_tensors(ptqflow.quantize(model, inputs_of(32, 0), advanced_parameters=NO_SAFEGUARDS)))

    def validate(candidate: onnx.ModelProto, data) -> float:
        if calls is not None:
            calls.append(len(quantized_tensors(candidate)))
        return 1.0 if len(quantized_tensors(candidate)) <= quantized - needed else 0.5

    return validate, quantized


def inputs_of(n: int, seed: int, width: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(0, 1, (1, width)).astype(np.float32)} for _ in range(n)]


def test_a_flat_metric_takes_reverts_together_then_bisects_to_the_fewest():
    """No single revert moves the metric: the next ranked quantizers go together, twice as many after each revert
    that did not lower the drop (1, 2, 4, ...), and the revert that meets max_drop is bisected to the fewest of its
    quantizers, in rank order, that still meet it (one fewer was measured and did not)."""
    model, calls = builders.deep_mlp(depth=12), []
    validate, quantized = flat_metric(model, needed=8, calls=calls)
    result = ptqflow.quantize_with_accuracy_control_result(
        model, inputs_of(32, 0), inputs_of(16, 1), validate, max_drop=0.01, advanced_quantization_parameters=NO_SAFEGUARDS)
    assert result.int8_metric == 0.5 and result.met and result.metric == 1.0 and result.drop == 0.0
    sizes = [sum(s.iteration == i for s in result.steps) for i in range(1, result.iterations + 1)]
    assert len(calls) == 2 + result.iterations  # FP32, INT8, then one validation per revert
    met_at = next(i for i, left in enumerate(calls[2:]) if left <= quantized - 8)  # the first revert that met it
    assert sizes[:met_at + 1] == [2 ** i for i in range(met_at + 1)] and met_at >= 3
    kept = len(result.reverted)
    assert [s.tensor for s in result.reverted] == [t for t, _ in result.ranking[:kept]]  # a prefix of the ranking
    assert 2 ** (met_at - 1) < kept <= 2 ** met_at and len(quantized_tensors(result.model)) <= quantized - 8
    one_fewer = [i for i, size in enumerate(sizes) if size == kept - 1]
    assert one_fewer and all(calls[2 + i] > quantized - 8 for i in one_fewer)  # measured, and it did not meet
    assert all(s.iteration == result.reverted[0].iteration for s in result.reverted)  # one revert, not the larger


def test_reverts_together_stop_at_the_iteration_budget_or_the_end_of_the_ranking(caplog):
    model = builders.deep_mlp(depth=12)
    validate, quantized = flat_metric(model, needed=8)
    short = ptqflow.quantize_with_accuracy_control_result(
        model, inputs_of(32, 0), inputs_of(16, 1), validate, max_drop=0.01, advanced_quantization_parameters=NO_SAFEGUARDS,
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=3))
    assert not short.met and short.iterations == 3 and short.reverted == [] and short.metric == 0.5
    assert short.stopped == "iteration budget reached (reverts tried: 3)"
    assert len(quantized_tensors(short.model)) == quantized  # the INT8 model: no revert lowered the drop

    def float_weights_only(candidate: onnx.ModelProto, data) -> float:  # reverting activations cannot reach it
        return 0.5 if any(n.op_type == "DequantizeLinear" for n in candidate.graph.node) else 1.0

    with caplog.at_level(logging.WARNING, logger="ptqflow"):
        every = ptqflow.quantize_with_accuracy_control_result(
            model, inputs_of(32, 0), inputs_of(16, 1), float_weights_only, max_drop=0.01,
            advanced_quantization_parameters=NO_SAFEGUARDS, advanced_accuracy_restorer_parameters=
            AdvancedAccuracyRestorerParameters(restore_mode=RestoreMode.ONLY_ACTIVATIONS))
    sizes = [sum(s.iteration == i for s in every.steps) for i in range(1, every.iterations + 1)]
    doubling = [2 ** i for i in range(quantized.bit_length()) if 2 ** i < quantized]
    assert len(every.ranking) == quantized and sizes == doubling + [quantized]  # the last takes all of them
    assert not every.met and every.stopped == "every activation quantizer tried" and every.reverted == []
    assert "every activation quantizer tried" in caplog.text


def test_a_drop_of_exactly_max_drop_is_met_despite_floating_point():
    """FP32 0.97 and INT8 0.96 with max_drop 0.01 is met at once: 0.97 - 0.96 is 0.010000000000000009 in floating
    point, which must not start reverting quantizers (PP-OCR rec's bench split did, 32 reverts)."""
    model, val, calls = builders.mlp(), inputs(16, 1), []

    def validate(m: onnx.ModelProto, data) -> float:
        calls.append(m)
        return 0.97 if len(calls) == 1 else 0.96  # FP32 first, then every INT8 model

    assert 0.97 - 0.96 > 0.01
    result = ptqflow.quantize_with_accuracy_control_result(model, inputs(32, 0), val, validate, max_drop=0.01)
    assert result.met and result.reverted == [] and len(calls) == 2
    missed = ptqflow.quantize_with_accuracy_control_result(model, inputs(32, 0), val,
                                                           lambda m, d: 0.97 if m is model else 0.9599,
                                                           max_drop=0.01, advanced_accuracy_restorer_parameters=(
                                                               AdvancedAccuracyRestorerParameters(max_num_iterations=1)))
    assert not missed.met


def test_harm_is_the_error_a_quantizer_adds_alone():
    """A quantizer's harm is the output error of the model with it alone int8 (every other activation in float,
    the weights quantized) above that error with none: leave one in, which errors that cancel each other do not
    hide (leave one out ranks a quantizer that offsets another's error below harmless ones, negative)."""
    from ptqflow import accuracy_control as ac
    from ptqflow.api import _stream_for
    from ptqflow.config import QuantizationConfig
    from ptqflow.quantization import engine
    from ptqflow.quantization.algorithms import sensitivity
    from ptqflow.quantization.algorithms.output_error import OutputError, decision_outputs
    from ptqflow.runtime.sessions import make_session

    model, calib, val = outlier_mlp(2), inputs(32, 0), inputs(6, 1)
    config = QuantizationConfig(subset_size=32, advanced=NO_SAFEGUARDS)
    col = engine.collect(model, _stream_for(ptqflow.Dataset(calib)), config, "cpu", engine.samples_needed(config))
    ranked = dict(ac._rank(col.prepared, col.statistics, config.advanced, val, "cpu", reverts=10))
    gated, tensors = sensitivity.gated_model(col.prepared, col.statistics.plan,
                                             col.statistics.ranges(config.advanced.mean_minmax))
    session, fp32 = make_session(gated), make_session(col.prepared)
    refs = [fp32.run(None, s) for s in val]
    error = OutputError(["logits"], refs, decision_outputs(col.prepared), tie_weight=0.0, decisions_as="mass")

    def err(gate):
        return error([session.run(None, {**s, sensitivity.GATE: gate}) for s in val])

    floor = err(np.zeros(len(tensors), np.float32))
    for k, t in enumerate(tensors):
        gate = np.zeros(len(tensors), np.float32)
        gate[k] = 1.0
        assert ranked[t] == pytest.approx(err(gate) - floor, rel=1e-4, abs=1e-9)
    assert set(ranked) == set(tensors) and len(tensors) > 2
