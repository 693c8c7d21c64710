"""Activation ranges chosen by measured error (passes/range_search.py, algorithms/range_search.py): the choice
and its error in the plan, the error measured as the QDQ writer quantizes, and a lower error where tails need it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import builders
import ptqflow
import ptqflow.api
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.quantization.algorithms.minmax import activation_params
from ptqflow.quantization.algorithms.range_search import Values, choose, squared_error
from ptqflow.quantization.plan import QuantizationPlan


def _heavy_tailed(n: int, seed: int) -> list[dict]:
    """Inputs whose values are mostly small with a few large ones (a Student-t with 2 degrees of freedom)."""
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_t(2, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def test_the_least_error_wins_measured_as_the_writer_quantizes():
    rng = np.random.default_rng(0)
    x = np.abs(rng.laplace(0, 1, 50_000))  # max ~12
    values = Values(0.0, float(x.max()))
    values.add(x)
    # a mean of per-sample maxima far below the global one (few large values per sample) clips too much
    chosen = choose(values, (0.0, 3.0), symmetric=False, signed=False, qtype=None)
    assert chosen["error"] == min(chosen["errors"].values())
    assert chosen["estimator"] != "mean_minmax" and chosen["errors"]["mean_minmax"] > 10 * chosen["error"]
    assert 8 < chosen["max"] <= x.max()  # for 8 bits the least squared error clips little (Banner et al. 2019)
    scale, zp, _ = activation_params(chosen["min"], chosen["max"], False, False)  # the QDQ writer's parameters
    written = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale
    assert squared_error(x, chosen["min"], chosen["max"], False, False, None) == np.mean((written - x) ** 2)


def test_plan_records_the_choice_and_quantized_outputs_are_closer():
    model = builders.conv_classifier()
    calibration, held_out = _heavy_tailed(16, 1), _heavy_tailed(8, 2)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, s)[0] for s in held_out])

    def quantize(**advanced):
        config = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(
            auto_safeguards=False, disable_bias_correction=True, **advanced))
        stats = ptqflow.collect_statistics(model, ptqflow.Dataset(calibration), config)
        result = ptqflow.quantize_with_summary(model, stats, config, dataset=ptqflow.Dataset(calibration))
        out = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
        error = float(((np.concatenate([out.run(None, s)[0] for s in held_out]) - ref) ** 2).mean() / ref.var())
        return result.plan, error  # the plan written (the caller's statistics keep the one collected)

    plain, default_error = quantize()
    plan, measured_error = quantize(range_search=True)
    assert plain.ranges == {} and set(plan.ranges) == {p.group for p in plan.activations}
    for record in plan.ranges.values():
        assert record["error"] == min(record["errors"].values()) and record["min"] <= record["max"]
    assert QuantizationPlan.from_json(plan.to_json()).ranges == plan.ranges
    assert any(r["estimator"] != "mean_minmax" for r in plan.ranges.values())
    assert measured_error < default_error, (default_error, measured_error)


def test_the_summary_and_the_report_say_which_ranges_were_chosen():
    from ptqflow.pipeline.report.decisions import layer_rows

    config = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(
        auto_safeguards=False, disable_bias_correction=True, range_search=True))
    result = ptqflow.api.quantize_with_config(builders.conv_classifier(), ptqflow.Dataset(_heavy_tailed(16, 1)),
                                              config)
    assert result.plan.range_verdict["kept"]
    chosen = {p.tensor: result.plan.ranges[p.group]["estimator"] for p in result.plan.activations}
    rows = [r for r in result.layers if r.get("input_ranges")]
    assert rows and all(r["input_ranges"] == {t: chosen[t] for t in r["input_ranges"]} for r in rows)
    assert all(e != "mean_minmax" for r in rows for e in r["input_ranges"].values())
    shown = {r["name"]: r["why"] for r in layer_rows(result.layers)}
    assert all("input range by measured error" in shown[r["name"]] for r in rows)


def _peaked(n: int, seed: int) -> list[dict]:
    """Small values everywhere but one large peak per sample, at a random position: the one value a max-pooled
    output reads, and almost never among the values the search samples."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        x = rng.normal(0, 1, (1, 16, 64, 64)).astype(np.float32)
        x[0, rng.integers(16), rng.integers(64), rng.integers(64)] = 50.0
        samples.append({"input": x})
    return samples


def _max_pooled() -> onnx.ModelProto:
    """input [1, 16, 64, 64] -> Conv 1x1 (positive weights) -> GlobalMaxPool -> Flatten: the peak carries the
    output."""
    w = np.abs(np.random.default_rng(3).normal(0, 1, (4, 16, 1, 1))).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["input", "w"], ["conv"], name="conv"),
         onnx.helper.make_node("GlobalMaxPool", ["conv"], ["pooled"], name="pool"),
         onnx.helper.make_node("Flatten", ["pooled"], ["out"], name="flatten")],
        "peak", [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 16, 64, 64])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.numpy_helper.from_array(w, "w")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9)


def test_ranges_that_lower_the_tensor_error_but_raise_the_output_error_are_not_kept():
    config = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(
        auto_safeguards=False, disable_bias_correction=True, range_search=True))
    result = ptqflow.api.quantize_with_config(_max_pooled(), ptqflow.Dataset(_peaked(16, 0)), config)
    verdict = result.plan.range_verdict
    assert verdict["kept"] is False and verdict["held_out"] and verdict["samples"] == 8
    assert verdict["error_chosen"] > 10 * verdict["error_default"], verdict  # the clipped peak is the output
    assert result.plan.ranges == {}


def test_range_search_on_an_ir_decides_as_on_onnx(tmp_path):
    ov = pytest.importorskip("openvino")
    path = builders.save(builders.conv_classifier(), tmp_path / "m.onnx")
    data = ptqflow.Dataset(_heavy_tailed(16, 1))
    config = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(
        auto_safeguards=False, disable_bias_correction=True, range_search=True))
    on_onnx = ptqflow.api.quantize_with_config(str(path), data, config)
    on_ir = ptqflow.api.quantize_with_config(ov.convert_model(str(path)), data, config)
    assert on_onnx.plan.range_verdict["kept"] and on_ir.plan.range_verdict["kept"]
    assert not any("range_search" in w for w in on_ir.plan.warnings)
    estimators = [sorted(c["estimator"] for c in r.plan.ranges.values()) for r in (on_onnx, on_ir)]
    assert estimators[1] == estimators[0]
    for key in ("error_chosen", "error_default"):
        assert on_ir.plan.range_verdict[key] == pytest.approx(on_onnx.plan.range_verdict[key], rel=0.05)
