"""KFP face end to end on a tiny generated model: the compiled container command lines run as local
subprocesses, and the lightweight pipeline under kfp.local (real Metrics/HTML from validate)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import builders
from ptqflow.orchestration import STEP_INPUTS
from ptqflow.orchestration.kfp_face import OUTPUTS, compile_pipeline

BASE = {"quantization": {"subset_size": 16}, "data": {"validation_size": 8, "preprocess": {"method": "none"}},
        "validation": {"latency_iterations": 2, "gate": {"min_speedup": None, "max_accuracy_drop": None}}}


@pytest.fixture
def inputs(tmp_path):
    model = builders.save(builders.conv_classifier(), tmp_path / "src" / "model.onnx")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        np.save(data / f"s{i:02d}.npy", rng.normal(0, 1, (3, 16, 16)).astype(np.float32))
    return {"model": str(model), "data": str(data)}


def _fill(args, arts: dict[str, str], params: dict[str, str]):
    """Replace KFP placeholders with local paths / parameter values."""
    out = []
    for a in args:
        if isinstance(a, str) and a.startswith('{"Concat"'):  # compiled as JSON text
            a = json.loads(a)
        if isinstance(a, dict):  # a ConcatPlaceholder: {"Concat": [...]}
            a = "".join(_fill(a["Concat"], arts, params))
        a = re.sub(r"\{\{\$\.(?:inputs|outputs)\.artifacts\['(\w+)'\]\.path\}\}", lambda m: arts[m.group(1)], a)
        a = re.sub(r"\{\{\$\.inputs\.parameters\['(\w+)'\]\}\}", lambda m: str(params[m.group(1)]), a)
        out.append(a)
    return out


@pytest.mark.slow
def test_container_command_lines_run_locally(tmp_path, inputs):
    spec = yaml.safe_load(Path(compile_pipeline(tmp_path / "p.yaml")).read_text().split("\n---\n")[0])
    params = {n: p.get("defaultValue", "") for n, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    params.update(model=inputs["model"], data=inputs["data"], output=str(tmp_path / "unused"),
                  base_config=json.dumps(BASE), min_cosine="0.5")
    arts = {"config": str(tmp_path / "a" / "config.json")}
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    tasks = spec["root"]["dag"]["tasks"]
    arts["registration"] = str(tmp_path / "a" / "registration")
    for task_name in ["resolve-config", *STEP_INPUTS, "publish"]:
        comp = tasks[task_name]["componentRef"]["name"]
        container = spec["deploymentSpec"]["executors"][spec["components"][comp]["executorLabel"]]["container"]
        if task_name in OUTPUTS:
            arts[OUTPUTS[task_name][0]] = str(tmp_path / "a" / OUTPUTS[task_name][0])
        cmd = _fill(container["command"] + container["args"], arts, params)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{task_name}: {proc.stderr[-2000:]}"
    assert json.loads(Path(arts["config"]).read_text())["data"]["validation_size"] == 8
    report = json.loads((Path(arts["report"]) / "manifest.json").read_text())
    assert report["step"] == "validate"
    assert (Path(arts["ir"]) / "model.xml").is_file()
    # No registry section in the config: publish records that it skipped and registers nothing.
    assert "registry" in json.loads((Path(arts["registration"]) / "skipped.json").read_text())["skipped"]


@pytest.mark.slow
def test_lightweight_pipeline_under_kfp_local(tmp_path, inputs, monkeypatch):
    from kfp import local

    from ptqflow.orchestration.kfp_face import build_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    pipeline = build_pipeline("local")
    run = pipeline(model=inputs["model"], data=inputs["data"], output=str(tmp_path / "unused"),
                   base_config=json.dumps(BASE), min_cosine="0.5")
    del run
    root = tmp_path / "root"
    executor = json.loads(next(root.glob("**/validate-local/executor_output.json")).read_text())
    # Metrics are KFP metadata (numbers from validate's manifest); the HTML artifact is the report file.
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["samples"] == 8.0 and 0.5 <= metrics["min_cosine"] <= 1.0
    assert all(isinstance(v, float) for v in metrics.values())
    html = Path(executor["artifacts"]["html"]["artifacts"][0]["uri"])
    assert "<html" in html.read_text().lower()
    report = list(root.glob("**/validate-local/report"))[0]
    manifest = json.loads((report / "manifest.json").read_text())
    assert manifest["metrics"], "validate recorded no metrics"
    assert list(root.glob("**/export-ir-local/ir/model.xml"))
    assert list(root.glob("**/publish-local/registration/skipped.json"))
