"""Every real step through the CLI on a tiny generated model with .npy data; bias-mode reuse; kill-and-rerun.

Tests that need a step or engine module another part of ptqflow provides skip when it is absent.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import builders
from ptqflow.artifacts.manifest import read_manifest, verify_outputs
from ptqflow.cli import main


def need(*modules: str) -> None:
    """Skip unless every module imports."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as err:
            pytest.skip(f"{mod} is not available: {err}")


STEPS_ALL = ("ptqflow.pipeline.steps.build_calibration", "ptqflow.pipeline.steps.collect_stats", "ptqflow.pipeline.steps.quantize",
             "ptqflow.pipeline.steps.validate", "ptqflow.pipeline.steps.export_ir", "ptqflow.api", "ptqflow.data")


def write_npy_dataset(directory: Path, n: int = 24, shape=(3, 16, 16), seed: int = 0) -> Path:
    """``n`` samples as one ``.npy`` file each (float32, per-sample shape, no batch dim)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(directory / f"sample_{i:03d}.npy", rng.normal(0, 1, shape).astype(np.float32))
    return directory


CONFIG = ("quantization:\n  subset_size: 16\ndata:\n  validation_size: 8\n  preprocess:\n    method: none\n"
          "validation:\n  latency_iterations: 2\n  gate:\n    min_speedup: null\n    min_cosine: 0.5\n"
          "    max_accuracy_drop: null\n")


@pytest.fixture
def workspace(tmp_path):
    model = builders.save(builders.conv_classifier(), tmp_path / "src" / "model.onnx")
    data = write_npy_dataset(tmp_path / "data")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    return {"model": model, "data": data, "cfg": cfg, "out": tmp_path / "out"}


def _step(ws, name: str, *args: str) -> Path:
    out = ws["out"] / name
    code = main([name, *args, "--out", str(out), "--config", str(ws["cfg"])])
    assert code == 0, f"{name} exited {code}"
    m = read_manifest(out)
    assert m is not None and m.step == name and verify_outputs(out, m) == []
    return out


def test_each_step_through_the_cli(workspace):
    need("ptqflow.pipeline.steps.build_calibration", "ptqflow.data", "ptqflow.api")
    ws = workspace
    model = _step(ws, "fetch-model", "--model", str(ws["model"]))
    cal = _step(ws, "build-calibration", "--in-model", str(model), "--data", str(ws["data"]))
    stats = _step(ws, "collect-stats", "--in-model", str(model), "--in-calibration", str(cal))
    q = _step(ws, "quantize", "--in-model", str(model), "--in-calibration", str(cal), "--in-statistics", str(stats))
    import onnx

    qmodel = onnx.load(str(q / "model.onnx"))
    assert qmodel.ir_version <= 10
    assert any(n.op_type == "QuantizeLinear" for n in qmodel.graph.node)
    summary = json.loads((q / "summary.json").read_text())
    assert summary["layers"] and read_manifest(q).metrics["layers"] == len(summary["layers"])
    assert read_manifest(stats).inputs == {"model": read_manifest(model).digest, "calibration": read_manifest(cal).digest}
    try:
        importlib.import_module("ptqflow.pipeline.steps.validate")
        importlib.import_module("ptqflow.pipeline.steps.export_ir")
    except ImportError:
        return
    _step(ws, "validate", "--in-model", str(model), "--in-quantized", str(q), "--in-calibration", str(cal))
    ir = _step(ws, "export-ir", "--in-quantized", str(q), "--in-model", str(model), "--in-calibration", str(cal))
    assert (ir / "model.xml").is_file() and (ir / "model.bin").is_file()


@pytest.mark.slow
def test_run_reuses_upstream_when_only_quantize_settings_change(workspace, capsys):
    need(*STEPS_ALL)
    ws = workspace
    base = ["run", "--model", str(ws["model"]), "--data", str(ws["data"]), "--output", str(ws["out"]),
            "--config", str(ws["cfg"])]
    assert main(base) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*base, "--set", "quantization.advanced.bias_correction_threshold=5.0"]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out)
    for step in ("fetch-model", "build-calibration", "collect-stats"):
        assert second[step]["digest"] == first[step]["digest"]
        assert f"{step}: skipped" in captured.err
    assert second["quantize"]["digest"] != first["quantize"]["digest"]
    assert "quantize: running" in captured.err
    # The bias mode changes what collect-stats gathers: it collects again, and quantize has what it needs.
    assert main([*base, "--no-fast-bias-correction"]) == 0
    captured = capsys.readouterr()
    third = json.loads(captured.out)
    assert "collect-stats: running" in captured.err and "build-calibration: skipped" in captured.err
    assert third["collect-stats"]["digest"] != first["collect-stats"]["digest"]
    assert read_manifest(ws["out"] / "quantize").config["quantization"]["fast_bias_correction"] is False
    assert main(base) == 0  # and back: FastBiasCorrection gets its input means again
    summary = (ws["out"] / "quantize" / "summary.json").read_text()
    assert "statistics missing" not in summary


@pytest.mark.slow
def test_sigkill_mid_step_leaves_no_manifest_and_rerun_matches(workspace, tmp_path):
    need("ptqflow.pipeline.steps.build_calibration", "ptqflow.data", "ptqflow.api")
    ws = workspace
    # Enough calibration work that the step is still running when it is killed.
    ws["data"] = write_npy_dataset(tmp_path / "big", n=400, shape=(3, 64, 64))
    ws["model"] = builders.save(builders.conv_classifier(size=64, channels=32), tmp_path / "src" / "big.onnx")
    ws["cfg"].write_text(CONFIG.replace("subset_size: 16", "subset_size: 300"))
    model = _step(ws, "fetch-model", "--model", str(ws["model"]))
    cal = _step(ws, "build-calibration", "--in-model", str(model), "--data", str(ws["data"]))
    out = ws["out"] / "stats"
    args = [sys.executable, "-m", "ptqflow.cli", "collect-stats", "--in-model", str(model), "--in-calibration",
            str(cal), "--out", str(out), "--config", str(ws["cfg"])]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list(out.parent.glob(".stats.partial-*")):  # the step itself has started
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"collect-stats finished before it could be killed (rc={proc.returncode})")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists() and not out.exists()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.parent.glob(".stats.partial-*"))  # the killed run's leftovers are gone
    reference = ws["out"] / "stats-ref"
    assert main(["collect-stats", "--in-model", str(model), "--in-calibration", str(cal), "--out", str(reference),
                 "--config", str(ws["cfg"])]) == 0
    assert read_manifest(out).outputs == read_manifest(reference).outputs
    assert read_manifest(out).digest == read_manifest(reference).digest


@pytest.mark.parametrize("flags,ops", [(["--quant-format", "qoperator"], {"QLinearConv"}),
                                       (["--no-static"], {"DynamicQuantizeLinear", "ConvInteger"})])
def test_run_for_onnxruntime(workspace, flags, ops):
    need(*STEPS_ALL)
    import onnx

    code = main(["run", "--model", str(workspace["model"]), "--data", str(workspace["data"]), *flags,
                 "--output", str(workspace["out"]), "--config", str(workspace["cfg"])])
    assert code == 0
    q = onnx.load(workspace["out"] / "quantize" / "model.onnx")
    assert ops <= {n.op_type for n in q.graph.node}
    report = json.loads((workspace["out"] / "validate" / "report.json").read_text())
    assert report["speed"]["onnxruntime"]["speedup"] > 0
    skipped = "export-ir" if "qoperator" in flags else "collect-stats"
    assert not (workspace["out"] / skipped).exists()


def test_dynamic_quantize_step_takes_no_statistics(workspace):
    need("ptqflow.pipeline.steps.build_calibration", "ptqflow.data", "ptqflow.api")
    ws = workspace
    model = _step(ws, "fetch-model", "--model", str(ws["model"]))
    cal = _step(ws, "build-calibration", "--in-model", str(model), "--data", str(ws["data"]))
    q = _step(ws, "quantize", "--in-model", str(model), "--in-calibration", str(cal), "--no-static")
    assert set(read_manifest(q).inputs) == {"model", "calibration"}
