"""KFP face: compile, checked-in YAML freshness, parameters from the schema, placement per device, the fan-outs of
collect-stats and validate (ParallelFor over the shards, their merge), and the branch on resolve-config's word that
skips collect-stats for dynamic quantization."""

import inspect
from pathlib import Path

import pytest
import yaml

from ptqflow.orchestration import FAN_OUTS as FAN_OUT_STEPS
from ptqflow.orchestration import STEP_INPUTS
from ptqflow.orchestration.kfp_face import compile_pipeline, pipeline_params
from ptqflow.orchestration.kfp_local import resolve_config
from ptqflow.orchestration.params import EXPOSED

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "components" / "ptqflow_pipeline.yaml"


def _compiled(tmp_path, kind="container", device="cpu"):
    path = compile_pipeline(tmp_path / f"{kind}-{device}.yaml", kind, device)
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


BRANCH = {True: "collect-stats needed", False: "collect-stats skipped"}  # the dsl.If / dsl.Else branch's name


def _all_tasks(spec, dag=None, needed: bool = True) -> dict:
    """{display name: task spec} of every task of the run where collect-stats is ``needed`` (the other branch
    left out), those in sub-DAGs (the branches', the ParallelFor's) included."""
    out = {}
    for task in (dag or spec["root"]["dag"])["tasks"].values():
        if task["taskInfo"]["name"] == BRANCH[not needed]:
            continue
        out[task["taskInfo"]["name"]] = task
        inner = spec["components"][task["componentRef"]["name"]].get("dag")
        if inner:
            out.update(_all_tasks(spec, inner, needed))
    return out


def _tasks(spec, needed: bool = True) -> dict:
    """{task key: task spec} of the root DAG's tasks before the branches and those of the branch taken when
    collect-stats is ``needed`` (not its loops' inner tasks): one DAG's view of the run."""
    def branch_dag(dag):
        for task in dag["tasks"].values():
            inner = spec["components"][task["componentRef"]["name"]].get("dag")
            if task["taskInfo"]["name"] == BRANCH[needed]:
                return inner
            if inner and task["taskInfo"]["name"].startswith("condition-branches"):
                return branch_dag(inner)
        return None

    root = spec["root"]["dag"]
    before = {k: t for k, t in root["tasks"].items() if not t["taskInfo"]["name"].startswith("condition-branches")}
    return {**before, **branch_dag(root)["tasks"]}


def _producer(tasks: dict, source: dict) -> str:
    """The display name of the task an input artifact comes from, inside a branch (``componentInputArtifact``
    ``pipelinechannel--<task>-<output>``) or not (``taskOutputArtifact``)."""
    if "taskOutputArtifact" in source:
        return tasks[source["taskOutputArtifact"]["producerTask"]]["taskInfo"]["name"]
    channel = source["componentInputArtifact"].removeprefix("pipelinechannel--")
    return next(t["taskInfo"]["name"] for k, t in tasks.items() if channel.startswith(k + "-"))


def _executor(spec, platform, name):
    """The container and kfp-kubernetes settings of the task displayed as ``name`` (in the loop or not)."""
    comp = _all_tasks(spec)[name]["componentRef"]["name"]
    exec_name = spec["components"][comp]["executorLabel"]
    container = spec["deploymentSpec"]["executors"][exec_name]["container"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][exec_name]
    return container, k8s


def test_checked_in_yaml_is_current(tmp_path):
    fresh = Path(compile_pipeline(tmp_path / "p.yaml")).read_text()
    assert CHECKED_IN.read_text() == fresh, "stale: run python components/ptqflow_components.py"


def test_pipeline_parameters_come_from_the_schema(tmp_path):
    spec, _ = _compiled(tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(EXPOSED) | {"base_config", "statistics_shards", "validation_shards"}
    for shards in ("statistics_shards", "validation_shards"):
        assert params[shards]["parameterType"] == "NUMBER_INTEGER"
        assert params[shards]["defaultValue"] == 1
    assert params["subset_size"]["parameterType"] == "NUMBER_INTEGER"
    assert params["subset_size"]["defaultValue"] == 300
    assert params["fast_bias_correction"]["parameterType"] == "BOOLEAN"
    assert params["min_cosine"]["defaultValue"] == "0.98"  # nullable -> str, "" means unset
    assert params["preset"]["defaultValue"] == ""


def test_lightweight_resolve_config_matches_pipeline_parameters():
    outputs = ("config", "collect_stats_needed")
    names = [p for p in inspect.signature(resolve_config.python_func).parameters if p not in outputs]
    assert names == [n for n, *_ in pipeline_params()]


@pytest.mark.parametrize("kind", ["container", "local"])
def test_six_steps_wired_by_artifacts(tmp_path, kind):
    spec, _ = _compiled(tmp_path, kind)
    tasks = _tasks(spec)
    # resolve-config, six steps (collect-stats and validate in their loops), each loop's shard list and merge,
    # publish (a no-op without a registry section)
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == sorted(
        ["resolve-config", "fetch-model", "build-calibration", "statistics-shards", "for-loop-2", "merge-stats",
         "quantize", "validation-shards", "for-loop-3", "merge-validation", "export-ir", "publish"])
    by_display = {t["taskInfo"]["name"]: t for t in tasks.values()}
    pub = by_display["publish"]["inputs"]["artifacts"]
    assert {k: _producer(tasks, v) for k, v in pub.items()} == {
        "config": "resolve-config", "model": "fetch-model", "quantized": "quantize", "report": "merge-validation",
        "ir": "export-ir"}
    q = by_display["quantize"]["inputs"]["artifacts"]
    assert q["statistics"]["taskOutputArtifact"]["outputArtifactKey"] == "statistics"
    assert _producer(tasks, q["statistics"]) == "merge-stats"
    assert set(q) == {"config", "model", "calibration", "statistics"}
    # export-ir runs after merge-validation (only what passed the gate), and takes its report: the INT8 model
    # validate's accuracy control publishes there (validation.accuracy_control).
    assert "merge-validation" in [tasks[d]["taskInfo"]["name"] for d in by_display["export-ir"]["dependentTasks"]]
    ir = by_display["export-ir"]["inputs"]["artifacts"]
    assert {k: _producer(tasks, v) for k, v in ir.items()} == {
        "config": "resolve-config", "model": "fetch-model", "quantized": "quantize", "calibration": "build-calibration",
        "report": "merge-validation"}


@pytest.mark.parametrize("kind", ["container", "local"])
def test_dynamic_quantization_branch_skips_collect_stats(tmp_path, kind):
    """resolve-config says whether collect-stats runs (an output parameter, from the resolved config: base config
    and parameters together); the pipeline branches on it: dsl.If "true" runs collect-stats and the later steps,
    dsl.Else the same later steps without it, quantize reading no statistics."""
    spec, _ = _compiled(tmp_path, kind)
    resolve = spec["components"]["comp-resolve-config"]
    assert resolve["outputDefinitions"]["parameters"]["collect_stats_needed"]["parameterType"] == "STRING"
    conditions = {n: t["triggerPolicy"]["condition"] for n, t in _all_tasks(spec).items() if "triggerPolicy" in t}
    conditions.update({n: t["triggerPolicy"]["condition"] for n, t in _all_tasks(spec, needed=False).items()
                       if "triggerPolicy" in t})
    channel = "inputs.parameter_values['pipelinechannel--resolve-config-collect_stats_needed'] == 'true'"
    assert conditions == {BRANCH[True]: channel, BRANCH[False]: f"!({channel})"}
    tasks = _tasks(spec, needed=False)
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == sorted(
        ["resolve-config", "fetch-model", "build-calibration", "quantize", "validation-shards", "for-loop-6",
         "merge-validation", "export-ir", "publish"])
    by_display = {t["taskInfo"]["name"]: t for t in tasks.values()}
    assert set(by_display["quantize"]["inputs"]["artifacts"]) == {"config", "model", "calibration"}
    assert _producer(tasks, by_display["publish"]["inputs"]["artifacts"]["quantized"]) == "quantize"
    if kind == "container":  # its own component: the CLI without --in-statistics
        comp = spec["components"][by_display["quantize"]["componentRef"]["name"]]
        args = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]["args"]
        assert args[0] == "quantize" and "--in-statistics" not in args and "--in-calibration" in args


FAN_OUTS = [("statistics_shards", "statistics-shards", "for-loop-2", "collect-stats", "merge-stats", "statistics",
             {"config", "model", "calibration"}),
            ("validation_shards", "validation-shards", "for-loop-3", "validate", "merge-validation", "report",
             {"config", "model", "quantized", "calibration", "statistics"})]


@pytest.mark.parametrize("param,lister,loop_name,step,merge_name,output,inputs", FAN_OUTS)
@pytest.mark.parametrize("kind", ["container", "local"])
def test_fan_out(tmp_path, kind, param, lister, loop_name, step, merge_name, output, inputs):
    """The lister task turns the shards parameter into the loop's items; ParallelFor runs the step once per item
    (its ``shard``); the merge takes the loop's outputs as one list (dsl.Collected) and gives the later steps the
    step's artifact."""
    spec, _ = _compiled(tmp_path, kind)
    tasks = _tasks(spec)  # in the branch where collect-stats runs
    shards = next(k for k, t in tasks.items() if t["taskInfo"]["name"] == lister)
    assert tasks[shards]["inputs"]["parameters"]["shards"] == {"componentInputParameter": f"pipelinechannel--{param}"}
    loop = tasks[loop_name]
    items = loop["parameterIterator"]["items"]["inputParameter"]
    assert loop["inputs"]["parameters"][items]["taskOutputParameter"]["producerTask"] == shards
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    (task,) = inner.values()
    assert task["taskInfo"]["name"] == step
    assert task["inputs"]["parameters"]["shard"] == {"componentInputParameter": loop["parameterIterator"]["itemInput"]}
    assert set(task["inputs"]["artifacts"]) == inputs
    merge = next(t for t in tasks.values() if t["taskInfo"]["name"] == merge_name)
    source = merge["inputs"]["artifacts"]["partials"]["taskOutputArtifact"]
    assert source["producerTask"] == loop_name
    loop_out = spec["components"][loop["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    assert loop_out[source["outputArtifactKey"]]["isArtifactList"] is True
    merge_spec = spec["components"][merge["componentRef"]["name"]]
    assert merge_spec["inputDefinitions"]["artifacts"]["partials"]["isArtifactList"] is True
    assert output in merge_spec["outputDefinitions"]["artifacts"]
    if kind == "local" and step == "validate":  # KFP Metrics and the HTML report come from the merged report
        assert {"metrics", "html"} <= set(merge_spec["outputDefinitions"]["artifacts"])


@pytest.mark.parametrize("param,lister,loop_name,step,merge_name,output,inputs", FAN_OUTS)
def test_fan_out_containers(tmp_path, param, lister, loop_name, step, merge_name, output, inputs):
    """The shard list, a shard's step and the merge run kfp_runtime in the image; the step takes the loop item as
    ``--shard``, the merge its partials from the executor input ({{$}})."""
    spec, platform = _compiled(tmp_path, "container", "cuda")
    container, _ = _executor(spec, platform, step)
    assert container["command"] == ["python", "-m", "ptqflow.orchestration.kfp_runtime"]
    args = container["args"]
    assert args[0] == step and args[args.index("--shard") + 1] == "{{$.inputs.parameters['shard']}}"
    assert args[args.index("--out") + 1] == f"{{{{$.outputs.artifacts['{output}'].path}}}}"
    assert {a.removeprefix("--in-") for a in args if a.startswith("--in-")} == inputs - {"config"}
    container, _ = _executor(spec, platform, merge_name)
    assert container["args"][0] == merge_name and container["args"][-2:] == ["--executor-input", "{{$}}"]
    assert container["args"][container["args"].index("--out") + 1] == f"{{{{$.outputs.artifacts['{output}'].path}}}}"
    container, _ = _executor(spec, platform, lister)
    assert container["args"] == [lister, "--shards", "{{$.inputs.parameters['shards']}}", "--out",
                                 "{{$.outputs.parameters['items'].output_file}}"]


@pytest.mark.parametrize("device,resource,label", [
    ("cuda", "nvidia.com/gpu", "nvidia.com/gpu.present"),
    ("npu", "npu.intel.com/accel", "intel.feature.node.kubernetes.io/npu"),
])
def test_accelerator_placement(tmp_path, device, resource, label):
    spec, platform = _compiled(tmp_path, "container", device)
    # The loops' collect-stats and validate: each shard's pod is placed as its step's.
    for step in [*STEP_INPUTS, "statistics-shards", "merge-stats", "validation-shards", "merge-validation"]:
        container, k8s = _executor(spec, platform, step)
        env = {e["envVar"] for s in k8s["secretAsEnv"] for e in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env
        assert k8s["secretAsEnv"][0]["secretName"] == "ptqflow-s3"
        accel = container["resources"].get("accelerator")
        if step in ("collect-stats", "quantize", "validate"):
            assert accel["resourceType"] == resource and accel["resourceCount"] == "1"
            assert k8s["nodeSelector"]["labels"] == {label: "true"}
            assert k8s["tolerations"] == [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
            assert container["image"].endswith(f"-{device}")
        else:
            assert accel is None
            assert k8s["nodeSelector"]["labels"] == {"kubernetes.io/arch": "amd64"}
            assert "tolerations" not in k8s
            assert not container["image"].endswith(f"-{device}")


def test_registry_secret_env_only_on_fetch_model_and_publish(tmp_path):
    """The tasks that talk to the model registry take MLflow's env from the registry Secret, optional (a Secret
    holding only some keys, or none, lets the pod start); the S3 Secret stays required everywhere."""
    from ptqflow.orchestration.pod_placement import REGISTRY_SECRET_ENV, REGISTRY_SECRET_NAME

    spec, platform = _compiled(tmp_path, "container", "cuda")
    containers = {n: t for n, t in _all_tasks(spec).items() if "executorLabel" in spec["components"][
        t["componentRef"]["name"]]}
    assert len(containers) == 12 and {"collect-stats", "validate"} <= set(containers)  # the loops' tasks included
    for task_name, task in containers.items():
        _, k8s = _executor(spec, platform, task_name)
        s3, *registry = k8s["secretAsEnv"]
        assert s3["secretName"] == "ptqflow-s3" and s3["optional"] is False
        if task["taskInfo"]["name"] in ("fetch-model", "publish"):
            (reg,) = registry
            assert reg["secretName"] == REGISTRY_SECRET_NAME and reg["optional"] is True
            assert {e["envVar"]: e["secretKey"] for e in reg["keyToEnv"]} == REGISTRY_SECRET_ENV
        else:
            assert registry == [], task_name


def test_cpu_placement_has_no_accelerator(tmp_path):
    spec, platform = _compiled(tmp_path, "container", "cpu")
    for step in [*STEP_INPUTS, "statistics-shards", "merge-stats", "validation-shards", "merge-validation"]:
        container, k8s = _executor(spec, platform, step)
        assert "accelerator" not in container["resources"]
        assert container["resources"]["resourceCpuLimit"] in ("2", "4")
        assert "tolerations" not in k8s


def test_container_command_is_the_cli(tmp_path):
    spec, platform = _compiled(tmp_path, "container", "cuda")
    container, _ = _executor(spec, platform, "quantize")
    assert container["command"] == ["ptqflow", "--log-format", "json"]
    args = container["args"]
    assert args[0] == "quantize"
    assert args[args.index("--in-statistics") + 1] == "{{$.inputs.artifacts['statistics'].path}}"
    assert args[args.index("--out") + 1] == "{{$.outputs.artifacts['quantized'].path}}"
    assert args[args.index("--config") + 1] == "{{$.inputs.artifacts['config'].path}}"


def test_submit_arguments_from_config_file(tmp_path):
    import json

    from ptqflow.orchestration.kfp_runtime import resolve_config as resolve
    from ptqflow.orchestration.kfp_submit import run_arguments

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: s3://b/m.onnx\nquantization:\n  preset: mixed\n  subset_size: 32\n"
                   "data:\n  validation_size: 8\n")
    args = run_arguments(str(cfg))
    assert args["model"] == "s3://b/m.onnx" and args["preset"] == "mixed" and args["subset_size"] == 32
    assert args["min_sqnr_db"] == ""  # unset nullable field
    assert json.loads(args["base_config"])["data"]["validation_size"] == 8
    # What resolve-config makes of those arguments is the same config.
    values = {EXPOSED[k]: v for k, v in args.items() if k in EXPOSED}
    data = resolve(tmp_path / "c.json", values, args["base_config"])
    assert data["quantization"]["subset_size"] == 32 and data["data"]["validation_size"] == 8
    assert data["quantization"]["preset"] == "mixed" and data["validation"]["gate"]["min_sqnr_db"] is None


def test_resolve_config_rejects_bad_values(tmp_path):
    from ptqflow.errors import ConfigError
    from ptqflow.orchestration.kfp_runtime import main

    assert main(["resolve-config", "--out", str(tmp_path / "c.json"), "--set", "quantization.subset_size=-3"]) \
        == ConfigError.exit_code
    assert not (tmp_path / "c.json").exists()


def test_lightweight_components_match_the_steps_table():
    """kfp_local's components spell their artifacts in their signatures (KFP ships their source): they must
    take the inputs and make the output that ptqflow.pipeline.steps.STEPS gives each step."""
    from ptqflow.orchestration.kfp_local import STEP_COMPONENTS, publish_local
    from ptqflow.pipeline.steps import STEPS

    components = {**STEP_COMPONENTS, "publish": publish_local}
    assert list(components) == [s.name for s in STEPS]
    for s in STEPS:
        spec = components[s.name].component_spec
        shard = ["shard"] if s.name in FAN_OUT_STEPS else []  # the loop item: "I/N", or "" for the whole split
        assert list(spec.inputs) == ["config", *s.inputs, *shard], s.name
        assert s.output in spec.outputs, s.name


def test_fan_out_runtime(tmp_path):
    """kfp_runtime's side of the fan-outs: the loops' items, the partials' paths from an executor input (where the
    launcher downloads each URI), the pass-through of one whole-split artifact, and a bad shard count (named)."""
    import json
    import shutil

    from ptqflow.artifacts.manifest import write_manifest
    from ptqflow.errors import ConfigError
    from ptqflow.orchestration.kfp_runtime import input_artifact_paths, main, merge_on_paths, shard_items

    assert shard_items(1, "statistics_shards") == [""] and shard_items(3, "validation_shards") == ["0/3", "1/3", "2/3"]
    with pytest.raises(ConfigError, match="validation_shards"):
        shard_items(0, "validation_shards")
    executor_input = {"inputs": {"artifacts": {"partials": {"artifacts": [
        {"uri": "s3://b/root/run/collect-stats/statistics"}, {"uri": "minio://b/k"}, {"uri": "gs://b/k"},
        {"uri": str(tmp_path / "local")}]}}}}
    assert input_artifact_paths(json.dumps(executor_input), "partials") == [
        "/s3/b/root/run/collect-stats/statistics", "/minio/b/k", "/gcs/b/k", str(tmp_path / "local")]
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "statistics.npz").write_bytes(b"npz")
    manifest = write_manifest(whole, step="collect-stats", config={"device": "cpu"}, inputs={}, metrics={"n": 1})
    result = merge_on_paths("merge-stats", [str(whole)], str(tmp_path / "out"), str(tmp_path / "unused.json"))
    assert result["digest"] == manifest.digest
    assert (tmp_path / "out" / "statistics.npz").read_bytes() == b"npz"
    shutil.rmtree(tmp_path / "out")
    # One whole-split validate report is passed on by merge-validation the same way (only its own step's).
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text("{}")
    manifest = write_manifest(report, step="validate", config={"device": "cpu"}, inputs={}, metrics={"samples": 4})
    assert merge_on_paths("merge-validation", [str(report)], str(tmp_path / "out"), "unused")["digest"] == \
        manifest.digest
    assert (tmp_path / "out" / "report.json").read_text() == "{}"
    for lister in ("statistics-shards", "validation-shards"):
        assert main([lister, "--shards", "0", "--out", str(tmp_path / "items.json")]) == ConfigError.exit_code
        assert main([lister, "--shards", "2", "--out", str(tmp_path / "items.json")]) == 0
        assert json.loads((tmp_path / "items.json").read_text()) == ["0/2", "1/2"]


def test_merge_validation_container_fails_on_a_failed_gate(tmp_path):
    """The validate loop's containers as kfp_runtime runs them, with a gate that fails: each shard passes (a shard
    has no gate), merge-validation reads the partials from the executor input, writes the report where KFP takes
    the artifact from and exits 4 (the task fails, so the run does: export-ir waits for it); that report is the one
    validate writes on the whole split (the loop's one item when validation_shards is 1), speed aside, and that
    one fails its gate the same way."""
    import json

    from ptqflow.errors import GateFailedError
    from ptqflow.orchestration.kfp_runtime import main
    from test_validate import make_artifacts

    dirs = make_artifacts(tmp_path, n=6, levels=3)  # 3-level weights: SQNR far below 60 dB
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"validation": {"latency_iterations": 2,
                                                 "gate": {"min_speedup": None, "min_sqnr_db": 60.0}}}))
    inputs = [arg for name, path in dirs.items() for arg in (f"--in-{name}", str(path))]
    parts = [tmp_path / "loop" / str(i) for i in range(2)]
    for i, part in enumerate(parts):
        assert main(["validate", "--shard", f"{i}/2", "--config", str(config), "--out", str(part), *inputs]) == 0
    executor_input = {"inputs": {"artifacts": {"partials": {"artifacts": [{"uri": str(p)} for p in parts]}}}}
    merged = tmp_path / "merge-validation" / "report"
    assert main(["merge-validation", "--config", str(config), "--out", str(merged),
                 "--executor-input", json.dumps(executor_input)]) == GateFailedError.exit_code
    whole = tmp_path / "whole"
    assert main(["validate", "--shard", "", "--config", str(config), "--out", str(whole), *inputs]) == \
        GateFailedError.exit_code
    got, expected = (json.loads((d / "report.json").read_text()) for d in (merged, whole))
    assert got["verdict"] == "fail" and got["samples"] == 6
    assert {k: v for k, v in got.items() if k != "speed"} == {k: v for k, v in expected.items() if k != "speed"}
