"""Airflow face: the DAG file parses in both modes; kubernetes mode renders valid, placed pods whose command
line the ptqflow CLI accepts with the run's parameters."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["fetch_model", "build_calibration", "collect_stats", "quantize", "validate", "export_ir"]
FAN_OUT = ["statistics_needed", "statistics_unsharded", "statistics_shards", "collect_stats_shard", "merge_stats",
           "validation_unsharded", "validation_shards", "validate_shard", "merge_validation"]


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_dagbag_imports_without_errors(mode, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PTQFLOW_AIRFLOW_MODE", mode)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["ptqflow_quantize"]
    gate = ["registry_configured"] if mode == "kubernetes" else []
    assert sorted(dag.task_dict) == sorted(STEPS + FAN_OUT + ["publish", "publish_registry"] + gate)
    local = {"export_ir", "fetch_model", "quantize", "validate", "merge_validation"}
    upstream = local if mode == "local" else set(gate)
    assert dag.get_task("publish_registry").upstream_task_ids == upstream
    assert dag.doc_md and "ptqflow" in dag.doc_md
    # Statistics from the one collect_stats task, or the shards' merge: quantize runs after whichever ran.
    assert dag.get_task("quantize").upstream_task_ids == {"fetch_model", "build_calibration", "collect_stats",
                                                          "merge_stats"}
    assert dag.get_task("quantize").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("collect_stats").upstream_task_ids >= {"statistics_unsharded"}
    assert dag.get_task("collect_stats_shard").is_mapped
    assert dag.get_task("collect_stats_shard").upstream_task_ids == {"fetch_model", "build_calibration",
                                                                     "statistics_shards"}
    assert dag.get_task("merge_stats").upstream_task_ids == {"collect_stats_shard"}
    assert dag.params.get_param("statistics_shards").value == 1
    # Dynamic quantization (static: false) skips all of collect-stats: its gate and shard list come after the gate
    # deciding it from the run's config; validation has none.
    for gate_task in ("statistics_unsharded", "statistics_shards"):
        assert dag.get_task(gate_task).upstream_task_ids == {"statistics_needed"}
    assert dag.get_task("validation_shards").upstream_task_ids == set()
    # Validation the same way: the one validate behind its gate, or the mapped shards (after quantize) and their
    # merge; export-ir runs after whichever of validate and merge_validation ran (and so after the gate). validate
    # also reads the statistics (accuracy control quantizes again from them): after whichever of collect_stats and
    # merge_stats ran, or neither (dynamic quantization).
    statistics = {"collect_stats", "merge_stats"}
    assert dag.get_task("validate").upstream_task_ids == {"fetch_model", "build_calibration", "quantize",
                                                          "validation_unsharded"} | statistics
    assert dag.get_task("validate").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("validate_shard").is_mapped
    assert dag.get_task("validate_shard").upstream_task_ids == {"fetch_model", "build_calibration", "quantize",
                                                                "validation_shards"} | statistics
    assert dag.get_task("merge_validation").upstream_task_ids == {"validate_shard"}
    assert dag.params.get_param("validation_shards").value == 1
    assert {"validate", "merge_validation"} <= dag.get_task("export_ir").upstream_task_ids
    assert dag.get_task("export_ir").trigger_rule == "none_failed_min_one_success"
    assert {"preset", "subset_size", "fast_bias_correction", "min_cosine", "device", "model", "data",
            "output"} <= set(dag.params)


def test_params_are_typed_from_the_schema():
    from ptqflow.orchestration.airflow_face import dag_params

    params = dag_params("cuda")
    assert params["preset"].schema["enum"] == ["performance", "mixed", None]
    assert params["subset_size"].schema["type"] == ["integer"]
    assert params["device"].value == "cuda"
    from airflow.sdk.definitions.param import ParamsDict

    with pytest.raises(Exception, match="subset_size|is not of type"):
        ParamsDict({"subset_size": params["subset_size"]}).__setitem__("subset_size", "many")


def _render_pods(device, conf, kubeconfig, tasks=STEPS):
    from airflow.sdk.definitions.param import ParamsDict

    from ptqflow.orchestration.airflow_face import build_dag

    dag = build_dag("ptqflow_k8s_test", mode="kubernetes", device=device)
    params = ParamsDict(dag.params)
    params.update(conf)
    params.validate()
    pods = {}
    for tid in tasks:
        op = dag.get_task(tid)
        op.config_file = str(kubeconfig)  # the provider reads no KUBECONFIG env var
        op.arguments = op.render_template(op.arguments, {"params": params.dump()}, jinja_env=dag.get_template_env())
        pods[tid] = (op, op.build_pod_request_obj(context=None))
    return pods


CONF = {"model": "s3://models/tiny.onnx", "data": "s3://data/images/", "output": "s3://runs/r1",
        "preset": "mixed", "subset_size": 16, "min_sqnr_db": None,
        "config": {"data": {"validation_size": 8}, "validation": {"latency_iterations": 3}}}


@pytest.mark.parametrize("device,resource,label", [
    ("cuda", "nvidia.com/gpu", "nvidia.com/gpu.present"),
    ("npu", "npu.intel.com/accel", "intel.feature.node.kubernetes.io/npu"),
    ("cpu", None, None),
])
def test_pods_render_with_placement_secret_and_cli(kubeconfig, device, resource, label):
    import kubernetes_validate
    from kubernetes.client import ApiClient

    from ptqflow import __version__
    from ptqflow.cli import build_parser, overrides_from_args
    from ptqflow.config import load_config

    for tid, (op, pod) in _render_pods(device, CONF, kubeconfig).items():
        c = pod.spec.containers[0]
        accelerated = tid in ("collect_stats", "quantize", "validate")
        suffix = f"-{device}" if accelerated and device != "cpu" else ""
        assert c.image == f"ghcr.io/ptqflow/ptqflow:{__version__}{suffix}"
        assert c.command == ["ptqflow"]
        limits, sel, tol = c.resources.limits, pod.spec.node_selector, pod.spec.tolerations or []
        if accelerated and resource:
            assert limits[resource] == "1" and sel == {label: "true"}
            assert [(t.key, t.operator, t.effect) for t in tol] == [(resource, "Exists", "NoSchedule")]
        else:
            assert not any(k.endswith(("/gpu", "/accel")) for k in limits)
            assert sel == {"kubernetes.io/arch": "amd64"} and tol == []
        secret_env = {e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key)
                      for e in c.env if e.value_from}
        assert secret_env["AWS_ACCESS_KEY_ID"] == ("ptqflow-s3", "access_key")
        assert secret_env["AWS_SECRET_ACCESS_KEY"] == ("ptqflow-s3", "secret_key")
        # The rendered command line is one the ptqflow CLI accepts, with the run's values.
        args = build_parser().parse_args(c.args)
        assert args.command == tid.replace("_", "-") and args.out == f"s3://runs/r1/{args.command}"
        cfg = load_config(None, overrides_from_args(args))
        assert cfg.quantization.preset.value == "mixed" and cfg.quantization.subset_size == 16
        assert cfg.data.validation_size == 8 and cfg.validation.latency_iterations == 3
        assert cfg.device.value == device and cfg.model == "s3://models/tiny.onnx"
        if tid == "quantize":
            assert args.in_statistics == "s3://runs/r1/collect-stats"
        manifest = ApiClient().sanitize_for_serialization(pod)
        kubernetes_validate.validate(manifest, "1.31.0", strict=True)  # raises on an invalid pod
    import copy

    broken = copy.deepcopy(manifest)
    broken["spec"]["containers"][0]["image"] = 5  # the validator does catch a bad pod
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.31.0", strict=True)


def test_publish_pod_runs_the_publish_step_with_the_registry_section(kubeconfig):
    from ptqflow.cli import build_parser, overrides_from_args
    from ptqflow.config import load_config

    conf = {**CONF, "model": "models:/resnet/3",
            "config": {**CONF["config"], "registry": {"tracking_uri": "http://mlflow:5000", "alias": "int8-candidate"}}}
    op, pod = _render_pods("cuda", conf, kubeconfig, ["publish_registry"])["publish_registry"]
    c = pod.spec.containers[0]
    assert not any(k.endswith("/gpu") for k in c.resources.limits)  # publishing stays on CPU nodes
    args = build_parser().parse_args(c.args)
    assert args.command == "publish" and args.out == "s3://runs/r1/publish"
    assert (args.in_model, args.in_quantized, args.in_report, args.in_ir) == (
        "s3://runs/r1/fetch-model", "s3://runs/r1/quantize", "s3://runs/r1/validate", "s3://runs/r1/export-ir")
    cfg = load_config(None, overrides_from_args(args))
    assert cfg.registry.tracking_uri == "http://mlflow:5000" and cfg.registry.alias == "int8-candidate"
    assert cfg.model == "models:/resnet/3"


def test_registry_secret_env_only_on_the_fetch_model_and_publish_pods(kubeconfig):
    """The pods that talk to the model registry get MLflow's address and credentials from the registry Secret,
    each key optional (a Secret holding only some keys, or none, lets the pod start); the others get none."""
    import kubernetes_validate
    from kubernetes.client import ApiClient

    from ptqflow.orchestration.pod_placement import REGISTRY_SECRET_ENV, REGISTRY_SECRET_NAME

    pods = _render_pods("cuda", CONF, kubeconfig, STEPS + ["publish_registry"])
    for tid, (op, pod) in pods.items():
        env = ApiClient().sanitize_for_serialization(pod.spec.containers[0].env)
        mlflow = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if e["name"].startswith("MLFLOW_")}
        if tid in ("fetch_model", "publish_registry"):
            assert mlflow == {name: {"name": REGISTRY_SECRET_NAME, "key": key, "optional": True}
                              for name, key in REGISTRY_SECRET_ENV.items()}, tid
        else:
            assert mlflow == {}, tid
        s3 = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if e["name"].startswith("AWS_")}
        assert all("optional" not in ref for ref in s3.values())  # the S3 keys stay required
        assert {"name": "PTQFLOW_STEP", "value": tid.replace("_registry", "").replace("_", "-")} in env
        kubernetes_validate.validate(ApiClient().sanitize_for_serialization(pod), "1.31.0", strict=True)


def test_exit_codes_map_to_retry_policy():
    from kubernetes.client import models as k8s

    from ptqflow.orchestration.airflow_k8s import exit_code
    from ptqflow.orchestration.commands import should_retry

    def pod(code):
        term = k8s.V1ContainerStateTerminated(exit_code=code)
        st = k8s.V1ContainerStatus(name="base", image="i", image_id="", ready=False, restart_count=0,
                                   state=k8s.V1ContainerState(terminated=term))
        return k8s.V1Pod(status=k8s.V1PodStatus(phase="Failed", container_statuses=[st]))

    assert [should_retry(exit_code(pod(c))) for c in (2, 3, 4, 5, 6, 1, 137)] == \
        [False, False, False, True, False, True, True]
    assert exit_code(k8s.V1Pod(status=k8s.V1PodStatus(phase="Running"))) is None


@pytest.mark.parametrize("step,merge", [("collect-stats", "merge-stats"), ("validate", "merge-validation")])
@pytest.mark.parametrize("device,resource", [("cuda", "nvidia.com/gpu"), ("npu", "npu.intel.com/accel")])
def test_shard_pods_are_placed_as_their_step_and_the_merge_pod_on_cpu(kubeconfig, device, resource, step, merge):
    """statistics_shards=3 and validation_shards=3 in kubernetes mode: each mapped shard pod is its step's pod
    (image, node selector, tolerations, accelerator) running ``<step> --shard I/3`` into its own directory; the
    merge pod runs ``merge-stats`` / ``merge-validation`` on the three on a CPU node into <output>/<step>, with the
    shards' config."""
    import kubernetes_validate
    from airflow.sdk.definitions.param import ParamsDict
    from kubernetes.client import ApiClient

    from ptqflow.cli import build_parser, overrides_from_args
    from ptqflow.config import load_config
    from ptqflow.orchestration.airflow_face import build_dag
    from ptqflow.orchestration.airflow_k8s import with_partials

    conf = {**CONF, "statistics_shards": 3, "validation_shards": 3}
    tid = step.replace("-", "_")
    (whole, whole_pod), = _render_pods(device, conf, kubeconfig, [tid]).values()
    dag = build_dag("ptqflow_k8s_shards", mode="kubernetes", device=device)
    params = ParamsDict(dag.params)
    params.update(conf)
    params.validate()
    env = dag.get_template_env()

    def rendered(op):
        op.config_file = str(kubeconfig)
        op.arguments = op.render_template(op.arguments, {"params": params.dump()}, jinja_env=env)
        return op.build_pod_request_obj(context=None)

    whole_args = build_parser().parse_args(whole_pod.spec.containers[0].args)
    for i in range(3):
        pod = rendered(dag.get_task(f"{tid}_shard").unmap({"shard": f"{i}/3"}))
        c, w = pod.spec.containers[0], whole_pod.spec.containers[0]
        assert c.image == w.image and c.image.endswith(f"-{device}")
        assert c.resources.limits == w.resources.limits and c.resources.limits[resource] == "1"
        assert pod.spec.node_selector == whole_pod.spec.node_selector
        assert pod.spec.tolerations == whole_pod.spec.tolerations
        assert pod.metadata.labels["ptqflow.io/shard"] == f"{i}-of-3"
        args = build_parser().parse_args(c.args)
        assert args.command == step and args.shard == (i, 3)
        assert args.out == f"s3://runs/r1/{step}-shards/{i}-of-3"
        inputs = {k: v for k, v in vars(args).items() if k.startswith("in_")}
        assert inputs == {k: v for k, v in vars(whole_args).items() if k.startswith("in_")} and inputs
        assert args.sets == whole_args.sets
        kubernetes_validate.validate(ApiClient().sanitize_for_serialization(pod), "1.31.0", strict=True)
    pod = rendered(dag.get_task(merge.replace("-", "_")))
    c = pod.spec.containers[0]
    assert not c.image.endswith(f"-{device}") and resource not in (c.resources.limits or {})
    assert pod.spec.node_selector == {"kubernetes.io/arch": "amd64"} and not pod.spec.tolerations
    args = build_parser().parse_args(with_partials(c.args, 3))  # what execute() runs
    assert args.command == merge and args.out == f"s3://runs/r1/{step}"
    assert args.in_partials == [f"s3://runs/r1/{step}-shards/{i}-of-3" for i in range(3)]
    assert args.sets == whole_args.sets  # the merge checks the partials were made with its config
    cfg = load_config(None, overrides_from_args(args))
    assert cfg.device.value == device and cfg.quantization.preset.value == "mixed"
    kubernetes_validate.validate(ApiClient().sanitize_for_serialization(pod), "1.31.0", strict=True)


def test_merge_pod_takes_the_number_of_shards_from_its_own_param(kubeconfig, monkeypatch):
    """Each merge pod fills in its partials from its fan-out's param when it runs: merge_validation from
    validation_shards, merge_stats from statistics_shards, whatever the other one says."""
    from ptqflow.orchestration.airflow_face import build_dag
    from ptqflow.orchestration.airflow_k8s import PtqflowPodOperator

    ran = {}
    monkeypatch.setattr(PtqflowPodOperator, "execute", lambda self, context: ran.setdefault(self.task_id,
                                                                                            self.arguments))
    dag = build_dag("ptqflow_k8s_merge", mode="kubernetes", device="cpu")
    context = {"params": {"statistics_shards": 2, "validation_shards": 4}}
    for tid, step, n in (("merge_stats", "collect-stats", 2), ("merge_validation", "validate", 4)):
        dag.get_task(tid).execute(context)
        args = ran[tid]
        i = args.index("--in-partials")
        assert args[i + 1:i + 1 + n] == [f"{{{{ params.output }}}}/{step}-shards/{k}-of-{n}" for k in range(n)]
        assert args[i + 1 + n] == "--out"


@pytest.mark.parametrize("param", ["statistics_shards", "validation_shards"])
def test_shards_params(param):
    from airflow.sdk.definitions.param import ParamsDict

    from ptqflow.orchestration.airflow_face import dag_params

    params = ParamsDict({param: dag_params()[param]})
    assert params[param] == 1
    params[param] = 4
    for bad in (0, "two", 1.5):
        with pytest.raises(Exception):
            params[param] = bad
