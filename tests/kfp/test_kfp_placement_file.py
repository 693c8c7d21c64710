"""KFP face with a placement file (the Helm chart's ConfigMap): images, resources, node selector, tolerations,
node affinity, the S3 Secret and the registry Secret in the compiled pipeline come from the file."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ptqflow import __version__
from ptqflow.errors import ConfigError
from ptqflow.orchestration import STEP_INPUTS
from ptqflow.orchestration.kfp_face import compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
NODE_AFFINITY = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a100", "h100"]}]}]}}
PLACEMENT = {
    "devices": {
        "cpu": {"image": "registry.example/ptqflow:9.9.9", "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                                         "limits": {"cpu": "3", "memory": "3Gi"}},
                "nodeSelector": {"pool": "general"}},
        "gpu": {"image": "registry.example/ptqflow:9.9.9-cuda", "accelerator": "nvidia.com/gpu",
                "resources": {"requests": {"cpu": "6", "memory": "20Gi", "nvidia.com/gpu": "2"},
                              "limits": {"cpu": "8", "memory": "24Gi", "nvidia.com/gpu": "2"}},
                "nodeSelector": {"pool": "a100"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": NODE_AFFINITY}},
        "npu": {"accelerator": "npu.intel.com/accel", "resources": {"limits": {"npu.intel.com/accel": "1"}}},
    },
    "s3": {"secretName": "team-s3", "env": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}},
    "registry": {"secretName": "team-mlflow", "env": {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"}},
}


def _configmap(tmp_path, placement=PLACEMENT):
    """The placement file wrapped in a ConfigMap, as the chart renders it."""
    path = tmp_path / "placement-cm.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"},
                                    "data": {"placement.yaml": yaml.safe_dump(placement)}}))
    return path


def _executors(path, dag=None, docs=None):
    """{display name: (container, kfp-kubernetes settings)} of every container task, the loop's included."""
    spec, platform = docs or list(yaml.safe_load_all(Path(path).read_text()))
    out = {}
    for task in (dag or spec["root"]["dag"])["tasks"].values():
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:  # a fan-out loop (collect-stats, validate)
            out.update(_executors(path, component["dag"], (spec, platform)))
            continue
        exec_name = component["executorLabel"]
        out[task["taskInfo"]["name"]] = (spec["deploymentSpec"]["executors"][exec_name]["container"],
                                         platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][exec_name])
    return out


def test_compile_entry_point_takes_the_placement_file(tmp_path):
    out = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, str(ROOT / "components" / "ptqflow_components.py"), "--device", "cuda",
                    "--placement", str(_configmap(tmp_path)), "--out", str(out)], check=True, timeout=120)
    executors = _executors(out)
    steps = set(STEP_INPUTS) | {"resolve-config", "statistics-shards", "merge-stats", "validation-shards",
                                "merge-validation"}
    assert steps | {"publish"} <= set(executors)
    for step in steps | {"publish"}:
        container, k8s = executors[step]
        secrets = {s["secretName"]: {e["envVar"]: e["secretKey"] for e in s["keyToEnv"]} for s in k8s["secretAsEnv"]}
        assert secrets.pop("team-s3") == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}
        # Only the tasks that talk to the model registry get its Secret.
        registry = {"team-mlflow": {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"}}
        assert secrets == (registry if step in ("fetch-model", "publish") else {}), step
        if step == "publish":
            continue
        res = container["resources"]
        if step in ("collect-stats", "quantize", "validate"):
            assert container["image"] == "registry.example/ptqflow:9.9.9-cuda"
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "2"
            assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("6", "8")
            assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("20Gi", "24Gi")
            assert k8s["nodeSelector"]["labels"] == {"pool": "a100"}
            assert k8s["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                           "effect": "NoSchedule"}]
            assert k8s["nodeAffinity"][0]["nodeAffinityJson"]["runtimeValue"]["constant"] == NODE_AFFINITY
        else:
            assert container["image"] == "registry.example/ptqflow:9.9.9"
            assert "accelerator" not in res and res["resourceCpuLimit"] == "3"
            assert k8s["nodeSelector"]["labels"] == {"pool": "general"}
            assert "tolerations" not in k8s and "nodeAffinity" not in k8s


def test_npu_entry_without_cpu_or_memory_settings(tmp_path):
    path = compile_pipeline(tmp_path / "p.yaml", "container", "npu", str(_configmap(tmp_path)))
    container, k8s = _executors(path)["quantize"]
    assert container["resources"]["accelerator"]["resourceType"] == "npu.intel.com/accel"
    assert "resourceCpuLimit" not in container["resources"] and "nodeSelector" not in k8s


def test_pod_affinity_is_refused(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(PLACEMENT))
    bad["devices"]["gpu"]["affinity"]["podAntiAffinity"] = {"preferredDuringSchedulingIgnoredDuringExecution": []}
    with pytest.raises(ConfigError, match="affinity.podAntiAffinity"):
        compile_pipeline(tmp_path / "p.yaml", "container", "cuda", str(_configmap(tmp_path, bad)))
    assert not (tmp_path / "p.yaml").exists()


def test_chart_values_reach_the_compiled_pipeline(tmp_path):
    """Configured once: the NPU example values, rendered by the Helm chart into its placement ConfigMap (as
    `helm template --show-only templates/placement-configmap.yaml` prints it), place the compiled tasks."""
    import helm_python as helm

    values = yaml.safe_load((ROOT / "helm" / "examples" / "values-npu-pool.yaml").read_text())
    with helm.Chart.load(str(ROOT / "helm" / "ptqflow")) as chart:
        text = chart.render(values, name="rel", namespace="ptqflow")["ptqflow/templates/placement-configmap.yaml"]
        merged = chart.merge_values(values)["devices"]
    path = tmp_path / "placement.yaml"
    path.write_text(text)
    executors = _executors(compile_pipeline(tmp_path / "p.yaml", "container", "npu", str(path)))
    container, k8s = executors["quantize"]
    npu = merged["npu"]
    assert container["image"] == f"{npu['image']['repository']}:{npu['image']['tag']}"
    res = container["resources"]
    assert res["accelerator"]["resourceType"] == "npu.intel.com/accel"
    assert res["accelerator"]["resourceCount"] == npu["resources"]["limits"]["npu.intel.com/accel"]
    assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == (npu["resources"]["limits"]["cpu"],
                                                                     npu["resources"]["limits"]["memory"])
    assert k8s["nodeSelector"]["labels"] == npu["nodeSelector"]
    assert k8s["tolerations"] == npu["tolerations"]
    container, k8s = executors["fetch-model"]
    assert container["image"] == f"ghcr.io/ptqflow/ptqflow:{__version__}"  # the chart's default cpu image
    assert k8s["nodeSelector"]["labels"] == merged["cpu"]["nodeSelector"]
