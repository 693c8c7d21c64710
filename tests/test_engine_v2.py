"""Engine v2 (commit d0784ca): the typed QuantizationPlan and its JSON, declared statistic points, Statistics by
observation and its saved format, the plan passes, and adding a statistic-consuming algorithm as a plan pass."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import onnx
import pytest

import builders as B
import ptqflow
import ptqflow.api
import ptqflow.quantization.engine
from ptqflow.config import AdvancedParameters, IgnoredScope, QuantizationConfig
from ptqflow.errors import InputError
from ptqflow.quantization.algorithms.quantizer_placement import build_plan
from ptqflow.quantization.graph.prepare import prepare_model
from ptqflow.quantization.passes.context import PlanContext, PlanPass
from ptqflow.quantization.passes.registry import plan_passes
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.plan import FloatTensor, QuantizationPlan, SmoothQuantFactors
from ptqflow.quantization.statistics import Statistics
from ptqflow.quantization.statistics import accumulate
from ptqflow.quantization.statistics.points import Reducer, StatisticPoint, observation_id, parse_observation
from ptqflow.runtime.sessions import make_session

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def collected() -> Statistics:
    return ptqflow.collect_statistics(B.conv_classifier(), B.random_inputs(8, SHAPE), QuantizationConfig())


def _json_trip(plan: QuantizationPlan) -> QuantizationPlan:
    return QuantizationPlan.from_json(json.loads(json.dumps(plan.to_json())))


def _fp32(model, names, samples):
    """Per sample, the FP32 values of the tensors ``names`` (graph inputs or intermediate tensors)."""
    prepared, _ = prepare_model(model)
    outputs = {o.name for o in prepared.graph.output}
    for n in names:
        if n not in outputs:
            prepared.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = make_session(prepared)
    inputs = {i.name for i in prepared.graph.input}
    return [{n: (s[n] if n in inputs else sess.run([n], s)[0]) for n in names} for s in samples]


# --- QuantizationPlan ------------------------------------------------------------------------------------------


def test_plan_from_a_real_collect_round_trips_through_json(collected):
    plan = collected.plan
    assert plan.weights and plan.activations, "the collect produced a non-trivial plan"
    assert plan.smooth_quant is None and "smooth_quant" not in plan.to_json()
    assert _json_trip(plan) == plan
    smoothed = replace(plan, smooth_quant=SmoothQuantFactors(0.5, {"r1": [1.0, 2.5]}))
    back = _json_trip(smoothed)
    assert back == smoothed and back != plan
    measured = replace(plan, smooth_quant=SmoothQuantFactors("auto", {"r1": {
        "scales": [1.0, 2.5], "nodes": ["fc"], "alpha": 0.8, "errors": {"0.5": 0.2, "0.8": 0.1}}}))
    assert _json_trip(measured) == measured  # the default, "auto", with its measured alphas
    assert back.version == 2
    assert all(type(e) is tuple for a in back.activations for e in a.edges)
    assert all(type(e) is tuple for w in back.weights for e in w.nodes)
    assert ("conv1", 0) in next(a for a in back.activations if a.tensor == "input").edges


def test_plan_version_1_reads_with_empty_by():
    _, plan = _placed(B.mask_and_class_heads(), advanced=AdvancedParameters(safeguard_softmax_heads=True))
    plan.keep_in_float([FloatTensor("r", "why", "some_pass")])
    doc = json.loads(json.dumps(plan.to_json()))
    doc["version"] = 1
    for f in doc["float_layers"] + doc["float_tensors"]:
        del f["by"]
    back = QuantizationPlan.from_json(doc)
    assert back.float_layers and back.float_tensors
    assert {f.by for f in back.float_layers + back.float_tensors} == {""}
    assert [f.node for f in back.float_layers] == [f.node for f in plan.float_layers]
    assert back.version == 2


@pytest.mark.parametrize("version", [3, 0, None, "2"])
def test_plan_unknown_version_is_refused(collected, version):
    doc = json.loads(json.dumps(collected.plan.to_json()))
    doc["version"] = version
    with pytest.raises(InputError, match=rf"version {version!r} is not one"):
        QuantizationPlan.from_json(doc)


@pytest.mark.parametrize("drop,needle", [(("preset",), "preset"), (("weights",), "weights"),
                                         (("activations", 0, "tensor"), "tensor")])
def test_plan_missing_field_is_an_input_error_naming_it(collected, drop, needle):
    doc = json.loads(json.dumps(collected.plan.to_json()))
    parent = doc
    for k in drop[:-1]:
        parent = parent[k]
    del parent[drop[-1]]
    with pytest.raises(InputError, match=needle):
        QuantizationPlan.from_json(doc)
    with pytest.raises(InputError, match="JSON object"):
        QuantizationPlan.from_json([doc])


def test_keep_in_float_drops_the_quantizer_and_records_the_pass(collected):
    plan = _json_trip(collected.plan)  # a copy
    before = {a.tensor for a in plan.activations}
    assert "r1" in before
    plan.keep_in_float([FloatTensor("r1", "too wide", "my_pass")])
    assert {a.tensor for a in plan.activations} == before - {"r1"}
    assert plan.float_tensors == [FloatTensor("r1", "too wide", "my_pass")]
    assert _json_trip(plan).float_tensors[0].by == "my_pass"


def _placed(model, **kw):
    prepared, _ = prepare_model(model)
    return prepared, build_plan(prepared, QuantizationConfig(**kw))


def test_placement_float_decisions_say_who_made_them():
    _, plan = _placed(B.conv_classifier(), ignored_scope=IgnoredScope(names=["conv2"]))
    by = {f.node: f.by for f in plan.float_layers}
    assert by == {"conv2": "ignored_scope"}
    _, plan = _placed(B.mask_and_class_heads(), advanced=AdvancedParameters(safeguard_softmax_heads=True))
    by = {f.node: f.by for f in plan.float_layers}
    assert by.get("fc") == "safeguard_softmax_heads"
    assert _json_trip(plan).float_layers == plan.float_layers


def test_outlier_pass_decision_carries_its_name():
    samples = B.random_inputs(8, SHAPE)
    samples[3]["input"] = samples[3]["input"] * 1e5  # beyond outlier_abs_max
    stats = ptqflow.collect_statistics(B.conv_classifier(), samples, QuantizationConfig())
    floats = {f.tensor: f for f in stats.plan.float_tensors}
    assert floats["input"].by == "safeguard_outliers"
    assert "input" not in {a.tensor for a in stats.plan.activations}
    off = QuantizationConfig(advanced=AdvancedParameters(safeguard_outliers=False))
    stats = ptqflow.collect_statistics(B.conv_classifier(), samples, off)
    assert "input" in {a.tensor for a in stats.plan.activations}


# --- StatisticPoint --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reducer,axis", [(Reducer.MIN, 1), (Reducer.MAX, 0), (Reducer.MEAN, None),
                                          (Reducer.ABSMAX, None), ("max", -1)])
def test_statistic_point_axis_must_fit_the_reducer(reducer, axis):
    with pytest.raises(ValueError, match="axis"):
        StatisticPoint("c", "k", "t", reducer, axis)


def test_statistic_point_valid_forms_and_json():
    for p in (StatisticPoint("c", "k", "t", "min"), StatisticPoint("c", "k", "t", Reducer.MEAN, 1),
              StatisticPoint("c", "k", "t", Reducer.ABSMAX, -1)):
        assert isinstance(p.reducer, Reducer)
        assert StatisticPoint.from_json(json.loads(json.dumps(p.to_json()))) == p


@pytest.mark.parametrize("tensor,reducer,axis", [("plain", Reducer.MIN, None),
                                                 ("scope:block/1:out:0", Reducer.ABSMAX, 1),
                                                 (":leading:colon", Reducer.MEAN, -1),
                                                 ("x::", Reducer.MAX, None)])
def test_observation_ids_round_trip(tensor, reducer, axis):
    p = StatisticPoint("c", "k", tensor, reducer, axis)
    assert p.observation == observation_id(tensor, reducer, axis)
    assert parse_observation(p.observation) == (tensor, reducer, axis)


def test_same_tensor_reducer_axis_is_one_observation():
    a = StatisticPoint("alg_a", "layer1", "t", Reducer.ABSMAX, 1)
    b = StatisticPoint("alg_b", "other", "t", Reducer.ABSMAX, 1)
    assert a.observation == b.observation
    assert a.observation != StatisticPoint("alg_a", "layer1", "t", Reducer.ABSMAX, 0).observation
    assert a.observation != StatisticPoint("alg_a", "layer1", "t", Reducer.MEAN, 1).observation
    assert a.observation != StatisticPoint("alg_a", "layer1", "u", Reducer.ABSMAX, 1).observation


# --- Statistics ------------------------------------------------------------------------------------------------


def _toy_statistics(plan) -> Statistics:
    pts = [StatisticPoint("a", "k1", "t:1", Reducer.MEAN, 1), StatisticPoint("a", "k2", "u", Reducer.ABSMAX, 0),
           StatisticPoint("b", "k1", "t:1", Reducer.MEAN, 1), StatisticPoint("b", "gone", "v", Reducer.MAX)]
    values = {pts[0].observation: np.array([1.0, 2.0]), pts[1].observation: np.array([3.0])}
    return Statistics(plan=plan, points=pts, values=values, num_samples=4)


def test_of_returns_only_that_consumers_keys(collected):
    s = _toy_statistics(collected.plan)
    assert set(s.of("a")) == {"k1", "k2"}
    np.testing.assert_array_equal(s.of("a")["k2"], [3.0])
    assert set(s.of("b")) == {"k1"}, "a point without an observed value is left out"
    assert s.of("b")["k1"] is s.of("a")["k1"], "one observation, read by both consumers"
    assert s.of("nobody") == {}
    assert set(collected.of("minmax")) == {a.tensor for a in collected.plan.activations}
    assert set(collected.of("fast_bias_correction")) == set(collected.plan.bias_layers)


def test_missing_names_the_points_not_collected(collected):
    assert collected.missing(collected.points) == []
    extra = StatisticPoint("new_alg", "input", "input", Reducer.ABSMAX, 1)
    other_axis = StatisticPoint("fast_bias_correction", "conv1", "input", Reducer.MEAN, 0)
    assert collected.missing(collected.points + [extra, other_axis]) == [extra, other_axis]


def test_save_load_keeps_points_and_values(collected, tmp_path):
    collected.save(tmp_path)
    back = Statistics.load(tmp_path)
    assert back.points == collected.points
    assert back.num_samples == collected.num_samples == 8
    assert set(back.values) == set(collected.values)
    for oid, v in collected.values.items():
        np.testing.assert_allclose(back.values[oid], v, rtol=0, atol=0)
    assert back.plan == collected.plan
    assert back.ranges() == collected.ranges()


def test_save_load_keeps_colon_tensor_names(collected, tmp_path):
    s = _toy_statistics(collected.plan)
    s.save(tmp_path)
    back = Statistics.load(tmp_path)
    assert back.points == s.points
    np.testing.assert_array_equal(back.of("a")["k1"], [1.0, 2.0])


def test_old_format_is_refused_with_collect_them_again(collected, tmp_path):
    collected.save(tmp_path)
    doc = json.loads((tmp_path / "plan.json").read_text())
    del doc["index"]["format"]
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"format 1.*collect them again"):
        Statistics.load(tmp_path)


# --- plan passes -----------------------------------------------------------------------------------------------


def test_plan_passes_in_order():
    assert [p.name for p in plan_passes()] == ["safeguard_outliers", "safeguard_depthwise", "sensitivity_search"]
    assert [p.name for p in plan_passes("quantize")] == ["mixed_precision", "range_search"]


@pytest.mark.parametrize("kw,on", [
    ({}, {"safeguard_outliers", "safeguard_depthwise"}),
    ({"safeguard_outliers": False}, {"safeguard_depthwise"}),
    ({"safeguard_depthwise": False}, {"safeguard_outliers"}),
    ({"auto_safeguards": False}, set()),
    ({"auto_safeguards": False, "safeguard_outliers": True}, {"safeguard_outliers"}),
    ({"auto_safeguards": False, "safeguard_depthwise": True}, {"safeguard_depthwise"}),
    ({"sensitivity_search": True}, {"safeguard_outliers", "safeguard_depthwise", "sensitivity_search"}),
    ({"sensitivity_search": True, "auto_safeguards": False}, set()),
])
def test_passes_follow_advanced_parameters(kw, on):
    adv = AdvancedParameters(**kw)
    assert {p.name for p in plan_passes() if p.enabled(adv)} == on


# --- a new statistic-consuming algorithm as a plan pass ------------------------------------------------------


class ChannelRangeProbe(PlanPass):
    """A test algorithm: declares the per-channel max |x| of the first Conv's input and keeps that tensor in float."""

    switch = None

    def __init__(self, name: str, reducer: Reducer = Reducer.ABSMAX):
        self.name = name
        self.order = 50
        self.reducer = reducer
        self.tensor = ""
        self.seen: dict = {}
        self.plan: QuantizationPlan | None = None

    def statistic_points(self, prepared, plan, config):
        self.tensor = next(n for n in prepared.graph.node if n.op_type == "Conv").input[0]
        return [StatisticPoint(self.name, "first_conv_input", self.tensor, self.reducer, 1)]

    def run(self, ctx: PlanContext) -> PassResult:
        self.seen = dict(ctx.statistics.of(self.name))
        self.plan = ctx.plan
        return self.keep_in_float(ctx, [(self.tensor, f"{self.name}: channel range probe")])


def _with_passes(monkeypatch, *extra):
    monkeypatch.setattr(ptqflow.quantization.engine, "plan_passes",
                        lambda stage="collect": plan_passes(stage) + (list(extra) if stage == "collect" else []))


def _quantize_linear_inputs(model):
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_new_algorithm_declares_statistics_and_decides(monkeypatch):
    # Static batch: every sample runs alone (stacked samples: test_absmax_is_the_per_sample_average_...).
    model, samples = B.conv_classifier(dynamic_batch=False), B.random_inputs(8, SHAPE, seed=5)
    config = QuantizationConfig(advanced=AdvancedParameters(safeguard_mixed_precision=False))  # the probe alone
    baseline = ptqflow.api.quantize_with_config(model, samples, config)
    assert "input" in _quantize_linear_inputs(baseline.model)

    probe = ChannelRangeProbe("channel_probe")
    _with_passes(monkeypatch, probe)
    result = ptqflow.api.quantize_with_config(model, samples, config)

    expected = np.mean([np.abs(s["input"]).max(axis=(0, 2, 3)) for s in samples], axis=0)
    assert set(probe.seen) == {"first_conv_input"}
    np.testing.assert_allclose(probe.seen["first_conv_input"], expected, rtol=1e-6)
    assert probe.plan.float_tensors == [FloatTensor("input", "channel_probe: channel range probe", "channel_probe")]
    rows = [r for r in result.layers if r["name"] == "input"]
    assert rows == [{"name": "input", "op_type": "tensor", "status": "float",
                     "reason": "channel_probe: channel range probe", "decided_by": "channel_probe"}]
    assert "input" not in _quantize_linear_inputs(result.model)
    assert _quantize_linear_inputs(result.model) == _quantize_linear_inputs(baseline.model) - {"input"}


def test_new_algorithm_point_on_an_intermediate_tensor_matches_onnxruntime(monkeypatch):
    """The declared point observes what onnxruntime computes on the FP32 model (r1: second Conv's input)."""

    class Second(ChannelRangeProbe):
        def statistic_points(self, prepared, plan, config):
            self.tensor = "r1"
            return [StatisticPoint(self.name, "r1", "r1", Reducer.ABSMAX, 1)]

    model, samples = B.conv_classifier(dynamic_batch=False), B.random_inputs(6, SHAPE, seed=2)
    probe = Second("second_probe")
    _with_passes(monkeypatch, probe)
    ptqflow.collect_statistics(model, samples, QuantizationConfig())
    fp32 = _fp32(model, ["r1"], samples)
    expected = np.mean([f["r1"].max(axis=(0, 2, 3)) for f in fp32], axis=0)  # r1 is after a Relu: |x| == x
    np.testing.assert_allclose(probe.seen["r1"], expected, rtol=1e-5)

def test_absmax_is_the_per_sample_average_when_samples_are_stacked(monkeypatch):
    """Stacked samples (dynamic batch) give the same ABSMAX as samples run one by one: the per-sample maximum,
    averaged over the samples, not the maximum over each stack."""
    model, samples = B.conv_classifier(), B.random_inputs(8, SHAPE, seed=5)  # dynamic batch: samples are stacked
    probe = ChannelRangeProbe("channel_probe")
    _with_passes(monkeypatch, probe)
    ptqflow.collect_statistics(model, samples, QuantizationConfig())
    expected = np.mean([np.abs(s["input"]).max(axis=(0, 2, 3)) for s in samples], axis=0)
    np.testing.assert_allclose(probe.seen["first_conv_input"], expected, rtol=1e-6)


def test_shared_observation_is_made_once(monkeypatch):
    """Two consumers of one (tensor, reducer, axis) — and FastBiasCorrection's own input mean — get one reduce
    output between them, and read the same value."""
    made = []
    real_augmented = accumulate.augmented

    @contextmanager
    def counting(model, observations, per_sample):
        with real_augmented(model, observations, per_sample) as out_map:
            made.append(out_map)
            yield out_map

    monkeypatch.setattr(accumulate, "augmented", counting)
    a, b = ChannelRangeProbe("probe_a"), ChannelRangeProbe("probe_b")
    c, d = ChannelRangeProbe("probe_c", Reducer.MEAN), ChannelRangeProbe("probe_d", Reducer.MEAN)
    _with_passes(monkeypatch, a, b, c, d)
    stats = ptqflow.collect_statistics(B.conv_classifier(), B.random_inputs(8, SHAPE), QuantizationConfig())

    assert len(made) == 1
    observed = list(made[0].values())
    assert len(observed) == len(set(observed)), "one reduce output per distinct observation"
    assert observed.count(observation_id("input", Reducer.ABSMAX, 1)) == 1
    assert observed.count(observation_id("input", Reducer.MEAN, 1)) == 1
    assert len({p.observation for p in stats.points}) == len(observed) < len(stats.points)
    np.testing.assert_array_equal(a.seen["first_conv_input"], b.seen["first_conv_input"])
    np.testing.assert_array_equal(c.seen["first_conv_input"], stats.means_in["conv1"])
    assert stats.of("probe_d")["first_conv_input"] is stats.of("fast_bias_correction")["conv1"]


def test_absmax_of_a_rank_2_tensor_over_stacked_samples_keeps_one_row_per_sample():
    """[N, C] with samples stacked: nothing is left to reduce but |x| itself (a Reduce with empty axes would
    reduce everything), and the accumulated value is still the per-sample |x| averaged over the samples."""
    from ptqflow.quantization.statistics.collector import augment

    model = prepare_model(B.mlp())[0]
    oid = observation_id("input", Reducer.ABSMAX, -1)
    aug, out_map = augment(model, [oid], per_sample=True)
    (out,) = out_map
    batch = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
    value = make_session(aug).run([out], {"input": batch})[0]
    np.testing.assert_allclose(value, np.abs(batch), rtol=1e-6)
    acc = accumulate.Accumulator(out_map)
    acc.add({out: value}, 4)
    np.testing.assert_allclose(acc.result()[oid], np.abs(batch).mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_tensor_observed_per_channel_is_reduced_twice_for_all_its_ranges(per_sample):
    """MIN, MAX and the channel max |x| (ABSMAX, PEAK) of one tensor come from one pair of per-channel
    reductions (two passes over the tensor, no Abs), on onnxruntime and on an OpenVINO model, with the values of
    reducing it once per observation; MEAN keeps its own reduction."""
    import openvino as ov

    from ptqflow.quantization.graph.openvino_view import build_view
    from ptqflow.quantization.statistics import openvino_collector
    from ptqflow.quantization.statistics.collector import augment
    from ptqflow.quantization.statistics.runner import OpenVINORunner

    model = prepare_model(B.conv_classifier(dynamic_batch=per_sample))[0]
    oids = {r: observation_id("input", r, None if r in (Reducer.MIN, Reducer.MAX) else 1) for r in Reducer}
    batch = np.random.default_rng(4).normal(size=(4 if per_sample else 1, 3, 16, 16)).astype(np.float32)
    per_channel = np.abs(batch).max(axis=(2, 3)) if per_sample else np.abs(batch).max(axis=(0, 2, 3))
    expected = {Reducer.MIN: batch.reshape(len(batch), -1).min(axis=1) if per_sample else batch.min(),
                Reducer.MAX: batch.reshape(len(batch), -1).max(axis=1) if per_sample else batch.max(),
                Reducer.ABSMAX: per_channel, Reducer.PEAK: per_channel,
                Reducer.MEAN: batch.mean(axis=(2, 3)) if per_sample else batch.mean(axis=(0, 2, 3))}
    aug, out_map = augment(model, list(oids.values()), per_sample=per_sample)
    added = aug.graph.node[len(model.graph.node):]
    assert sorted(n.op_type for n in added if "input" in n.input) == ["ReduceMax", "ReduceMean", "ReduceMin"]
    assert not any(n.op_type == "Abs" for n in added)
    outs = list(out_map)
    onnx_values = dict(zip(outs, make_session(aug).run(outs, {"input": batch})))

    ov_model = ov.Core().read_model(model.SerializeToString(), b"")
    ov_aug, ov_map = openvino_collector.augment(ov_model, build_view(ov_model).bind(ov_model), list(oids.values()),
                                                per_sample)
    ov_values, _ = next(OpenVINORunner(ov_aug, list(ov_map)).map([{"arrays": {"input": batch}, "count": 1}]))
    for got, names in ((onnx_values, out_map), (ov_values, ov_map)):
        by_oid = {names[o]: v for o, v in got.items()}
        for reducer, oid in oids.items():
            np.testing.assert_allclose(by_oid[oid], expected[reducer], rtol=1e-5, atol=1e-6, err_msg=oid)
        np.testing.assert_array_equal(by_oid[oids[Reducer.ABSMAX]], by_oid[oids[Reducer.PEAK]])


def test_a_layer_that_loses_one_input_quantizer_loses_the_others_too():
    """Kept in float, ``a`` takes the Add it feeds out of int8: ``b``'s edge into the Add goes (its Conv edge
    stays), and ``c``, which fed only the Add, goes as well, recorded with the same pass and why."""
    from ptqflow.quantization.plan import ActivationQuantizer

    plan = QuantizationPlan(preset="performance", target_device="ANY", transformer=False, per_channel=True,
                            activations=[ActivationQuantizer("a", [("add", 0)], True),
                                         ActivationQuantizer("b", [("add2", 1), ("conv", 0)], True),
                                         ActivationQuantizer("c", [("add", 1)], True),
                                         ActivationQuantizer("d", [("add2", 0)], True)])
    plan.keep_in_float([FloatTensor("a", "measured", "mixed_precision")])
    left = {p.tensor: [tuple(e) for e in p.edges] for p in plan.activations}
    assert left == {"b": [("add2", 1), ("conv", 0)], "d": [("add2", 0)]}
    cascaded = {f.tensor: f for f in plan.float_tensors}
    assert set(cascaded) == {"a", "c"} and cascaded["c"].by == "mixed_precision"
    assert "add runs in float" in cascaded["c"].reason and "its input a" in cascaded["c"].reason
    plan.keep_in_float([FloatTensor("d", "measured", "accuracy_control")])
    assert {p.tensor: [tuple(e) for e in p.edges] for p in plan.activations} == {"b": [("conv", 0)]}
