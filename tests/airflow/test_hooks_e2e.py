"""Slow, end to end with real servers on loopback: registering a model version in MLflow (SQLite) delivers a
signed webhook to ``ptqflow hook serve``, which triggers the ptqflow DAG on a real Airflow; the run quantizes
the model and registers the INT8 version back with its tags. Then the same through ``ptqflow hook poll``.

The registry's versions before and after are printed and written to PTQFLOW_REGISTRY_REPORT when it is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_server import mlflow_server, register_onnx
from processes import free_port, wait_http_ok
from tiny_run import BUCKET, DAG_ID, TINY_CONFIG, task_table

SECRET = "e2e-webhook-secret"
SOURCE = "tiny-classifier"
TARGET = f"{SOURCE}-int8"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-e2e")) as url:
        yield url


@pytest.fixture(scope="module")
def hook_setup(mlflow_url, airflow_rest, tmp_path_factory):
    """hook.yaml and the environment (secrets) both hook commands run with."""
    tmp = tmp_path_factory.mktemp("hook")
    config = tmp / "hook.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "orchestrator": "airflow", "airflow": {"url": airflow_rest.url, "dag_id": DAG_ID},
        "registry": {"tracking_uri": mlflow_url, "alias": "int8-candidate"},
        "pipeline": {"data": f"s3://{BUCKET}/in/data/", "output": f"s3://{BUCKET}/hooks/{{name}}/{{version}}",
                     "statistics_shards": 2, "config": TINY_CONFIG},
        "retry": {"attempts": 3, "backoff_s": 0.5}}))
    password = json.loads((airflow_rest.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PTQFLOW_WEBHOOK_SECRET=SECRET, PTQFLOW_AIRFLOW_USERNAME="admin", PTQFLOW_AIRFLOW_PASSWORD=password)
    return config, env


@pytest.fixture(scope="module")
def hook_url(hook_setup):
    """``ptqflow hook serve`` as a subprocess on a free loopback port, ready; stopped with SIGTERM."""
    config, env = hook_setup
    port = free_port()
    log = open(config.parent / "hook-serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ptqflow.cli", "hook", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--config", str(config)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", proc, 60, config.parent / "hook-serve.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def versions(client, name: str) -> list[dict]:
    """The registry's versions of ``name`` with their tags and aliases (empty when it does not exist)."""
    found = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    full = [client.get_model_version(v.name, v.version) for v in found]  # search results carry no aliases
    return [{"name": v.name, "version": v.version, "tags": dict(sorted((v.tags or {}).items())),
             "aliases": sorted(v.aliases or []), "source": v.source} for v in full]


def snapshot(client) -> list[dict]:
    return versions(client, SOURCE) + versions(client, TARGET)


def _hook_runs(af, name: str, version: str) -> list[dict]:
    prefix = f"ptqflow-hook__{name}__v{version}__"
    return [r for r in af.runs(DAG_ID) if r["dag_run_id"].startswith(prefix)]


def _wait_hook_run(af, name: str, version: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _hook_runs(af, name, version)
        if runs:
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no DAG run triggered for {name}/{version} within {timeout:.0f}s")


def _check_int8(client, version: str, source_version: str, conf_output: str, rest_s3) -> dict:
    int8 = client.get_model_version(TARGET, version)
    tags = int8.tags
    assert tags["ptqflow.source_model"] == SOURCE and tags["ptqflow.source_version"] == source_version
    assert tags["ptqflow.verdict"] == "pass" and tags["ptqflow.source_uri"] == f"models:/{SOURCE}/{source_version}"
    assert float(tags["ptqflow.metric.min_cosine"]) >= 0.5 and len(tags["ptqflow.config_hash"]) == 16
    files = {f.path for f in client.list_artifacts(int8.run_id, "int8")}
    assert {"int8/model.onnx", "int8/openvino"} <= files
    keys = {o["Key"] for o in rest_s3[1].list_objects_v2(Bucket=BUCKET, Prefix=conf_output)["Contents"]}
    assert f"{conf_output}/publish/registered.json" in keys
    return tags


@pytest.mark.slow
def test_webhook_then_poll_quantize_and_publish(rest_s3, airflow_rest, mlflow_url, hook_setup, hook_url):
    from mlflow import MlflowClient
    from mlflow.entities.webhook import WebhookEvent

    client, af, model = MlflowClient(mlflow_url), airflow_rest, rest_s3[2]
    report = [f"MLflow {mlflow_url} (SQLite), Airflow {af.url}, hook {hook_url}", "", "BEFORE:",
              json.dumps(snapshot(client), indent=2)]
    hook = client.create_webhook(name="ptqflow-e2e", url=f"{hook_url}/webhook", secret=SECRET,
                                 events=[WebhookEvent("model_version", "created"),
                                         WebhookEvent("model_version_tag", "set")])
    # 1. Webhook: registering an opted-in ONNX version triggers the DAG, which publishes the INT8 version.
    v1 = register_onnx(client, SOURCE, model, tags={"ptqflow.quantize": "true"})
    run = _wait_hook_run(af, SOURCE, v1.version)
    assert run["conf"]["model"] == f"models:/{SOURCE}/1"
    assert (run["conf"]["statistics_shards"], run["conf"]["validation_shards"]) == (2, 1)  # hook.yaml's shards
    done = af.wait_run(DAG_ID, run["dag_run_id"])
    tis = af.task_instances(DAG_ID, run["dag_run_id"])
    states = {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"] for ti in tis}
    assert done["state"] == "success", f"{states}\n{af.log_tails()}"
    assert states["publish_registry"] == "success" and states["fetch_model"] == "success"
    # The DAG took the hook's statistics_shards: two mapped collect-stats tasks and their merge, one validate.
    assert {k: states[k] for k in ("collect_stats_shard[0]", "collect_stats_shard[1]", "merge_stats", "validate")} \
        == {"collect_stats_shard[0]": "success", "collect_stats_shard[1]": "success", "merge_stats": "success",
            "validate": "success"}
    _check_int8(client, "1", "1", f"hooks/{SOURCE}/1", rest_s3)
    assert client.get_model_version_by_alias(TARGET, "int8-candidate").version == "1"
    assert client.get_model_version(SOURCE, "1").tags["ptqflow.run"] == f"airflow:{run['dag_run_id']}"
    assert len(_hook_runs(af, SOURCE, "1")) == 1  # the hook's own tag (and the INT8 version) started nothing
    report += ["", "Webhook-triggered run:", task_table(done, tis), "",
               f"AFTER the webhook run {run['dag_run_id']} ({done['state']}):", json.dumps(snapshot(client), indent=2)]

    # 2. Poll: with the webhook gone, a new opted-in version is found by `ptqflow hook poll`.
    client.delete_webhook(hook.webhook_id)
    time.sleep(2)  # the server caches webhooks for 1 s in this test setup
    config, env = hook_setup
    v2 = register_onnx(client, SOURCE, model, tags={"ptqflow.quantize": "true"})
    proc = subprocess.run([sys.executable, "-m", "ptqflow.cli", "hook", "poll", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = {(o["name"], o["version"]): o["status"] for o in json.loads(proc.stdout)}
    assert outcomes == {(SOURCE, "1"): "duplicate", (SOURCE, "2"): "triggered"}
    run2 = _wait_hook_run(af, SOURCE, v2.version)
    done2 = af.wait_run(DAG_ID, run2["dag_run_id"])
    assert done2["state"] == "success", af.log_tails()
    assert client.get_model_version_by_alias(TARGET, "int8-candidate").version == "2"
    _check_int8(client, "2", "2", f"hooks/{SOURCE}/2", rest_s3)
    again = subprocess.run([sys.executable, "-m", "ptqflow.cli", "hook", "poll", "--config", str(config)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and {o["status"] for o in json.loads(again.stdout)} == {"duplicate"}
    assert len(_hook_runs(af, SOURCE, "2")) == 1
    report += ["", "Poll-triggered run:", task_table(done2, af.task_instances(DAG_ID, run2["dag_run_id"])), "",
               f"AFTER the poll run {run2['dag_run_id']} ({done2['state']}):", json.dumps(snapshot(client), indent=2)]
    text = "\n".join(report) + "\n"
    print(text)
    if os.environ.get("PTQFLOW_REGISTRY_REPORT"):
        Path(os.environ["PTQFLOW_REGISTRY_REPORT"]).write_text(text)
