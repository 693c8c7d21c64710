"""KFP face: compile, checked-in YAML freshness, parameters from the schema, placement per device."""

import inspect
from pathlib import Path

import pytest
import yaml

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


def test_checked_in_yaml_is_current(tmp_path):
    fresh = Path(compile_pipeline(tmp_path / "p.yaml")).read_text()
    assert CHECKED_IN.read_text() == fresh, "stale: run python components/ptqflow_components.py"


def test_pipeline_parameters_come_from_the_schema(tmp_path):
    spec, _ = _compiled(tmp_path)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(EXPOSED) | {"base_config"}
    assert params["subset_size"]["parameterType"] == "NUMBER_INTEGER"
    assert params["subset_size"]["defaultValue"] == 300
    assert params["fast_bias_correction"]["parameterType"] == "BOOLEAN"
    assert params["min_cosine"]["defaultValue"] == "0.98"  # nullable -> str, "" means unset
    assert params["preset"]["defaultValue"] == ""


def test_lightweight_resolve_config_matches_pipeline_parameters():
    names = [p for p in inspect.signature(resolve_config.python_func).parameters if p != "config"]
    assert names == [n for n, *_ in pipeline_params()]


@pytest.mark.parametrize("kind", ["container", "local"])
def test_six_steps_wired_by_artifacts(tmp_path, kind):
    spec, _ = _compiled(tmp_path, kind)
    tasks = spec["root"]["dag"]["tasks"]
    assert len(tasks) == 8  # resolve-config + six steps + publish (a no-op without a registry section)
    by_display = {t["taskInfo"]["name"]: t for t in tasks.values()}
    pub = by_display["publish"]["inputs"]["artifacts"]
    assert {k: v["taskOutputArtifact"]["outputArtifactKey"] for k, v in pub.items()} == {
        "config": "config", "model": "model", "quantized": "quantized", "report": "report", "ir": "ir"}
    q = by_display["quantize"]["inputs"]["artifacts"]
    assert q["statistics"]["taskOutputArtifact"]["outputArtifactKey"] == "statistics"
    assert set(q) == {"config", "model", "calibration", "statistics"}
    assert "validate" in [tasks[d]["taskInfo"]["name"] for d in by_display["export-ir"]["dependentTasks"]]


def _executor(spec, platform, step):
    comp = spec["root"]["dag"]["tasks"][step.replace("-", "-")]["componentRef"]["name"]
    exec_name = spec["components"][comp]["executorLabel"]
    container = spec["deploymentSpec"]["executors"][exec_name]["container"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][exec_name]
    return container, k8s


@pytest.mark.parametrize("device,resource,label", [
    ("cuda", "nvidia.com/gpu", "nvidia.com/gpu.present"),
    ("npu", "npu.intel.com/accel", "intel.feature.node.kubernetes.io/npu"),
])
def test_accelerator_placement(tmp_path, device, resource, label):
    spec, platform = _compiled(tmp_path, "container", device)
    for step in STEP_INPUTS:
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
    for task_name, task in spec["root"]["dag"]["tasks"].items():
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
    for step in STEP_INPUTS:
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
        assert list(spec.inputs) == ["config", *s.inputs], s.name
        assert s.output in spec.outputs, s.name
