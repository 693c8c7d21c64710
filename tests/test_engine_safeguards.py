"""Automatic safeguards: what they keep in float, and that they can be switched off."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

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
    result = quantize_with_config(model, samples, QuantizationConfig())
    rows = {r["name"]: r for r in result.layers}
    assert rows["head"]["status"] == "float" and "Softmax" in rows["head"]["reason"]
    assert rows["input"]["status"] == "float" and "depthwise" in rows["input"]["reason"]
    assert rows["pwconv"]["status"] == "quantized"
    off = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(auto_safeguards=False)))
    rows_off = {r["name"]: r for r in off.layers}
    assert rows_off["head"]["status"] == "quantized" and "input" not in rows_off


def test_depthwise_input_with_even_channels_is_quantized():
    """The depthwise safeguard looks at the channel spread: evenly ranged channels lose little, stay INT8."""
    result = quantize_with_config(_dw_softmax_model(), _spread_inputs(6, [1.0, 0.8, 1.2, 0.9]), QuantizationConfig())
    rows = {r["name"]: r for r in result.layers}
    assert "input" not in rows
    assert "input" in rows["dwconv"]["quantized_inputs"]


def test_sensitivity_search_runs_and_keeps_model_valid():
    model, samples = B.conv_classifier(), B.random_inputs(10, (3, 16, 16))
    cfg = QuantizationConfig(advanced=AdvancedParameters(sensitivity_search=True))
    result = quantize_with_config(model, samples, cfg)
    assert any(r["status"] == "quantized" for r in result.layers)
    ptqflow.runtime.make_session(result.model).run(None, samples[0])


def test_safeguard_thresholds_come_from_the_config():
    """The depthwise spread and the outlier limits are AdvancedParameters fields, read by the safeguards."""
    model, samples = _dw_softmax_model(), _spread_inputs(6, [1.0, 0.05, 0.05, 0.05])
    loose = quantize_with_config(model, samples, QuantizationConfig(
        advanced=AdvancedParameters(depthwise_channel_spread=0.01)))
    assert "input" not in {r["name"] for r in loose.layers}  # median channel at 0.05 of the range: above 0.01
    tight = quantize_with_config(_dw_softmax_model(), _spread_inputs(6, [1.0, 0.8, 1.2, 0.9]), QuantizationConfig(
        advanced=AdvancedParameters(depthwise_channel_spread=0.99)))
    assert {r["name"]: r for r in tight.layers}["input"]["status"] == "float"
    small = quantize_with_config(model, samples, QuantizationConfig(advanced=AdvancedParameters(outlier_abs_max=1e-3)))
    reasons = [r["reason"] for r in small.layers if r["op_type"] == "tensor"]
    assert any("extreme activation range" in why for why in reasons), reasons
