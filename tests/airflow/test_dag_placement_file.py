"""Airflow face with a placement file (PTQFLOW_PLACEMENT_FILE, the Helm chart's ConfigMap mounted into the
Airflow pods): the kubernetes-mode pods take their image, resources, node selector, tolerations, affinity, S3
Secret and registry Secret from it."""

from pathlib import Path

import yaml

AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["npu-a"]}]}]}},
    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "ptqflow"}}}}]}}
PLACEMENT = {
    "devices": {
        "cpu": {"image": "registry.example/ptqflow:9.9.9", "resources": {"limits": {"cpu": "3", "memory": "3Gi"}},
                "nodeSelector": {"pool": "general"}},
        "gpu": {"accelerator": "nvidia.com/gpu", "resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "npu": {"image": "registry.example/ptqflow:9.9.9-npu", "accelerator": "npu.intel.com/accel",
                "resources": {"requests": {"cpu": "2", "npu.intel.com/accel": "1"},
                              "limits": {"cpu": "4", "npu.intel.com/accel": "1"}},
                "nodeSelector": {"pool": "npu-a"},
                "tolerations": [{"key": "npu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
                "affinity": AFFINITY},
    },
    "s3": {"secretName": "team-s3", "env": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}},
    "registry": {"secretName": "team-mlflow", "env": {"MLFLOW_TRACKING_URI": "uri", "MLFLOW_TRACKING_TOKEN": "tok"}},
}


def test_pods_follow_the_placement_file(tmp_path, monkeypatch, kubeconfig):
    import kubernetes_validate
    from kubernetes.client import ApiClient

    from ptqflow.orchestration.airflow_face import build_dag

    placement = tmp_path / "placement.yaml"
    placement.write_text(yaml.safe_dump(PLACEMENT))
    monkeypatch.setenv("PTQFLOW_PLACEMENT_FILE", str(placement))
    dag = build_dag("ptqflow_placement_test", mode="kubernetes", device="npu")
    for task_id in ("fetch_model", "quantize"):
        op = dag.get_task(task_id)
        op.config_file = str(kubeconfig)
        op.arguments = []  # the templated CLI is covered by test_dag.py
        pod = op.build_pod_request_obj(context=None)
        c, spec = pod.spec.containers[0], pod.spec
        secrets = {e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
                   for e in c.env if e.value_from}
        s3 = {"AWS_ACCESS_KEY_ID": ("team-s3", "id"), "AWS_SECRET_ACCESS_KEY": ("team-s3", "key")}
        registry = {"MLFLOW_TRACKING_URI": ("team-mlflow", "uri"), "MLFLOW_TRACKING_TOKEN": ("team-mlflow", "tok")}
        assert secrets == (s3 | registry if task_id == "fetch_model" else s3)  # only fetch-model reads the registry
        if task_id == "quantize":
            assert c.image == "registry.example/ptqflow:9.9.9-npu"
            assert c.resources.limits == {"cpu": "4", "npu.intel.com/accel": "1"}
            assert spec.node_selector == {"pool": "npu-a"}
            assert [(t.key, t.effect, t.toleration_seconds) for t in spec.tolerations] == [("npu", "NoExecute", 30)]
            assert ApiClient().sanitize_for_serialization(spec.affinity) == AFFINITY
        else:
            assert c.image == "registry.example/ptqflow:9.9.9"
            assert c.resources.limits == {"cpu": "3", "memory": "3Gi"} and not c.resources.requests
            assert spec.node_selector == {"pool": "general"} and not spec.tolerations and not spec.affinity
        kubernetes_validate.validate(ApiClient().sanitize_for_serialization(pod), "1.31.0", strict=True)


def test_bad_placement_file_is_a_dag_import_error(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    bad = tmp_path / "placement.yaml"
    bad.write_text(yaml.safe_dump({"devices": {"cpu": {}, "gpu": {}, "npu": {"nodeselector": {}}}}))
    monkeypatch.setenv("PTQFLOW_PLACEMENT_FILE", str(bad))
    monkeypatch.setenv("PTQFLOW_AIRFLOW_MODE", "kubernetes")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    errors = "\n".join(bag.import_errors.values())
    assert "devices.npu.nodeselector" in errors and str(bad) in errors


def test_chart_values_reach_the_pods(tmp_path, monkeypatch, kubeconfig):
    """Configured once: the GPU example values, rendered by the Helm chart into its placement ConfigMap, are
    what the DAG's pods get."""
    import helm_python as helm

    root = Path(__file__).resolve().parents[2]
    values = yaml.safe_load((root / "helm" / "examples" / "values-gpu-pool.yaml").read_text())
    with helm.Chart.load(str(root / "helm" / "ptqflow")) as chart:
        rendered = chart.render(values, name="rel", namespace="ptqflow", is_install=True)
        gpu = chart.merge_values(values)["devices"]["gpu"]
    configmap = next(d for d in yaml.safe_load_all(rendered["ptqflow/templates/placement-configmap.yaml"]) if d)
    path = tmp_path / "placement-configmap.yaml"
    path.write_text(yaml.safe_dump(configmap))
    monkeypatch.setenv("PTQFLOW_PLACEMENT_FILE", str(path))
    from kubernetes.client import ApiClient

    from ptqflow.orchestration.airflow_face import build_dag

    op = build_dag("ptqflow_chart_test", mode="kubernetes", device="cuda").get_task("validate")
    op.config_file, op.arguments = str(kubeconfig), []
    spec = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context=None))["spec"]
    container = spec["containers"][0]
    assert container["image"] == f"{gpu['image']['repository']}:{gpu['image']['tag']}"
    assert container["resources"] == gpu["resources"]
    assert spec["nodeSelector"] == gpu["nodeSelector"]
    assert spec["tolerations"] == gpu["tolerations"]
    assert spec["affinity"] == gpu["affinity"]
    secret_names = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secret_names == {values["s3"]["existingSecret"]}
