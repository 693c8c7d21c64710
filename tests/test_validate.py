"""validate step: metrics on the validation split, gate on each threshold, report files, per-layer sensitivity."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import builders
from ptqflow.artifacts.manifest import read_manifest, write_manifest
from ptqflow.config import GateConfig, PipelineConfig
from ptqflow.data.shards import INDEX_FILE, ShardWriter
from ptqflow.errors import ConfigError, GateFailedError, InputError
from ptqflow.pipeline.steps import validate

jsonschema = pytest.importorskip("jsonschema")


def make_artifacts(root: Path, n: int = 12, levels: int = 255) -> dict[str, Path]:
    """model/, quantized/ (hand-made QDQ) and calibration/ (labeled validation split) artifacts with manifests.

    Labels are the FP32 argmax except every fourth sample's, which is shifted, so FP32 top-1 is 0.75 exactly.
    """
    fp32 = builders.conv_classifier(seed=1)
    samples = builders.random_inputs(n, (3, 16, 16), seed=3)
    int8 = builders.coarse_qdq(fp32, samples, weight_levels=levels)
    dirs = {k: root / k for k in ("model", "quantized", "calibration")}
    builders.save(fp32, dirs["model"] / "model.onnx")
    builders.save(int8, dirs["quantized"] / "model.onnx")
    sess = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    writer = ShardWriter(dirs["calibration"] / "validation", 1 << 20, with_labels=True)
    for i, s in enumerate(samples):
        top = int(np.argmax(sess.run(None, s)[0]))
        writer.add({"input": s["input"][0]}, top if i % 4 else (top + 1) % 5)
    writer.flush()
    (dirs["calibration"] / "calibration").mkdir()
    (dirs["calibration"] / INDEX_FILE).write_text(json.dumps({"counts": {"calibration": 0, "validation": n}}))
    for name, d in dirs.items():
        write_manifest(d, step=name, config={}, inputs={})
    return dirs


def _cfg(**gate) -> PipelineConfig:
    return PipelineConfig.model_validate({"validation": {"latency_iterations": 4, "per_layer_sensitivity": True,
                                                         "gate": {"min_speedup": None, **gate}}})


def test_validate_passes_and_writes_valid_report(tmp_path):
    dirs = make_artifacts(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    m = validate.run(dirs, out, _cfg(min_cosine=0.99, min_top1_agreement=0.5))
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, json.loads((Path(validate.__file__).parent.parent / "report/schema.json").read_text()))
    assert report["verdict"] == "pass" and m.metrics["verdict"] == "pass"
    assert report["samples"] == 12 and report["labeled"] == 12
    assert report["accuracy"]["fp32"]["top1"] == pytest.approx(0.75)  # labels built so
    assert report["accuracy"]["fp32"]["top5"] == 1.0  # 5 classes
    fid = report["fidelity"]["logits"]
    assert fid["cosine"] > 0.99 and fid["sqnr_db"] > 20 and fid["max_abs_error"] > 0
    for rt in ("onnxruntime", "openvino"):
        sp = report["speed"][rt]
        assert len(sp["fp32"]["samples_ms"]) == len(sp["int8"]["samples_ms"]) == 4
        assert sp["speedup"] == pytest.approx(sp["fp32"]["latency_ms_median"] / sp["int8"]["latency_ms_median"])
    assert report["speed"]["openvino"]["fp32_inference_precision"] == "f32"
    assert {r["layer"] for r in report["layers"]} == {"conv1", "conv2", "fc"}
    assert all(isinstance(r["sqnr_db"], float) for r in report["layers"])
    html = (out / "report.html").read_text()
    assert "Gate: PASS" in html and "<svg" in html and "INFERENCE_PRECISION_HINT=f32" in html
    assert not re.search(r"https?://", html) and "<script" not in html
    assert {"report.json", "report.html"} <= set(read_manifest(out).outputs)


def test_gate_failure_raises_after_writing_report(tmp_path):
    dirs = make_artifacts(tmp_path, levels=3)  # three weight codes: visibly worse INT8
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(GateFailedError, match=r"min_sqnr_db: .* vs threshold 60 \(off by"):
        validate.run(dirs, out, _cfg(min_sqnr_db=60.0, min_cosine=None))
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "fail" and read_manifest(out).metrics["verdict"] == "fail"
    assert [c["name"] for c in report["gate"] if not c["passed"]] == ["min_sqnr_db"]
    assert "Gate: FAIL" in (out / "report.html").read_text()


def _acc(fp32, int8):
    return {"output": "y", "fp32": {"top1": fp32}, "int8": {"top1": int8}}


FID = {"y": {"cosine": 0.995, "sqnr_db": 25.0, "max_abs_error": 0.1, "top1_agreement": 0.97}}
SPEED = {"openvino": {"speedup": 1.4}}


@pytest.mark.parametrize("field,value,expected_margin", [
    ("max_accuracy_drop", 0.01, -0.01),  # drop 0.02 absolute
    ("min_cosine", 0.999, -0.004),
    ("min_sqnr_db", 30.0, -5.0),
    ("min_top1_agreement", 0.99, -0.02),
    ("min_speedup", 1.5, -0.1),
])
def test_each_threshold_fails_by_its_margin(field, value, expected_margin):
    none = dict(max_accuracy_drop=None, min_cosine=None, min_sqnr_db=None, min_top1_agreement=None, min_speedup=None)
    gate = GateConfig(**{**none, field: value})
    checks = validate.evaluate_gate(gate, _acc(0.80, 0.78), FID, SPEED)
    assert len(checks) == 1 and checks[0]["name"].startswith(field)
    assert not checks[0]["passed"] and checks[0]["margin"] == pytest.approx(expected_margin)
    loose = GateConfig(**{**none, field: value - 2 * abs(expected_margin) if field != "max_accuracy_drop" else 0.03})
    assert validate.evaluate_gate(loose, _acc(0.80, 0.78), FID, SPEED)[0]["passed"]


def test_relative_accuracy_drop():
    gate = GateConfig(max_accuracy_drop=0.02, accuracy_drop_mode="relative", min_cosine=None, min_speedup=None)
    # 0.02 absolute on 0.5 is 4 % relative: fails a 2 % relative limit, passes a 5 % one.
    assert not validate.evaluate_gate(gate, _acc(0.5, 0.48), FID, SPEED)[0]["passed"]
    gate = GateConfig(max_accuracy_drop=0.05, accuracy_drop_mode="relative", min_cosine=None, min_speedup=None)
    check = validate.evaluate_gate(gate, _acc(0.5, 0.48), FID, SPEED)[0]
    assert check["passed"] and check["value"] == pytest.approx(0.04)


def test_default_speed_gate_uses_openvino_ratio():
    checks = validate.evaluate_gate(GateConfig(), {}, FID, {"openvino": {"speedup": 0.9}})
    speed = [c for c in checks if c["name"].startswith("min_speedup")][0]
    assert speed["threshold"] == 1.0 and not speed["passed"] and speed["margin"] == pytest.approx(-0.1)


def test_measure_speed_alternates():
    calls = []
    res = validate.measure_speed(lambda: calls.append("f"), lambda: calls.append("i"), 4)
    timed = calls[2 * validate._WARMUP:]
    assert timed == ["f", "i", "i", "f", "f", "i", "i", "f"]
    assert set(res) >= {"fp32", "int8", "speedup"}


def test_a_model_over_2_gb_is_timed_one_model_at_a_time(tmp_path, monkeypatch):
    """Over protobuf's limit (lowered to 0 here), FP32 is made, timed and dropped before INT8 is made; the report
    has the same figures, valid against the schema."""
    from ptqflow.runtime import model_files

    events = []
    res = validate.measure_apart(lambda: events.append("make f") or (lambda: events.append("f")),
                                 lambda: events.append("make i") or (lambda: events.append("i")), 2)
    n = validate._WARMUP + 2
    assert events == ["make f"] + ["f"] * n + ["make i"] + ["i"] * n and set(res) >= {"fp32", "int8", "speedup"}
    dirs = make_artifacts(tmp_path)
    assert not validate.one_at_a_time(dirs["model"] / "model.onnx")
    monkeypatch.setattr(model_files, "PROTO_LIMIT", 0)
    assert validate.one_at_a_time(dirs["model"] / "model.onnx")
    out = tmp_path / "out"
    out.mkdir()
    validate.run(dirs, out, _cfg(min_cosine=0.99))
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, json.loads((Path(validate.__file__).parent.parent / "report/schema.json").read_text()))
    for rt in ("onnxruntime", "openvino"):
        sp = report["speed"][rt]
        assert len(sp["fp32"]["samples_ms"]) == len(sp["int8"]["samples_ms"]) == 4
        assert sp["speedup"] == pytest.approx(sp["fp32"]["latency_ms_median"] / sp["int8"]["latency_ms_median"])


def test_empty_validation_split_is_an_error_never_calibration_fallback(tmp_path):
    dirs = make_artifacts(tmp_path)
    cal = dirs["calibration"]
    (cal / "validation" / "shard-00000.npz").rename(cal / "calibration" / "shard-00000.npz")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"validation: no validation samples"):
        validate.run(dirs, out, _cfg())
    assert list(out.iterdir()) == []


def test_user_metric_feeds_the_accuracy_gate(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("ptqflow_validate_metric")
    # A task metric that sees all outputs and labels: the mean of logits[:, 0] (FP32 vs INT8 differ slightly).
    mod.first_logit = lambda outputs, labels: {"score": float(np.mean(outputs["logits"][:, 0])), "n": len(labels)}
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    dirs = make_artifacts(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cfg = PipelineConfig.model_validate({"validation": {"latency_iterations": 2, "metric": f"{mod.__name__}:first_logit",
                                                        "gate": {"min_speedup": None}}})
    report = json.loads((validate.run(dirs, out, cfg), out / "report.json")[1].read_text())
    assert report["accuracy"]["fp32"]["n"] == report["accuracy"]["int8"]["n"] == 12.0
    assert report["accuracy"]["fp32"]["score"] != report["accuracy"]["int8"]["score"]
    assert report["layers"] == []  # per-layer sensitivity off by default


def test_a_drop_equal_to_the_threshold_passes():
    # 192 of 200 correct in FP32, 188 in INT8: the drop is 4/200, exactly the limit. Subtracting the two
    # accuracies as floats gives 0.02 + 1.7e-17 and used to fail the gate.
    y = np.zeros(200, dtype=np.int64)
    fp32 = np.tile([[1.0, 0.0]], (200, 1))
    int8 = fp32.copy()
    fp32[192:] = int8[188:] = [0.0, 1.0]
    acc = validate.accuracy_metrics({"y": fp32}, {"y": int8}, list(y))
    assert acc["fp32"]["top1"] - acc["int8"]["top1"] > 0.02  # the float subtraction alone would fail
    gate = GateConfig(max_accuracy_drop=0.02, min_cosine=None, min_speedup=None)
    (check,) = validate.evaluate_gate(gate, acc, FID, SPEED)
    assert check["passed"] and check["value"] == 0.02 and check["tolerance"] > 0
    (check,) = validate.evaluate_gate(GateConfig(max_accuracy_drop=0.0199, min_cosine=None, min_speedup=None),
                                      acc, FID, SPEED)
    assert not check["passed"]


def test_float_thresholds_pass_at_equality_within_the_stated_tolerance():
    gate = GateConfig(max_accuracy_drop=None, min_cosine=0.3, min_speedup=None)
    (check,) = validate.evaluate_gate(gate, {}, {"y": {"cosine": 0.1 + 0.2, "sqnr_db": 1.0, "max_abs_error": 0}},
                                      SPEED)
    assert 0.1 + 0.2 != 0.3 and check["passed"] and check["tolerance"] == pytest.approx(1e-9)


def test_accuracy_metric_names_the_gated_metric():
    acc = {"fp32": {"exact_match": 0.90, "char_accuracy": 0.99}, "int8": {"exact_match": 0.85, "char_accuracy": 0.985}}
    gate = GateConfig(max_accuracy_drop=0.02, min_cosine=None, min_speedup=None)
    (check,) = validate.evaluate_gate(gate, acc, FID, SPEED)  # default: the first metric
    assert "exact_match" in check["name"] and not check["passed"]
    gate = GateConfig(max_accuracy_drop=0.02, accuracy_metric="char_accuracy", min_cosine=None, min_speedup=None)
    (check,) = validate.evaluate_gate(gate, acc, FID, SPEED)
    assert "char_accuracy" in check["name"] and check["passed"]
    with pytest.raises(ConfigError, match="accuracy_metric 'f1'.*exact_match, char_accuracy"):
        validate.evaluate_gate(GateConfig(accuracy_metric="f1"), acc, FID, SPEED)


@pytest.mark.parametrize("runtime,passed", [("onnxruntime", True), ("openvino", False)])
def test_speed_gate_applies_to_the_target_runtime(runtime, passed):
    speed = {"openvino": {"speedup": 0.9}, "onnxruntime": {"speedup": 1.3}}
    checks = validate.evaluate_gate(GateConfig(), {}, FID, speed, runtime)
    (check,) = [c for c in checks if c["name"].startswith("min_speedup")]
    assert check["name"] == f"min_speedup ({runtime})" and check["passed"] == passed


def test_speed_gate_without_a_figure_on_the_target_runtime_is_an_error():
    with pytest.raises(ConfigError, match="no speed was measured on onnxruntime"):
        validate.evaluate_gate(GateConfig(), {}, FID, {"openvino": {"speedup": 2.0}}, "onnxruntime")
