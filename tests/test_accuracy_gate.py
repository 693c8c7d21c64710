"""validation.accuracy_control: validate's failing gate runs accuracy control's revert loop on the validation split
(ptqflow.pipeline.steps.accuracy_gate) and the INT8 model it finds becomes the run's, export-ir's included.

The model is test_accuracy_control's MLP with an outlier channel: its hidden tensor h0 has one channel a thousand
times larger than the others, which the next layer ignores, so a per-tensor quantizer on h0 rounds the useful
channels to zero (the automatic safeguards are off so that none keeps it in float first). The gate asks for the
top-1 agreement with FP32 that such a quantizer breaks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from ptqflow.artifacts.manifest import read_manifest, verify_outputs
from ptqflow.cli import main
from ptqflow.config import parse_config
from ptqflow.errors import ConfigError, GateFailedError
from ptqflow.pipeline.steps import PRODUCERS, inputs_for
from test_accuracy_control import FEATURES, outlier_mlp, quantized_tensors

pytest.importorskip("jsonschema")

def config(enabled: bool = True) -> dict:
    """The run's config: the gate asks for top-1 agreement, the automatic safeguards are off, accuracy control on
    or off."""
    return {"quantization": {"subset_size": 16, "advanced": {"auto_safeguards": False}},
            "data": {"validation_size": 32, "preprocess": {"method": "none"}},
            "validation": {"latency_iterations": 2,
                           "gate": {"min_speedup": None, "min_cosine": None, "max_accuracy_drop": None,
                                    "min_top1_agreement": 0.95},
                           "accuracy_control": {"enabled": enabled}}}


def write_inputs(directory: Path) -> tuple[Path, Path]:
    """The outlier MLP at ``directory``/model.onnx and 48 samples (.npy, [16] each) in ``directory``/data."""
    model = builders.save(outlier_mlp(1), directory / "model.onnx")
    data = directory / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(48):
        np.save(data / f"sample_{i:03d}.npy", rng.normal(0, 1, (FEATURES,)).astype(np.float32))
    return model, data


def _run(tmp_path, enabled: bool) -> int:
    """``ptqflow run`` of the outlier MLP into tmp_path/out with accuracy control on or off; its exit code."""
    src = tmp_path / "src"
    model, data = (src / "model.onnx", src / "data") if src.exists() else write_inputs(src)
    cfg = tmp_path / f"cfg-{enabled}.json"
    cfg.write_text(json.dumps(config(enabled)))
    return main(["run", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "out"),
                 "--config", str(cfg)])


def test_run_fails_the_gate_without_accuracy_control_and_passes_with_it(tmp_path):
    out = tmp_path / "out"
    assert _run(tmp_path, False) == GateFailedError.exit_code
    report = json.loads((out / "validate" / "report.json").read_text())
    assert report["verdict"] == "fail" and "accuracy_control" not in report
    assert not (out / "validate" / "quantized").exists()
    quantized = read_manifest(out / "quantize").digest
    # The same run with accuracy control: the steps before validate are reused, validate passes
    assert _run(tmp_path, True) == 0
    assert read_manifest(out / "quantize").digest == quantized
    report = json.loads((out / "validate" / "report.json").read_text())
    section = report["accuracy_control"]
    assert report["verdict"] == "pass" and section["met"] and section["published"]
    assert [r["tensor"] for r in section["reverted"]] == ["h0"]
    before, after = section["gate_before"][0], section["gate_after"][0]
    assert before["name"] == after["name"] == "min_top1_agreement"
    assert before["value"] < 0.95 <= after["value"] and not before["passed"] and after["passed"]
    assert set(section["speed_cost"]) == {"onnxruntime", "openvino"}  # speedup before minus after, per runtime
    # the published model: h0 in float, the layer it fed too (restore_mode activations_and_weights)
    manifest = read_manifest(out / "validate")  # the artifact's one manifest lists the model and its summary
    assert {"quantized/model.onnx", "quantized/summary.json"} <= set(manifest.outputs)
    assert verify_outputs(out / "validate", manifest) == []
    model = onnx.load(str(out / "validate" / "quantized" / "model.onnx"))
    assert "h0" not in quantized_tensors(model)
    assert "h0" in quantized_tensors(onnx.load(str(out / "quantize" / "model.onnx")))
    decided = {r["name"]: r.get("decided_by") for r in report["decisions"] if r["status"] == "float"}
    assert decided["h0"] == "accuracy_control"
    assert manifest.extra["accuracy_control"]["reverted"][0]["tensor"] == "h0"
    assert manifest.extra["accuracy_control"]["model"] == "quantized/model.onnx"
    assert set(manifest.inputs) == {"model", "quantized", "calibration", "statistics"}
    html = (out / "validate" / "report.html").read_text()
    assert "Accuracy control</h2>" in html and "published as this artifact" in html
    ir = read_manifest(out / "export-ir")
    assert ir.extra["int8_from"] == "validate (accuracy control)" and ir.inputs["report"] == manifest.digest
    # A gate accuracy control cannot meet within its budget fails as without it, with the best figures reached
    # and no model published.
    unmet = config(True)
    unmet["validation"]["gate"]["min_sqnr_db"] = 300.0
    unmet["validation"]["accuracy_control"]["max_iterations"] = 1
    (tmp_path / "unmet.json").write_text(json.dumps(unmet))
    inputs = [arg for name in ("model", "quantized", "calibration", "statistics")
              for arg in (f"--in-{name}", str(out / PRODUCERS[name]))]
    assert main(["validate", *inputs, "--out", str(tmp_path / "unmet"), "--config",
                 str(tmp_path / "unmet.json")]) == GateFailedError.exit_code
    report = json.loads((tmp_path / "unmet" / "report.json").read_text())
    section = report["accuracy_control"]
    assert report["verdict"] == "fail" and not section["met"] and not section["published"]
    assert section["stopped"] == "iteration budget reached (reverts tried: 1)" and len(section["steps"]) == 1
    assert not (tmp_path / "unmet" / "quantized").exists()


def test_accuracy_control_refuses_shards_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="max_iterations"):
        parse_config({"validation": {"accuracy_control": {"enabled": True, "max_iterations": -1}}})
    with pytest.raises(ConfigError, match="restore_mode"):
        parse_config({"validation": {"accuracy_control": {"restore_mode": "weights"}}})
    from ptqflow.pipeline.steps.validate import check_shardable

    cfg = parse_config({"validation": {"accuracy_control": {"enabled": True}}})
    with pytest.raises(ConfigError, match="validate --shard: validation.accuracy_control.enabled"):
        check_shardable(cfg.validation)
    # the statistics (validate) and report (export-ir) are read only with accuracy control on
    assert "statistics" in inputs_for("validate", cfg) and "report" in inputs_for("export-ir", cfg)
    off = parse_config({})
    assert "statistics" not in inputs_for("validate", off) and "report" not in inputs_for("export-ir", off)


def test_accuracy_control_refuses_dynamic_quantization_and_an_ir(tmp_path):
    from ptqflow.pipeline.steps.accuracy_gate import check_config

    dynamic = parse_config({"quantization": {"static": False}, "validation": {"accuracy_control": {"enabled": True}}})
    with pytest.raises(ConfigError, match="needs static quantization"):
        check_config(dynamic, Path("model.onnx"))
    with pytest.raises(ConfigError, match="ONNX models only"):
        check_config(parse_config({}), Path("model.xml"))
