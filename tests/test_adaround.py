"""AdaRound (algorithms/adaround.py): im2col patches that reproduce onnxruntime's Conv, a layer loss never above
nearest rounding's, codes one step from the nearest at unchanged scales, and a quantized model closer to FP32 on
held-out data; the time budget and the row guard keep nearest rounding, the plan and the summary say so."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders
import ptqflow
from ptqflow.api import quantize_with_config
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.quantization import engine
from ptqflow.quantization.algorithms import adaround
from ptqflow.quantization.algorithms.minmax import weight_params
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.runtime.sessions import make_session


def _smooth_images(n: int, seed: int, c: int = 4, size: int = 12) -> list[dict]:
    """Spatially correlated, mostly positive images (a 3x3 box blur of noise + 0.5): neighbouring patch values
    correlate, as real feature maps do. With white noise X^T X is a multiple of the identity, for which nearest
    rounding is already optimal: AdaRound wins only where inputs correlate."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(0, 1, (1, c, size + 2, size + 2))
        x = sum(x[:, :, i:i + size, j:j + size] for i in range(3) for j in range(3)) / 3 + 0.5
        out.append({"input": x.astype(np.float32)})
    return out


def _mixed_rows(n: int, seed: int, s: int = 16, f: int = 32) -> list[dict]:
    """Rows of correlated features (a fixed mixing with a decaying spectrum, + 0.5)."""
    mix = np.random.default_rng(100).normal(0, 1, (f, f)) * np.geomspace(1, 0.05, f)[:, None]
    rng = np.random.default_rng(seed)
    return [{"input": (rng.normal(0, 1, (1, s, f)) @ mix + 0.5).astype(np.float32)} for _ in range(n)]


CASES = {"convs": (builders.rounding_convs, _smooth_images), "linear": (builders.rounding_linear, _mixed_rows)}


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
    dict(group=3, pads=[1, 1, 1, 1]),
    dict(group=6, auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="VALID"),
])
def test_patches_times_the_weight_are_onnxruntimes_conv(attrs):
    rng = np.random.default_rng(0)
    groups, cin, cout = attrs.get("group", 1), 6, 6
    w = rng.normal(size=(cout, cin // groups, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)
    model = builders.make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 9, 10])],
                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, cout, None, None])],
                                [numpy_helper.from_array(w, "w")])
    x = rng.normal(size=(2, cin, 9, 10)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    patches = adaround.conv_patches(x.astype(np.float64), node, (3, 3), None, rng)  # (groups, rows, D)
    out = patches @ w.reshape(groups, cout // groups, -1).transpose(0, 2, 1)
    n, _, ho, wo = y.shape
    expected = y.transpose(0, 2, 3, 1).reshape(n * ho * wo, groups, cout // groups).transpose(1, 0, 2)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    some = adaround.conv_patches(x.astype(np.float64), node, (3, 3), 7, np.random.default_rng(1))
    assert some.shape == (groups, 7, patches.shape[2])  # a random subset of the same rows
    assert all(any(np.array_equal(r, p) for p in patches[0]) for r in some[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_loss_never_above_nearest_and_codes_one_step_away(case):
    build, data = CASES[case]
    model, samples = build(), data(16, 1)
    config = QuantizationConfig(subset_size=16)
    statistics = ptqflow.collect_statistics(model, samples, config)
    plan, prepared = statistics.plan, engine.prepare_for(model, statistics, config)
    layers, skipped = adaround.layers_of(prepared, plan)
    assert not skipped and len(layers) == len(plan.weights)
    groups = sorted(layer.w.shape[0] for layer in layers)
    assert groups == ([1, 4, 16] if case == "convs" else [1, 1])  # full, grouped and depthwise Conv
    adaround.collect(prepared, layers, samples, lambda m: make_session(m, "cpu"), {}, False)
    inits = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    for layer in layers:
        codes = adaround.round_layer(layer, 1000)
        record = layer.record
        assert record["applied"] and record["loss_adaround"] < record["loss_nearest"]
        _, nearest = weight_params(inits[layer.entry.tensor], layer.entry.axis, layer.entry.narrow_bits)
        assert codes.shape == nearest.shape and np.abs(codes).max() <= 127
        diff = codes.astype(int) - nearest.astype(int)
        assert set(np.unique(diff)) <= {-1, 0, 1} and record["flipped"] == pytest.approx(np.mean(diff != 0))
        # codes between floor and ceil of w / scale: the scale is what nearest rounding uses
        ratio = layer.w / layer.scale
        mcodes = adaround._matrix(codes.astype(np.float64), _node(prepared, layer))[0]
        assert np.all(mcodes >= np.floor(ratio) - 1e-9) and np.all(mcodes <= np.ceil(ratio) + 1e-9)


def _node(prepared, layer):
    return next(n for n in prepared.graph.node if n.name == layer.entry.nodes[0][0])


def _error(q: onnx.ModelProto, fp32: onnx.ModelProto, data: list[dict]) -> float:
    sq, sf = ort.InferenceSession(q.SerializeToString()), ort.InferenceSession(fp32.SerializeToString())
    err = ref = 0.0
    for d in data:
        a, b = sf.run(None, d)[0], sq.run(None, d)[0]
        err, ref = err + float(np.sum((a - b) ** 2)), ref + float(np.sum(a ** 2))
    return err / ref


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if t.name.endswith("_int8") or t.name.endswith("_scale")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adaround_model_is_closer_to_fp32_on_held_out_data(case):
    build, data = CASES[case]
    model, calibration, held_out = build(), data(16, 1), data(16, 2)
    nearest = quantize_with_config(model, calibration, QuantizationConfig(subset_size=16))
    config = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(adaround=True))
    rounded = quantize_with_config(model, calibration, config)
    assert _error(rounded.model, model, held_out) < _error(nearest.model, model, held_out)
    before, after = _weights(nearest.model), _weights(rounded.model)
    assert before.keys() == after.keys()
    for name in before:
        if name.endswith("_scale"):
            np.testing.assert_array_equal(after[name], before[name])  # scales unchanged
        else:
            diff = after[name].astype(int) - before[name].astype(int)
            assert set(np.unique(diff)) <= {-1, 0, 1} and np.any(diff)
    records = {r["weight"]["tensor"]: r["weight"]["adaround"] for r in rounded.layers if r.get("weight")}
    assert records and all(r["applied"] and r["loss_adaround"] < r["loss_nearest"] for r in records.values())
    assert set(records) == set(rounded.plan.adaround)
    assert QuantizationPlan.from_json(rounded.plan.to_json()).adaround == rounded.plan.adaround
    assert "adaround" not in nearest.plan.to_json()


def test_short_budget_and_few_rows_keep_nearest_rounding():
    model, calibration = builders.rounding_convs(), _smooth_images(4, 1)
    nearest = quantize_with_config(model, calibration, QuantizationConfig(subset_size=4))
    short = QuantizationConfig(subset_size=4, advanced=AdvancedParameters(adaround=True, adaround_time_budget=1e-6))
    result = quantize_with_config(model, calibration, short)
    assert all(not r["applied"] and r["reason"].startswith("time budget") for r in result.plan.adaround.values())
    assert all(np.array_equal(a, b) for a, b in zip(_weights(nearest.model).values(), _weights(result.model).values()))
    # a Gemm after global pooling reads one row per sample: 4 rows cannot define its 8 inputs' products
    clf = QuantizationConfig(subset_size=4, advanced=AdvancedParameters(adaround=True))
    result = quantize_with_config(builders.conv_classifier(), builders.random_inputs(4, (3, 16, 16)), clf)
    assert result.plan.adaround["fc_w"]["reason"].startswith("too few input rows")


def test_quantize_reads_adaround_samples():
    config = QuantizationConfig(advanced=AdvancedParameters(adaround=True, adaround_samples=400))
    assert engine.samples_needed(config) == 400
    assert engine.samples_needed(QuantizationConfig(advanced=AdvancedParameters(adaround_samples=400))) < 400


def test_quantized_inputs_reconstruct_from_the_written_activations():
    model, calibration = builders.rounding_linear(), _mixed_rows(16, 1)
    config = QuantizationConfig(subset_size=16,
                                advanced=AdvancedParameters(adaround=True, adaround_quantized_inputs=True))
    plain = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(adaround=True))
    q_records = quantize_with_config(model, calibration, config).plan.adaround
    records = quantize_with_config(model, calibration, plain).plan.adaround
    # the input's quantization error is part of the loss, and no rounding cancels it all
    for tensor, r in q_records.items():
        assert r["applied"] and r["loss_nearest"] > records[tensor]["loss_nearest"]
        assert r["loss_adaround"] < r["loss_nearest"]


def test_openvino_model_keeps_nearest_rounding_with_a_warning():
    pytest.importorskip("openvino")
    config = QuantizationConfig(subset_size=4, advanced=AdvancedParameters(adaround=True))
    result = quantize_with_config(builders.ov_conv_block(), builders.random_inputs(4, (3, 12, 12)), config)
    assert any(w.startswith("adaround: not run on an OpenVINO model") for w in result.plan.warnings)
    assert not result.plan.adaround
