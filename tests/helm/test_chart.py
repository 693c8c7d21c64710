"""The ptqflow Helm chart: lint, render per device, Kubernetes validation, RBAC scope, security context, schema
contract, placement round trip through the placement loader, the Airflow and KFP pieces."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from chart_helpers import CHART, EXAMPLES, KUBE_VERSIONS, NAMESPACE, RELEASE, ROOT, example, find, pod_specs

FULLNAME = f"{RELEASE}-ptqflow"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
HOOK_CONFIG = {"orchestrator": "airflow", "airflow": {"url": "http://airflow-api-server.airflow:8080"},
               "pipeline": {"data": "s3://b/calib/", "output": "s3://b/runs/{name}/{version}"}}
EVERYTHING_ON = {"hook": {"config": HOOK_CONFIG, "serve": {"enabled": True}, "poll": {"enabled": True}},
                 "kfp": {"enabled": True}}
CASES = {"default": {}, "all": EVERYTHING_ON, "gpu": example("values-gpu-pool.yaml"),
         "npu": example("values-npu-pool.yaml")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict(case):
    report = helm.lint(str(CHART), CASES[case], strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_manifests_are_valid_kubernetes(render, case):
    objects = render(CASES[case])
    assert objects
    for obj in objects:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)  # raises on an invalid object


def test_default_render_objects(render):
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in render())
    assert kinds == sorted([
        f"ConfigMap/{FULLNAME}-airflow-dags", f"ConfigMap/{FULLNAME}-airflow-env",
        f"ConfigMap/{FULLNAME}-pipeline-config", f"ConfigMap/{FULLNAME}-placement",
        f"Role/{FULLNAME}-pod-launcher", f"RoleBinding/{FULLNAME}-pod-launcher",
        f"ServiceAccount/{FULLNAME}", f"ServiceAccount/{FULLNAME}-launcher"])  # the hook is opt-in
    assert all(o["metadata"]["namespace"] == NAMESPACE for o in render())


def test_chart_version_is_the_package_version():
    from ptqflow import __version__

    meta = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert meta["appVersion"] == __version__


# --- Placement per device -------------------------------------------------------------------------------


def _placement_configmap(objects, namespace=NAMESPACE):
    (cm,) = find(objects, "ConfigMap", f"{FULLNAME}-placement", namespace)
    return cm


def _loaded(objects, tmp_path, namespace=NAMESPACE):
    """The rendered placement ConfigMap, written out and read back by ptqflow's placement loader."""
    from ptqflow.orchestration.pod_placement import load_placement_file

    path = tmp_path / f"placement-{namespace}.yaml"
    path.write_text(yaml.safe_dump(_placement_configmap(objects, namespace)), encoding="utf-8")
    return load_placement_file(path)


def test_default_placement_is_the_builtin_table_with_the_project_images(render, tmp_path):
    from ptqflow.orchestration.images import image
    from ptqflow.orchestration.pod_placement import (BUILTIN, REGISTRY_SECRET_ENV, REGISTRY_SECRET_NAME, S3_SECRET_ENV,
                                         S3_SECRET_NAME)

    table = _loaded(render(), tmp_path)
    for device in ("cpu", "cuda", "npu"):
        got, builtin = table.devices[device].as_dict(), BUILTIN.devices[device].as_dict()
        assert got.pop("image") == image(device)
        builtin.pop("image")
        assert got == builtin, device
    assert (table.s3_secret_name, table.s3_secret_env) == (S3_SECRET_NAME, S3_SECRET_ENV)
    assert (table.registry_secret_name, table.registry_secret_env) == (REGISTRY_SECRET_NAME, REGISTRY_SECRET_ENV)


@pytest.mark.parametrize("case,device,key", [("gpu", "cuda", "gpu"), ("npu", "npu", "npu")])
def test_placement_round_trip(render, tmp_path, case, device, key):
    """Chart values -> placement ConfigMap -> placement loader: the same settings the DAG and KFP apply."""
    values = CASES[case]
    merged = helm.Chart.load(str(CHART)).merge_values(values)["devices"][key]
    table = _loaded(render(values), tmp_path)
    p = table.placement("quantize", device)
    image = values["devices"][key]["image"]
    assert p.image == f"{image['repository']}:{image['tag']}"
    assert p.accelerator == merged["accelerator"]
    assert p.requests == merged["resources"]["requests"] and p.limits == merged["resources"]["limits"]
    assert p.node_selector == merged["nodeSelector"]
    assert p.tolerations == merged["tolerations"]
    assert p.affinity == merged["affinity"]
    assert table.placement("fetch-model", device) == table.devices["cpu"]


def test_gpu_and_npu_limits_selectors_tolerations(render, tmp_path):
    gpu = _loaded(render(CASES["gpu"]), tmp_path).placement("validate", "cuda")
    # Maps merge with the defaults (Helm's rule): the default label stays unless set to null.
    assert gpu.limits["nvidia.com/gpu"] == "1"
    assert gpu.node_selector == {"nvidia.com/gpu.present": "true", "pool": "gpu-a100"}
    assert gpu.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeAffinity" in gpu.affinity
    npu = _loaded(render(CASES["npu"]), tmp_path).placement("collect-stats", "npu")
    assert npu.limits["npu.intel.com/accel"] == "1" and npu.requests["npu.intel.com/accel"] == "1"
    assert npu.node_selector == {"intel.feature.node.kubernetes.io/npu": "true", "pool": "edge-npu"}
    assert npu.tolerations == [{"key": "npu.intel.com/accel", "operator": "Exists", "effect": "NoSchedule"}]
    cpu = _loaded(render(CASES["npu"]), tmp_path).placement("export-ir", "npu")
    assert not any("/" in r for r in cpu.limits) and cpu.node_selector == {"kubernetes.io/arch": "amd64"}


def test_placement_configmap_in_airflow_namespace(render, tmp_path):
    objects = render({"airflow": {"namespace": "airflow"}})
    assert _loaded(objects, tmp_path, "airflow") == _loaded(objects, tmp_path, NAMESPACE)
    for name in ("airflow-dags", "airflow-env"):
        assert find(objects, "ConfigMap", f"{FULLNAME}-{name}", "airflow")


def test_custom_s3_secret_reaches_placement(render, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key", "AWS_ENDPOINT_URL": None}  # null drops a key
    table = _loaded(render({"s3": {"existingSecret": "team-s3", "env": env}}), tmp_path)
    assert (table.s3_secret_name, table.s3_secret_env) == ("team-s3", {"AWS_ACCESS_KEY_ID": "id",
                                                                      "AWS_SECRET_ACCESS_KEY": "key"})


def test_registry_secret_round_trip(render, tmp_path):
    """registry values -> placement ConfigMap -> placement loader: the fetch-model and publish pods get the
    Secret's keys (a null drops one), the other steps none; an empty name turns the registry env off."""
    env = {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok", "MLFLOW_TRACKING_USERNAME": None,
           "MLFLOW_TRACKING_PASSWORD": None}
    table = _loaded(render({"registry": {"existingSecret": "team-mlflow", "env": env}}), tmp_path)
    assert (table.registry_secret_name, table.registry_secret_env) == (
        "team-mlflow", {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"})
    for step in ("fetch-model", "publish"):
        assert table.registry_env(step) == {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"}
    for step in ("build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert table.registry_env(step) == {}
    off = _loaded(render({"registry": {"existingSecret": ""}}), tmp_path)
    assert off.registry_secret_name == "" and off.registry_env("fetch-model") == {}


# --- RBAC and security -----------------------------------------------------------------------------------


def test_rbac_is_namespaced_and_minimal(render):
    objects = render({"rbac": {"extraSubjects": [{"kind": "ServiceAccount", "name": "airflow-worker",
                                                  "namespace": "airflow"}]}})
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = find(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("",), ("pods",)): sorted(["create", "get", "list", "watch", "patch", "delete"]),
        (("",), ("pods/log",)): ["get"],
        (("",), ("events",)): ["list"],
    }
    (binding,) = find(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-launcher", "namespace": NAMESPACE},
        {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}]
    # The chart's own pods get no API permissions and no token.
    assert find(objects, "ServiceAccount", FULLNAME)[0]["automountServiceAccountToken"] is False


def test_rbac_can_be_left_out(render):
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}
    assert not kinds & {"Role", "RoleBinding"}


def test_every_pod_runs_non_root_read_only_without_capabilities(render):
    specs = pod_specs(render(EVERYTHING_ON))
    assert set(specs) == {f"Deployment/{FULLNAME}-hook", f"CronJob/{FULLNAME}-hook-poll",
                          f"Job/{FULLNAME}-kfp-upload"}
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
            assert set(c["resources"]["limits"]) == {"cpu", "memory"}, name
            assert set(c["resources"]["requests"]) == {"cpu", "memory"}, name


# --- Hook service -------------------------------------------------------------------------------------------


def test_hook_deployment_probes_secrets_and_config(render, tmp_path, monkeypatch):
    from ptqflow.registry.hooks.config import load_hook_config

    sharded = {**HOOK_CONFIG, "pipeline": {**HOOK_CONFIG["pipeline"], "statistics_shards": 4, "validation_shards": 2}}
    objects = render({"pipelineConfig": {"quantization": {"preset": "mixed"}},
                      "hook": {"config": sharded, "serve": {"enabled": True},
                               "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}]}})
    (dep,) = find(objects, "Deployment", f"{FULLNAME}-hook")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["hook", "serve", "--host", "0.0.0.0", "--port", "8080", "--config",
                         "/etc/ptqflow/hook.yaml"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = {e["name"]: e for e in c["env"]}
    ref = env["PTQFLOW_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ptqflow-hook", "key": "webhook-secret", "optional": False}
    for name in ("PTQFLOW_AIRFLOW_USERNAME", "PTQFLOW_AIRFLOW_PASSWORD", "PTQFLOW_AIRFLOW_TOKEN"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["MLFLOW_TRACKING_URI"] == {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"}
    # MLflow credentials come from the registry Secret, the one the step pods read; hook.env's URI wins.
    assert len(c["env"]) == len(env)
    for name, key in (("MLFLOW_TRACKING_TOKEN", "token"), ("MLFLOW_TRACKING_USERNAME", "username"),
                      ("MLFLOW_TRACKING_PASSWORD", "password")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "ptqflow-mlflow", "key": key, "optional": True}
    assert not any(k.startswith("AWS_") for k in env)  # hook.s3Env is off by default
    (cm,) = find(objects, "ConfigMap", f"{FULLNAME}-hook")
    hook_yaml = yaml.safe_load(cm["data"]["hook.yaml"])
    assert hook_yaml["pipeline"]["config"] == {"quantization": {"preset": "mixed"}}  # from pipelineConfig
    path = tmp_path / "hook.yaml"
    path.write_text(cm["data"]["hook.yaml"], encoding="utf-8")
    loaded = load_hook_config(str(path))  # the hook service accepts what the chart renders
    assert loaded.airflow.url == "http://airflow-api-server.airflow:8080"
    assert loaded.pipeline.output == "s3://b/runs/{name}/{version}"
    # The shard counts reach every run the hook starts (tests/hooks and tests/kfp: the Airflow and KFP calls).
    assert (loaded.pipeline.statistics_shards, loaded.pipeline.validation_shards) == (4, 2)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/ptqflow"]["readOnly"] is True and "/tmp" in mounts
    (svc,) = find(objects, "Service", f"{FULLNAME}-hook")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_hook_poll_cronjob_instead_of_the_service(render):
    objects = render({"hook": {"config": HOOK_CONFIG, "poll": {"enabled": True, "schedule": "*/5 * * * *"},
                               "s3Env": True, "secretEnv": {"PTQFLOW_KFP_TOKEN": None}}})
    assert not find(objects, "Deployment") and not find(objects, "Service")
    (cron,) = find(objects, "CronJob")
    assert cron["spec"]["schedule"] == "*/5 * * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["hook", "poll", "--config", "/etc/ptqflow/hook.yaml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ptqflow-s3", "key": "access_key"}
    assert "PTQFLOW_WEBHOOK_SECRET" not in env and "PTQFLOW_AIRFLOW_TOKEN" in env  # poll needs no webhook secret
    assert "PTQFLOW_KFP_TOKEN" not in env  # null drops a default entry
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {"name": "ptqflow-mlflow",
                                                                       "key": "tracking_uri", "optional": True}


def test_hook_registry_env_can_be_left_out_or_overridden(render):
    secret_env = {"MLFLOW_TRACKING_TOKEN": {"name": "hook-only", "key": "mlflow-token", "optional": False}}
    for values, expected in (
            ({"registryEnv": False}, {}),
            ({"secretEnv": secret_env}, {"MLFLOW_TRACKING_TOKEN": "hook-only", "MLFLOW_TRACKING_URI": "ptqflow-mlflow",
                                         "MLFLOW_TRACKING_USERNAME": "ptqflow-mlflow",
                                         "MLFLOW_TRACKING_PASSWORD": "ptqflow-mlflow"})):
        objects = render({"hook": {"config": HOOK_CONFIG, "serve": {"enabled": True}, **values}})
        (dep,) = find(objects, "Deployment", f"{FULLNAME}-hook")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        listed = [e for e in c["env"] if e["name"].startswith("MLFLOW_")]
        assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in listed} == expected
        assert len(listed) == len(expected)  # no variable twice
    objects = render({"registry": {"existingSecret": ""}, "hook": {"config": HOOK_CONFIG, "poll": {"enabled": True}}})
    (cron,) = find(objects, "CronJob")
    (c,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert not any(e["name"].startswith("MLFLOW_") for e in c["env"])


@pytest.mark.parametrize("devices,message", [
    ({"gpu": {"resources": {"limits": {"nvidia.com/gpu": None}}}},
     "devices.gpu.resources.limits.nvidia.com/gpu: the accelerator resource needs a limit"),
    ({"cpu": {"resources": {"limits": {"ephemeral-storage": "10Gi"}}}},
     "devices.cpu.resources.limits.ephemeral-storage: only cpu, memory and the device's accelerator (none)"),
])
def test_placement_the_faces_cannot_apply_fails_at_install(chart, devices, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render({"devices": devices}, name=RELEASE, namespace=NAMESPACE)


def test_hook_shard_counts_below_one_fail_at_install(chart):
    bad = {**HOOK_CONFIG, "pipeline": {**HOOK_CONFIG["pipeline"], "validation_shards": 0}}
    with pytest.raises(helm.HelmError, match="validation_shards"):
        chart.render({"hook": {"config": bad, "serve": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE)


def test_hook_without_config_fails_with_a_clear_message(chart):
    with pytest.raises(helm.HelmError, match="hook.config is required"):
        chart.render({"hook": {"serve": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE)


def test_pipeline_config_configmap_is_a_valid_ptqflow_config(render, tmp_path):
    from ptqflow.config import load_config

    config = {"device": "cuda", "quantization": {"preset": "mixed", "subset_size": 128},
              "validation": {"latency_iterations": 7}}
    (cm,) = find(render({"pipelineConfig": config}), "ConfigMap", f"{FULLNAME}-pipeline-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    cfg = load_config(path)
    assert cfg.device.value == "cuda" and cfg.quantization.subset_size == 128
    assert cfg.validation.latency_iterations == 7


# --- Airflow and Kubeflow ---------------------------------------------------------------------------------


def test_airflow_configmaps(render):
    objects = render({"airflow": {"device": "npu"}})
    (dags,) = find(objects, "ConfigMap", f"{FULLNAME}-airflow-dags")
    assert dags["data"]["ptqflow_quantize.py"] == (ROOT / "dags" / "ptqflow_quantize.py").read_text()
    (env,) = find(objects, "ConfigMap", f"{FULLNAME}-airflow-env")
    assert env["data"] == {"PTQFLOW_AIRFLOW_MODE": "kubernetes", "PTQFLOW_AIRFLOW_DEVICE": "npu",
                           "PTQFLOW_K8S_NAMESPACE": NAMESPACE,
                           "PTQFLOW_PLACEMENT_FILE": "/opt/ptqflow/placement/placement.yaml"}
    assert not find(render({"airflow": {"enabled": False}}), "ConfigMap", f"{FULLNAME}-airflow-dags")


def test_kfp_upload_job(render):
    assert not find(render(), "Job")
    objects = render({"kfp": {"enabled": True, "namespace": "team-a", "pipelinePackage": "# compiled\n",
                              "auth": {"serviceAccountToken": True}}}, revision=4)
    (job,) = find(objects, "Job", f"{FULLNAME}-kfp-upload")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in hooks["helm.sh/hook-delete-policy"]
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    assert args["--version-name"] == "0.1.0-r4" and args["--namespace"] == "team-a"
    assert args["--token-file"] == "/var/run/secrets/kfp/token"
    token = [v for v in spec["volumes"] if v["name"] == "kfp-token"][0]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    (cm,) = find(objects, "ConfigMap", f"{FULLNAME}-kfp-pipeline")
    assert cm["data"]["pipeline.yaml"] == "# compiled\n"
    assert cm["data"]["kfp_upload.py"] == (CHART / "files" / "kfp_upload.py").read_text()
    (bundled,) = find(render({"kfp": {"enabled": True}}), "ConfigMap", f"{FULLNAME}-kfp-pipeline")
    assert bundled["data"]["pipeline.yaml"] == (ROOT / "components" / "ptqflow_pipeline.yaml").read_text()


# --- Schema contract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values,path", [
    ({"devices": {"gpu": {"tolerations": [{"key": "x", "operator": "Sometimes"}]}}},
     "/devices/gpu/tolerations/0/operator"),
    ({"devices": {"tpu": {}}}, "'tpu' not allowed"),
    ({"devices": {"npu": {"resources": {"limits": {"npu.intel.com/accel": True}}}}},
     "/devices/npu/resources/limits/npu.intel.com~1accel"),
    ({"hook": {"serve": {"port": "8080"}}}, "/hook/serve/port"),
    ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
    ({"airflow": {"device": "gpu"}}, "/airflow/device"),
    ({"kfp": {"host": "ml-pipeline:8888"}}, "/kfp/host"),
    ({"pipelineConfig": {"quantization": {"preset": "turbo"}}}, "/pipelineConfig/quantization/preset"),
    ({"pipelineConfig": {"quantizaton": {}}}, "'quantizaton' not allowed"),
    ({"hook": {"config": dict(HOOK_CONFIG, orchestrator="jenkins")}}, "/hook/config/orchestrator"),
    ({"hook": {"config": {"airflow": {"url": "http://a"}}}}, "/hook/config"),
    ({"hook": {"secretEnv": {"MY_TOKEN": {"name": "s"}}}}, "/hook/secretEnv/MY_TOKEN"),
    ({"registry": {"env": {"MLFLOW_TRACKING_TOKEN": 5}}}, "/registry/env/MLFLOW_TRACKING_TOKEN"),
    ({"hook": {"registryEnv": "yes"}}, "/hook/registryEnv"),
])
def test_schema_violation_is_rejected_naming_the_field(chart, values, path):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert path in str(err.value)


def _values_nodes(schema, prefix=""):
    """(dotted path, schema node) of every chart value: properties below properties, not list items or
    map entries, not the generated pipelineConfig and hook.config (ptqflow's own schemas)."""
    for key, node in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path, node
        if path not in ("pipelineConfig", "hook.config"):
            yield from _values_nodes(node, f"{path}.")


def test_every_value_is_typed_defaulted_described_and_matches_values_yaml():
    seen = 0
    for path, node in _values_nodes(SCHEMA):
        assert "type" in node or "$ref" in node or "anyOf" in node, f"{path}: no type"
        assert "default" in node, f"{path}: no default"
        assert node.get("description"), f"{path}: no description"
        value = VALUES
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                value = KeyError
                break
            value = value[part]
        if value is not KeyError:
            assert node["default"] == value, f"{path}: schema default {node['default']!r} != values.yaml {value!r}"
        seen += 1
    assert seen > 100
    # The values file has no key the schema does not describe.
    def keys(d, prefix=""):
        for k, v in d.items():
            yield f"{prefix}{k}"
            if isinstance(v, dict) and k not in ("pipelineConfig", "config", "env", "secretEnv", "nodeSelector",
                                                  "affinity", "annotations", "requests", "limits",
                                                  "podSecurityContext", "securityContext"):
                yield from keys(v, f"{prefix}{k}.")
    assert set(keys(VALUES)) <= {p for p, _ in _values_nodes(SCHEMA)}


def test_schema_and_chart_files_are_current():
    """values.schema.json's pipelineConfig part is ptqflow's config schema; the DAG and pipeline copies match."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_helm_schema.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_schema_staleness_is_detected(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_helm_schema", ROOT / "scripts" / "gen_helm_schema.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    stale = json.loads(json.dumps(SCHEMA))
    stale["properties"]["pipelineConfig"]["properties"].pop("device")
    copy = tmp_path / "values.schema.json"
    copy.write_text(json.dumps(stale, indent=2) + "\n", encoding="utf-8")
    monkeypatch.setattr(gen, "SCHEMA", copy)
    monkeypatch.setattr(gen, "ROOT", tmp_path.parent)
    assert copy in gen.stale_files()
    assert gen.expected_files()[copy] == (CHART / "values.schema.json").read_text(encoding="utf-8")


def test_helm_template_output_is_a_placement_file(chart, tmp_path):
    """What `helm template --show-only templates/placement-configmap.yaml` prints feeds the KFP compile."""
    from ptqflow.orchestration.pod_placement import load_placement_file

    values = dict(example("values-npu-pool.yaml"), airflow={"namespace": "airflow"})
    text = chart.render(values, name=RELEASE, namespace=NAMESPACE)["ptqflow/templates/placement-configmap.yaml"]
    path = tmp_path / "placement.yaml"
    path.write_text(f"---\n# Source: ptqflow/templates/placement-configmap.yaml\n{text}", encoding="utf-8")
    assert text.count("kind: ConfigMap") == 2
    table = load_placement_file(path)
    assert table.placement("quantize", "npu").node_selector["pool"] == "edge-npu"


@pytest.mark.parametrize("kfp_section,expected", [
    (None, "ptqflow-quantize"),  # orchestrator kfp, no kfp section: the pipeline the upload Job made
    ({"host": "http://ml-pipeline.kubeflow:8888"}, "uploaded-here"),
    ({"pipeline_name": "their-own"}, "their-own"),  # a name the user gives wins
])
def test_kfp_hook_runs_the_pipeline_the_chart_uploads(render, tmp_path, kfp_section, expected):
    from ptqflow.registry.hooks.config import load_hook_config

    config = {"orchestrator": "kfp", "pipeline": HOOK_CONFIG["pipeline"]}
    if kfp_section is not None:
        config["kfp"] = kfp_section
    kfp_values = {"enabled": True} if expected != "uploaded-here" else {"enabled": True, "pipelineName": expected}
    objects = render({"kfp": kfp_values, "hook": {"config": config, "serve": {"enabled": True}}})
    (cm,) = find(objects, "ConfigMap", f"{FULLNAME}-hook")
    path = tmp_path / "hook.yaml"
    path.write_text(cm["data"]["hook.yaml"], encoding="utf-8")
    assert load_hook_config(str(path)).kfp.pipeline_name == expected
    (job,) = [o for o in find(objects, "Job") if o["metadata"]["name"].endswith("kfp-upload")]
    if kfp_section is None or "pipeline_name" not in kfp_section:  # the hook and the upload Job name one pipeline
        assert expected in job["spec"]["template"]["spec"]["containers"][0]["args"]
