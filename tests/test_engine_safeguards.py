"""Automatic safeguards: what they keep in float, and that they can be switched off."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

import builders as B
import ptqflow
from ptqflow.api import quantize_with_config
from ptqflow.config import AdvancedParameters, QuantizationConfig


def _dw_softmax_model():
    """input[N,4,8,8] (signed) -> depthwise Conv -> Relu -> Conv -> Relu -> Conv -> Softmax (channels) -> prob."""
    rng = np.random.default_rng(0)
    inits = [B._init("dw", rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)),
             B._init("pw", rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32)),
             B._init("hw", rng.normal(0, 0.5, (3, 4, 1, 1)).astype(np.float32))]
    n = helper.make_node
    nodes = [n("Conv", ["input", "dw"], ["d"], name="dwconv", group=4, pads=[1, 1, 1, 1]),
             n("Relu", ["d"], ["r"], name="relu"),
             n("Conv", ["r", "pw"], ["p"], name="pwconv"),
             n("Relu", ["p"], ["pr"], name="relu2"),
             n("Conv", ["pr", "hw"], ["logit"], name="head"),
             n("Softmax", ["logit"], ["prob"], name="softmax", axis=1)]
    return B.make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 8, 8])],
                        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3, 8, 8])], inits)


def _spread_inputs(n: int, channel_scale) -> list[dict]:
    """Random signed inputs whose channels span ranges scaled by ``channel_scale``."""
    scale = np.asarray(channel_scale, np.float32).reshape(1, -1, 1, 1)
    return [{"input": s["input"] * scale} for s in B.random_inputs(n, (4, 8, 8))]


def test_safeguards_keep_sensitive_places_float_and_report_them():
    model, samples = _dw_softmax_model(), _spread_inputs(6, [1.0, 0.05, 0.05, 0.05])
    result = quantize_with_config(model, samples, QuantizationConfig(  # the rules, asked for by name; the
        advanced=AdvancedParameters(safeguard_softmax_heads=True, per_channel_depthwise_inputs=False)))  # one scale
    rows = {r["name"]: r for r in result.layers}
    assert rows["head"]["status"] == "float" and "Softmax" in rows["head"]["reason"]
    assert rows["input"]["status"] == "float" and "depthwise" in rows["input"]["reason"]
    assert rows["pwconv"]["status"] == "quantized"
    off = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(auto_safeguards=False)))
    rows_off = {r["name"]: r for r in off.layers}
    assert rows_off["head"]["status"] == "quantized" and "input" not in rows_off


def test_depthwise_input_with_even_channels_is_quantized():
    """The depthwise safeguard looks at the channel spread: evenly ranged channels lose little, stay INT8."""
    result = quantize_with_config(_dw_softmax_model(), _spread_inputs(6, [1.0, 0.8, 1.2, 0.9]), QuantizationConfig(
        advanced=AdvancedParameters(safeguard_mixed_precision=False)))  # the threshold alone
    rows = {r["name"]: r for r in result.layers}
    assert "input" not in rows
    assert "input" in rows["dwconv"]["quantized_inputs"]


def test_sensitivity_search_runs_and_keeps_model_valid():
    model, samples = B.conv_classifier(), B.random_inputs(10, (3, 16, 16))
    cfg = QuantizationConfig(advanced=AdvancedParameters(sensitivity_search=True))
    result = quantize_with_config(model, samples, cfg)
    assert any(r["status"] == "quantized" for r in result.layers)
    ptqflow.runtime.sessions.make_session(result.model).run(None, samples[0])


def test_safeguard_thresholds_come_from_the_config():
    """The depthwise spread and the outlier limits are AdvancedParameters fields, read by the safeguards."""
    model, samples = _dw_softmax_model(), _spread_inputs(6, [1.0, 0.05, 0.05, 0.05])
    loose = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(
        depthwise_channel_spread=0.01, safeguard_mixed_precision=False, per_channel_depthwise_inputs=False)))
    assert "input" not in {r["name"] for r in loose.layers}  # median channel at 0.05 of the range: above 0.01
    tight = quantize_with_config(_dw_softmax_model(), _spread_inputs(6, [1.0, 0.8, 1.2, 0.9]), QuantizationConfig(
        advanced=AdvancedParameters(depthwise_channel_spread=0.99, per_channel_depthwise_inputs=False)))
    assert {r["name"]: r for r in tight.layers}["input"]["status"] == "float"
    small = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(outlier_abs_max=1e-3)))
    reasons = [r["reason"] for r in small.layers if r["op_type"] == "tensor"]
    assert any("extreme activation range" in why for why in reasons), reasons


def _floats(result) -> dict[str, str]:
    """Name -> reason of the summary rows kept in float."""
    return {r["name"]: r["reason"] for r in result.layers if r["status"] == "float"}


def test_each_safeguard_has_its_own_switch_defaulting_to_auto_safeguards():
    for auto in (True, False):
        adv = AdvancedParameters(auto_safeguards=auto)
        assert all(adv.safeguard(name) is auto for name in ("outliers", "depthwise", "detected_transformer",
                                                             "mixed_precision"))
        # the Softmax-head rule stands in only where mixed precision, which measures the head, does not run
        assert not adv.safeguard("softmax_heads")
        ruled = AdvancedParameters(auto_safeguards=auto, safeguard_mixed_precision=False)
        assert ruled.safeguard("softmax_heads") is auto
        assert AdvancedParameters(auto_safeguards=auto, safeguard_softmax_heads=True).safeguard("softmax_heads")
        assert AdvancedParameters(auto_safeguards=auto, safeguard_depthwise=not auto).safeguard("depthwise") is not auto
    # the sensitivity search keeps its own switch, which needs auto_safeguards
    assert not AdvancedParameters().safeguard("sensitivity")
    assert AdvancedParameters(sensitivity_search=True).safeguard("sensitivity")
    assert not AdvancedParameters(sensitivity_search=True, auto_safeguards=False).safeguard("sensitivity")
    with pytest.raises(ValueError, match="unknown safeguard"):
        AdvancedParameters().safeguard("outlier")


def test_depthwise_and_softmax_head_switches_turn_their_safeguard_off_or_on():
    model, samples = _dw_softmax_model(), _spread_inputs(6, [1.0, 0.05, 0.05, 0.05])

    def run(**adv):  # the thresholded safeguards alone, without the measured search, one scale per tensor
        return _floats(quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(
            safeguard_mixed_precision=False, per_channel_depthwise_inputs=False, **adv))))

    no_dw = run(safeguard_depthwise=False)
    assert "input" not in no_dw and "Softmax" in no_dw["head"]
    no_head = run(safeguard_softmax_heads=False)
    assert "head" not in no_head and "depthwise" in no_head["input"]
    only_dw = run(auto_safeguards=False, safeguard_depthwise=True)
    assert "depthwise" in only_dw["input"] and "head" not in only_dw
    only_head = run(auto_safeguards=False, safeguard_softmax_heads=True)
    assert "Softmax" in only_head["head"] and "input" not in only_head


def test_outlier_switch_turns_its_safeguard_off_or_on():
    model, samples = _dw_softmax_model(), _spread_inputs(6, [1.0, 0.05, 0.05, 0.05])

    def reasons(**adv):
        cfg = QuantizationConfig(advanced=AdvancedParameters(outlier_abs_max=1e-3, **adv))
        return [r["reason"] for r in quantize_with_config(model, samples, cfg).layers if r["op_type"] == "tensor"]

    assert any("extreme activation range" in why for why in reasons())
    assert not any("extreme activation range" in why for why in reasons(safeguard_outliers=False))
    on = reasons(auto_safeguards=False, safeguard_outliers=True)
    assert any("extreme activation range" in why for why in on), on


def test_detected_transformer_switch():
    from ptqflow.quantization.algorithms import quantizer_placement as placement
    from ptqflow.quantization.graph.prepare import prepare_model

    prepared, _ = prepare_model(B.tiny_encoder())

    def plan(**adv):
        cfg = QuantizationConfig(advanced=AdvancedParameters(**adv))
        return placement.build_plan(prepared, cfg), placement.transformer_nodes(prepared, cfg)

    (default, region), (off, off_region) = plan(), plan(safeguard_detected_transformer=False)
    assert default.transformer is True and region
    assert off.transformer is False and not off_region
    assert not any("auto_safeguard" in w for w in off.warnings)
    on, on_region = plan(auto_safeguards=False, safeguard_detected_transformer=True)
    assert on.transformer is True and on_region == region
    assert on.activations == default.activations
    # a declared transformer is not a detected one: the switch leaves it alone
    declared = placement.build_plan(prepared, QuantizationConfig(
        model_type="transformer", advanced=AdvancedParameters(safeguard_detected_transformer=False)))
    assert declared.transformer is True


def _linear_softmax(w: np.ndarray, gain: float = 1.0):
    """input[N,16] -> MatMul(v) -> h -> MatMul(w) -> Softmax -> prob: a layer and a classifier head; v is the
    identity with its channel 0 scaled by ``gain``."""
    v = np.eye(16, dtype=np.float32)
    v[0, 0] = gain
    n = helper.make_node
    return B.make_model([n("MatMul", ["input", "v"], ["h"], name="layer"),
                         n("MatMul", ["h", "w"], ["logit"], name="head"),
                         n("Softmax", ["logit"], ["prob"], name="softmax", axis=-1)],
                        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4])],
                        [B._init("v", v), B._init("w", w)])


def test_a_softmax_head_is_measured_by_default_not_kept_float_by_rule():
    """By default the head's quantizers are candidates of mixed precision like any other: int8 where they do not
    change the decisions, float where they do (judged by the argmax); the rule keeps it float only where the
    measurement is switched off."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 4)).astype(np.float32)
    w[0] = 0.0  # channel 0 never reaches the logits
    # rows near one class's weight column: clear margins that int8 rounding does not flip
    samples = [{"input": (2.0 * w[:, rng.integers(0, 4, 4)].T + rng.normal(0, 0.3, (4, 16))).astype(np.float32)}
               for _ in range(24)]
    for s in samples:
        s["input"][:, 0] = rng.choice([-2.0, 2.0], size=4)
    rows = {r["name"]: r for r in quantize_with_config(_linear_softmax(w), samples, QuantizationConfig()).layers}
    assert rows["head"]["status"] == "quantized" and rows["head"]["quantized_inputs"] == ["h"]
    ruled = {r["name"]: r for r in quantize_with_config(_linear_softmax(w), samples, QuantizationConfig(
        advanced=AdvancedParameters(safeguard_mixed_precision=False))).layers}
    assert ruled["head"]["status"] == "float" and "Softmax" in ruled["head"]["reason"]
    assert ruled["layer"]["status"] == "quantized"

    # The layer scales channel 0 to +-10000, which owns h's per-tensor scale (79 per code): the channels that decide
    # the class round to zero, the decisions are lost, and the measurement keeps h float (and only h).
    result = quantize_with_config(_linear_softmax(w, gain=5000.0), samples, QuantizationConfig())
    floats = _floats(result)
    assert set(floats) == {"h"} and "mixed precision" in floats["h"] and "'prob'" in floats["h"], floats
    rows = {r["name"]: r for r in result.layers}
    assert rows["layer"]["quantized_inputs"] == ["input"] and rows["head"]["weight"]["bits"] == 8


def test_without_samples_to_measure_on_the_softmax_head_rule_stands_in():
    """quantize from collected statistics with no dataset: mixed precision cannot measure, so the rule it stands in
    for keeps the head float, and says why; with the samples the head is measured (int8 on clean data). The
    statistics are the caller's: quantizing from them again, in either order, gives the same models."""
    from ptqflow.api import collect_statistics, quantize_with_summary

    data = B.random_inputs(10, (3, 8, 8), seed=2)
    model = B.mask_and_class_heads()
    stats = collect_statistics(model, data, QuantizationConfig(subset_size=10))
    config = QuantizationConfig(subset_size=10)
    measured = quantize_with_summary(model, stats, config, dataset=data)
    ruled = quantize_with_summary(model, stats, config)
    again = quantize_with_summary(model, stats, config, dataset=data)
    assert "fc" not in _floats(measured)
    fc = {r["name"]: r for r in ruled.layers}["fc"]
    assert fc["decided_by"] == "safeguard_softmax_heads" and "had no samples" in fc["reason"]
    assert again.model.SerializeToString() == measured.model.SerializeToString()
    assert not stats.plan.float_layers  # the caller's plan is as collect-stats made it


def _channel_qdq(model: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, int | None]:
    """The scale initializer and the axis of ``tensor``'s QuantizeLinear in ``model``."""
    inits = {t.name: t for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    axis = next((a.i for a in q.attribute if a.name == "axis"), None)
    return numpy_helper.to_array(inits[q.input[1]]), axis


def test_a_depthwise_input_gets_a_scale_per_channel_by_default():
    """By default (per_channel_depthwise_inputs) the spread depthwise input the safeguard keeps in float is int8 with a
    scale per channel: each channel's scale from its own largest |x|, the largest channel's at the tensor's scale,
    the small ones about 20x finer; its error is far below one scale's and the safeguard stands down. Switched off,
    and for onnxruntime's placement (whose fused int8 Conv takes one scale) even when asked, it is one scale."""
    model, samples = _dw_softmax_model(), _spread_inputs(8, [1.0, 0.05, 0.05, 0.05])
    held_out = _spread_inputs(8, [1.0, 0.05, 0.05, 0.05])[4:]

    def run(**kw):
        adv = {"safeguard_mixed_precision": False, "safeguard_depthwise": False, **kw.pop("adv", {})}
        return quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(**adv), **kw))

    channels = run()
    scale, axis = _channel_qdq(channels.model, "input")
    assert axis == 1 and scale.shape == (4,) and scale[0] > 10 * scale[1:].max()
    point = next(p for p in channels.plan.activations if p.tensor == "input")
    assert point.axis == 1 and len(point.channel_absmax) == 4
    assert scale[0] == pytest.approx(min(point.channel_absmax[0] / 127, scale.max()))
    one = run(adv={"per_channel_depthwise_inputs": False})
    one_scale, one_axis = _channel_qdq(one.model, "input")
    assert one_axis is None and one_scale.shape == () and scale.max() <= one_scale

    def error(result):  # the depthwise layer's small channels against FP32, relative, on held-out samples
        ref = ptqflow.runtime.sessions.make_session(_with_output(model, "d"))
        got = ptqflow.runtime.sessions.make_session(_with_output(result.model, "d"))
        pairs = [(ref.run(["d"], s)[0][:, 1:], got.run(["d"], s)[0][:, 1:]) for s in held_out]
        return float(sum(np.sum((r - q) ** 2) for r, q in pairs) / sum(np.sum(r ** 2) for r, _ in pairs))

    assert error(channels) < 0.2 * error(one)
    assert "input" not in _floats(run(adv={"safeguard_depthwise": True, "per_channel_depthwise_inputs": True}))
    ort_placed = run(target_runtime="onnxruntime", adv={"per_channel_depthwise_inputs": True})
    assert _channel_qdq(ort_placed.model, "input")[1] is None and _channel_qdq(ort_placed.model, "input")[0].shape == ()


def _with_output(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    return m


def test_a_per_channel_depthwise_input_needs_its_own_grid():
    """A tensor read by a depthwise conv and by another layer, or sharing a Concat's grid, keeps one scale: the
    runtime folds a channel's scale into that channel's weight scale only where every reader is depthwise."""
    from ptqflow.quantization.algorithms.quantizer_placement.build import _per_channel_depthwise_inputs
    from ptqflow.quantization.graph.index import GraphIndex

    g = GraphIndex(_dw_softmax_model())
    acts = [{"tensor": "input", "edges": [["dwconv", 0]], "group": "input"},
            {"tensor": "r", "edges": [["pwconv", 0]], "group": "r"},
            {"tensor": "x", "edges": [["dwconv", 0]], "group": "shared"},
            {"tensor": "y", "edges": [["dwconv", 0]], "group": "shared"},
            {"tensor": "z", "edges": [["dwconv", 0], ["pwconv", 0]], "group": "z"}]
    _per_channel_depthwise_inputs(g, acts)
    assert [a.get("axis") for a in acts] == [1, None, None, None, None]
