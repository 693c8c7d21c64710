"""KFP face end to end on a tiny generated model: the compiled container command lines run as local
subprocesses (both shard parameters 1: each loop's one whole-split step, passed on by its merge), and the
lightweight pipeline under kfp.local with statistics and validation each in 3 shards (ParallelFor, dsl.Collected
into merge-stats and merge-validation), whose statistics and INT8 model are byte for byte those of one
collect-stats and whose report has the values of one validate (real Metrics/HTML from merge-validation); and a
dynamic quantization's resolve-config and quantize containers (the branch without collect-stats)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
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


def _text(value) -> str:
    """A parameter as the launcher substitutes it: numbers without a needless ".0" (Go's FormatFloat 'f', -1)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fill(args, arts: dict[str, str], params: dict[str, str], executor_input: str = ""):
    """Replace KFP placeholders with local paths / parameter values (``{{$}}``: ``executor_input``)."""
    out = []
    for a in args:
        if a == "{{$}}":
            out.append(executor_input)
            continue
        if isinstance(a, str) and a.startswith('{"Concat"'):  # compiled as JSON text
            a = json.loads(a)
        if isinstance(a, dict):  # a ConcatPlaceholder: {"Concat": [...]}
            a = "".join(_fill(a["Concat"], arts, params))
        a = re.sub(r"\{\{\$\.(?:inputs|outputs)\.artifacts\['(\w+)'\]\.path\}\}", lambda m: arts[m.group(1)], a)
        a = re.sub(r"\{\{\$\.outputs\.parameters\['(\w+)'\]\.output_file\}\}", lambda m: arts[m.group(1)], a)
        a = re.sub(r"\{\{\$\.inputs\.parameters\['(\w+)'\]\}\}", lambda m: _text(params[m.group(1)]), a)
        out.append(a)
    return out


def _container(spec, name, branch: str = "collect-stats needed"):
    """The container of the task displayed as ``name`` in the run that takes ``branch`` (collect-stats "needed"
    or "skipped"), the loops' tasks included."""
    other = {"collect-stats needed": "collect-stats skipped", "collect-stats skipped": "collect-stats needed"}[branch]

    def tasks(dag):
        for task in dag["tasks"].values():
            if task["taskInfo"]["name"] != other:
                yield task
                yield from tasks(spec["components"][task["componentRef"]["name"]].get("dag", {"tasks": {}}))

    task = next(t for t in tasks(spec["root"]["dag"]) if t["taskInfo"]["name"] == name)
    executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][executor]["container"]


@pytest.mark.slow
def test_container_command_lines_run_locally(tmp_path, inputs):
    """Every container as KFP's launcher starts it, in dependency order, statistics_shards at its default 1: the
    shard list is [""], the loop's one collect-stats runs on the whole split and merge-stats passes its artifact on
    (its partials found through the executor input, as on a cluster)."""
    spec = yaml.safe_load(Path(compile_pipeline(tmp_path / "p.yaml")).read_text().split("\n---\n")[0])
    params = {n: p.get("defaultValue", "") for n, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    params.update(model=inputs["model"], data=inputs["data"], output=str(tmp_path / "unused"),
                  base_config=json.dumps(BASE), min_cosine="0.5")
    a = tmp_path / "a"
    arts = {"config": str(a / "config.json"), "items": str(a / "items.json"), "registration": str(a / "registration"),
            "collect_stats_needed": str(a / "collect_stats_needed")}
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(name, executor_input="", branch="collect-stats needed"):
        container = _container(spec, name, branch)
        cmd = _fill(container["command"] + container["args"], arts, params, executor_input)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"

    loops = {"collect-stats": "merge-stats", "validate": "merge-validation"}  # each loop's step and its merge
    for name in ["resolve-config", "fetch-model", "build-calibration", "statistics-shards", "collect-stats", "merge-stats",
                 "quantize", "validation-shards", "validate", "merge-validation", "export-ir", "publish"]:
        if name in OUTPUTS:
            arts[OUTPUTS[name][0]] = str(a / OUTPUTS[name][0])
        if name.endswith("-shards"):
            params["shards"] = params[name.replace("-", "_")]  # the shard list task's input
        if name in loops:
            (params["shard"],) = json.loads(Path(arts["items"]).read_text())  # one item: the whole split
            assert params["shard"] == ""
            arts[OUTPUTS[name][0]] = str(a / "loop-0" / OUTPUTS[name][0])
        merged = next((step for step, merge in loops.items() if merge == name), None)
        if merged:
            output = OUTPUTS[merged][0]
            partial, arts[output] = arts[output], str(a / output)
            run(name, json.dumps({"inputs": {"artifacts": {"partials": {"artifacts": [{"uri": partial}]}}}}))
            continue
        run(name)
    assert json.loads(Path(arts["config"]).read_text())["data"]["validation_size"] == 8
    assert Path(arts["collect_stats_needed"]).read_text() == "true"  # static quantization: its branch ran here
    for name in ("statistics.npz", "plan.json", "manifest.json"):  # passed on as collect-stats wrote it
        assert (a / "statistics" / name).read_bytes() == (a / "loop-0" / "statistics" / name).read_bytes()
    assert json.loads((a / "statistics" / "manifest.json").read_text())["step"] == "collect-stats"
    report = json.loads((Path(arts["report"]) / "manifest.json").read_text())
    assert report["step"] == "validate"  # the one whole-split report, passed on by merge-validation
    assert (a / "report" / "report.json").read_bytes() == (a / "loop-0" / "report" / "report.json").read_bytes()
    assert (Path(arts["ir"]) / "model.xml").is_file()
    # No registry section in the config: publish records that it skipped and registers nothing.
    assert "registry" in json.loads((Path(arts["registration"]) / "skipped.json").read_text())["skipped"]
    # Dynamic quantization (static false in the base config, the parameter at its default): resolve-config says
    # "false", and the skipped branch's quantize container makes the dynamic model without statistics.
    dynamic = json.loads(json.dumps(BASE))
    dynamic["quantization"]["static"] = False
    params["base_config"] = json.dumps(dynamic)
    arts.update(config=str(a / "dynamic.json"), collect_stats_needed=str(a / "dynamic_needed"),
                quantized=str(a / "dynamic-quantized"))
    run("resolve-config")
    assert Path(arts["collect_stats_needed"]).read_text() == "false"
    run("quantize", branch="collect-stats skipped")
    ops = {n.op_type for n in onnx.load(Path(arts["quantized"]) / "model.onnx").graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert set(json.loads((Path(arts["quantized"]) / "manifest.json").read_text())["inputs"]) == {"model", "calibration"}


@pytest.mark.slow
def test_lightweight_pipeline_under_kfp_local(tmp_path, inputs, monkeypatch):
    """statistics_shards=3 and validation_shards=3 under kfp.local: three collect-stats and three validate in their
    ParallelFor loops (uneven shards), merge-stats and merge-validation on their dsl.Collected outputs; the
    statistics and the INT8 model are those one collect-stats gives, the report's values those of one validate."""
    from kfp import local

    from ptqflow.config import load_config
    from ptqflow.orchestration.kfp_face import build_pipeline
    from ptqflow.pipeline.runner import run_step

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    pipeline = build_pipeline("local")
    base = json.loads(json.dumps(BASE))
    base["quantization"]["subset_size"] = 20  # 20 of the 24 samples calibrate: shards of 8, 8 and 4
    base["data"]["validation_size"] = 4  # and 4 validate: shards of 1, 1 and 2
    run = pipeline(model=inputs["model"], data=inputs["data"], output=str(tmp_path / "unused"),
                   base_config=json.dumps(base), min_cosine="0.5", subset_size=20, statistics_shards=3,
                   validation_shards=3)
    del run
    root = tmp_path / "root"
    executor = json.loads(next(root.glob("**/merge-validation-local/executor_output.json")).read_text())
    # Metrics are KFP metadata (numbers from the merged manifest); the HTML artifact is the report file.
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["samples"] == 4.0 and 0.5 <= metrics["min_cosine"] <= 1.0
    assert all(isinstance(v, float) for v in metrics.values())
    html = Path(executor["artifacts"]["html"]["artifacts"][0]["uri"]).read_text()
    # The HTML artifact is the merged report.html: the same page, the quantize step's decisions included.
    assert "<html" in html.lower() and 'id="decisions"' in html and 'id="ignored-scope-yaml"' in html
    assert list(root.glob("**/export-ir-local/ir/model.xml"))
    assert list(root.glob("**/publish-local/registration/skipped.json"))
    # The fan-outs: three shards each, merged.
    for step, output, counts in (("collect-stats", "statistics", [8, 8, 4]), ("validate", "report", [1, 1, 2])):
        shards = sorted((json.loads((p / "manifest.json").read_text())["config"]["shard"],
                         json.loads((p / "manifest.json").read_text())["metrics"]["num_samples"])
                        for p in root.glob(f"**/{step}-local*/{output}"))
        assert shards == [(f"{i}/3", n) for i, n in enumerate(counts)], shards
    (merged,) = root.glob("**/merge-stats-local/statistics")
    assert json.loads((merged / "manifest.json").read_text())["metrics"]["shards"] == 3
    (report,) = root.glob("**/merge-validation-local/report")
    assert json.loads((report / "manifest.json").read_text())["step"] == "merge-validation"
    # The same bytes as one collect-stats, the same model as one quantize, the same values as one validate, all
    # on the run's own artifacts.
    (model,) = root.glob("**/fetch-model-local/model")
    (calibration,) = root.glob("**/build-calibration-local/calibration")
    (config,) = root.glob("**/resolve-config/config")
    cfg = load_config(str(config))
    run_step("collect-stats", {"model": str(model), "calibration": str(calibration)}, str(tmp_path / "whole"), cfg)
    for name in ("statistics.npz", "plan.json"):
        assert (merged / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    run_step("quantize", {"model": str(model), "calibration": str(calibration), "statistics": str(tmp_path / "whole")},
             str(tmp_path / "q"), cfg)
    (quantized,) = root.glob("**/quantize-local/quantized")
    assert (quantized / "model.onnx").read_bytes() == (tmp_path / "q" / "model.onnx").read_bytes()
    run_step("validate", {"model": str(model), "quantized": str(quantized), "calibration": str(calibration)},
             str(tmp_path / "v"), cfg)
    whole = json.loads((tmp_path / "v" / "report.json").read_text())
    got = json.loads((report / "report.json").read_text())
    assert {k: v for k, v in got.items() if k != "speed"} == {k: v for k, v in whole.items() if k != "speed"}



@pytest.mark.slow
def test_accuracy_control_model_reaches_export_ir_through_the_containers(tmp_path):
    """validation.accuracy_control through the compiled containers: the validate loop's container gets the
    statistics artifact, its accuracy control makes the failing gate pass and leaves the model it found in the
    report artifact, which the export-ir container takes besides quantize's Model and converts (the steps before
    validate run in process: their containers are test_container_command_lines_run_locally's)."""
    from ptqflow.artifacts.manifest import read_manifest
    from ptqflow.config import parse_config
    from ptqflow.pipeline.runner import run_step
    from test_accuracy_gate import config, write_inputs

    model, data = write_inputs(tmp_path / "src")
    cfg = {**config(True), "model": str(model), "data": {**config(True)["data"], "source": str(data)}}
    a = tmp_path / "a"
    a.mkdir()
    arts = {"config": str(a / "config.json")}
    Path(arts["config"]).write_text(json.dumps(cfg))
    parsed = parse_config(cfg)
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize"):
        name = OUTPUTS[step][0]
        arts[name] = str(a / name)
        run_step(step, {n: arts[n] for n in STEP_INPUTS[step]}, arts[name], parsed)
    spec = yaml.safe_load(Path(compile_pipeline(tmp_path / "p.yaml")).read_text().split("\n---\n")[0])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    arts.update(report=str(a / "report"), ir=str(a / "ir"))
    for name in ("validate", "export-ir"):
        container = _container(spec, name)
        cmd = _fill(container["command"] + container["args"], arts, {"shard": ""})
        assert ("--in-statistics" in cmd) == (name == "validate") and ("--in-report" in cmd) == (name == "export-ir")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
    report = json.loads((a / "report" / "report.json").read_text())
    assert report["verdict"] == "pass" and report["accuracy_control"]["published"]
    assert [r["tensor"] for r in report["accuracy_control"]["reverted"]] == ["h0"]
    ir = read_manifest(a / "ir")
    assert ir.extra["int8_from"] == "validate (accuracy control)" and ir.inputs["report"] == read_manifest(a / "report").digest
