"""Step pod placement: the built-in table and the placement file that replaces it (ptqflow.orchestration.pod_placement)."""

from __future__ import annotations

import pytest
import yaml

from ptqflow.errors import ConfigError
from ptqflow.orchestration import pod_placement as P

FILE = {
    "devices": {
        "cpu": {"image": "registry.example/ptqflow:1.2.3", "resources": {"requests": {"cpu": 1, "memory": "2Gi"},
                                                                         "limits": {"cpu": "3", "memory": "6Gi"}},
                "nodeSelector": {"pool": "cpu"}},
        "gpu": {"image": "registry.example/ptqflow:1.2.3-cuda", "accelerator": "nvidia.com/gpu",
                "resources": {"requests": {"cpu": "2", "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}},
                "nodeSelector": {"pool": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                                 "tolerationSeconds": 60}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "gpu.memory", "operator": "Gt", "values": ["40000"]}]}]}}}},
        "npu": {"accelerator": "npu.intel.com/accel", "resources": {"limits": {"npu.intel.com/accel": "1"}}},
    },
    "s3": {"secretName": "team-s3", "env": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}},
    "registry": {"secretName": "team-mlflow", "env": {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"}},
}


def _write(tmp_path, data, name="placement.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_builtin_table_when_no_file(monkeypatch):
    monkeypatch.delenv(P.PLACEMENT_FILE_ENV, raising=False)
    assert P.active_table() is P.BUILTIN
    gpu = P.placement("quantize", "cuda")
    assert gpu.accelerator == "nvidia.com/gpu" and gpu.limits["nvidia.com/gpu"] == "1"
    assert gpu.image is None and gpu.affinity == {}
    assert P.placement("fetch-model", "cuda") == P.BUILTIN.light
    with pytest.raises(ValueError, match="'tpu'"):
        P.placement("quantize", "tpu")


def test_file_replaces_the_table(tmp_path):
    table = P.load_placement_file(_write(tmp_path, FILE))
    assert set(table.devices) == {"cpu", "cuda", "npu"}
    gpu = table.placement("validate", "cuda")
    assert gpu.image == "registry.example/ptqflow:1.2.3-cuda" and gpu.accelerator == "nvidia.com/gpu"
    assert gpu.requests == {"cpu": "2", "nvidia.com/gpu": "1"} and gpu.limits == {"nvidia.com/gpu": "1"}
    assert gpu.node_selector == {"pool": "a100"}
    assert gpu.tolerations[1] == {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                                  "tolerationSeconds": 60}
    assert gpu.affinity == FILE["devices"]["gpu"]["affinity"]
    # Steps that only move bytes run on the cpu entry whatever the device.
    light = table.placement("export-ir", "cuda")
    assert light == table.devices["cpu"] and light.image == "registry.example/ptqflow:1.2.3"
    assert light.requests == {"cpu": "1", "memory": "2Gi"} and light.accelerator is None
    npu = table.placement("quantize", "npu")
    assert npu.image is None and npu.node_selector == {} and npu.limits == {"npu.intel.com/accel": "1"}
    assert table.s3_secret_name == "team-s3"
    assert table.s3_secret_env == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}
    assert table.registry_secret_name == "team-mlflow"
    assert table.registry_env("publish") == {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"}


def test_registry_secret_env_only_for_the_steps_that_talk_to_the_registry(tmp_path):
    assert P.BUILTIN.registry_env("fetch-model") == P.REGISTRY_SECRET_ENV
    assert P.BUILTIN.registry_env("publish") == P.REGISTRY_SECRET_ENV
    for step in ("resolve-config", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert P.BUILTIN.registry_env(step) == {}, step
    # A file without a registry section gets the default Secret; an empty name turns it off.
    default = P.load_placement_file(_write(tmp_path, {"devices": FILE["devices"]}))
    assert (default.registry_secret_name, default.registry_env("fetch-model")) == (
        P.REGISTRY_SECRET_NAME, P.REGISTRY_SECRET_ENV)
    off = P.load_placement_file(_write(tmp_path, dict(FILE, registry={"secretName": ""}), "off.yaml"))
    assert off.registry_env("fetch-model") == {} and off.registry_env("publish") == {}


def test_env_var_and_explicit_path(tmp_path, monkeypatch):
    env_file = _write(tmp_path, FILE, "env.yaml")
    other = dict(FILE, s3={"secretName": "other"})
    explicit = _write(tmp_path, other, "explicit.yaml")
    monkeypatch.setenv(P.PLACEMENT_FILE_ENV, str(env_file))
    assert P.active_table().s3_secret_name == "team-s3"
    assert P.placement("quantize", "cuda").node_selector == {"pool": "a100"}
    assert P.active_table(explicit).s3_secret_name == "other"
    assert P.active_table(explicit).s3_secret_env == P.S3_SECRET_ENV  # the default keys


def test_configmap_manifest_is_read(tmp_path):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rel-ptqflow-placement"},
          "data": {"placement.yaml": yaml.safe_dump(FILE)}}
    assert P.load_placement_file(_write(tmp_path, cm)) == P.load_placement_file(_write(tmp_path, FILE, "f.yaml"))
    del cm["data"]["placement.yaml"]
    with pytest.raises(ConfigError, match="no data key 'placement.yaml'"):
        P.load_placement_file(_write(tmp_path, cm))


def _broken(**devices):
    data = yaml.safe_load(yaml.safe_dump(FILE))
    for key, value in devices.items():
        data["devices"][key] = value
    return data


@pytest.mark.parametrize("data,needle", [
    ({"devices": {"cpu": {}, "gpu": {}}}, "missing device(s): npu"),
    (_broken(gpu={"nodeselector": {}}), "devices.gpu.nodeselector': unknown field"),
    (_broken(tpu={}), "devices.tpu"),
    (_broken(cpu={"resources": {"limits": {"ephemeral-storage": "1Gi"}}}), "resources.limits.ephemeral-storage"),
    (_broken(gpu={"accelerator": "nvidia.com/gpu", "resources": {"limits": {"cpu": "2"}}}),
     "resources.limits.nvidia.com/gpu: the accelerator resource needs a limit"),
    (_broken(npu={"tolerations": [{"key": "x", "operator": "Sometimes"}]}), "devices.npu.tolerations.0.operator"),
    (_broken(cpu={"affinity": {"nodeAfinity": {}}}), "devices.cpu.affinity.nodeAfinity"),
    (_broken(cpu={"nodeSelector": {"pool": 3}}), "devices.cpu.nodeSelector.pool"),
    (dict(FILE, s3={"secretName": ""}), "s3.secretName"),
    (dict(FILE, registry={"secret": "x"}), "registry.secret"),
    (dict(FILE, registry={"env": {"MLFLOW_TRACKING_TOKEN": 5}}), "registry.env.MLFLOW_TRACKING_TOKEN"),
    (["devices"], "must hold a mapping"),
])
def test_bad_file_names_the_key(tmp_path, data, needle):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        P.load_placement_file(path)
    assert needle in str(err.value) and str(path) in str(err.value)
    assert err.value.exit_code == 2


def test_unreadable_or_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read placement file"):
        P.load_placement_file(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        P.load_placement_file(bad)


def test_toleration_kwargs_snake_case():
    assert P.toleration_kwargs({"key": "a", "operator": "Exists", "tolerationSeconds": 5}) == {
        "key": "a", "operator": "Exists", "toleration_seconds": 5}
