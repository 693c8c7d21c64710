"""``ptqflow hook serve`` / ``hook poll`` against a real MLflow server on loopback, with a recording stand-in
for Airflow's REST API: good deliveries trigger exactly one run, every bad one triggers none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature as mlflow_signature

import builders
from mlflow_server import register_onnx
from processes import serving
from recording_orchestrator import recording_airflow
from ptqflow.registry.hooks.config import HookConfig
from ptqflow.registry.hooks.core import HookCore
from ptqflow.registry.hooks.orchestrators import AirflowOrchestrator
from ptqflow.registry.hooks.poll import poll_once
from ptqflow.registry.hooks.server import HookService, make_server

SECRET = "webhook-secret-for-tests"


def _config(airflow_url: str, mlflow_url: str, **server) -> HookConfig:
    return HookConfig.model_validate({
        "orchestrator": "airflow", "airflow": {"url": airflow_url, "timeout_s": 2},
        "registry": {"tracking_uri": mlflow_url, "alias": "int8-candidate"},
        "pipeline": {"data": "s3://bucket/calib/", "output": "s3://bucket/out/{name}/{version}",
                     "statistics_shards": 3, "validation_shards": 2,
                     "config": {"quantization": {"subset_size": 16}}},
        "server": {"max_body_bytes": 4096, "ack_timeout_s": 5, **server},
        "retry": {"attempts": 2, "backoff_s": 0.1, "max_backoff_s": 0.2}})


@contextmanager
def hook_server(cfg: HookConfig):
    """The hook's HTTP server in a thread on a free loopback port; yields its base URL."""
    os.environ.update(PTQFLOW_AIRFLOW_USERNAME="admin", PTQFLOW_AIRFLOW_PASSWORD="pw")
    service = HookService(cfg, HookCore(cfg, AirflowOrchestrator(cfg.airflow)), SECRET)
    try:
        with serving(make_server(service, "127.0.0.1", 0)) as url:
            yield url
    finally:
        service.pool.shutdown(wait=True)


@pytest.fixture()
def env(mlflow_url, tmp_path, monkeypatch):
    """(hook URL, recorder, MLflow client, tiny model path) with the stand-in Airflow up."""
    from mlflow import MlflowClient

    monkeypatch.setenv("PTQFLOW_AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("PTQFLOW_AIRFLOW_PASSWORD", "pw")
    model = builders.save(builders.conv_classifier(), tmp_path / "model.onnx")
    with recording_airflow() as (af_url, rec), hook_server(_config(af_url, mlflow_url)) as url:
        yield url, rec, MlflowClient(mlflow_url), model


def _event(name: str, version: str, tags: dict | None = None, action: str = "created") -> dict:
    return {"entity": "model_version", "action": action, "timestamp": "2026-12-01T00:00:00+00:00",
            "data": {"name": name, "version": version, "source": "runs:/x/model", "run_id": "x",
                     "tags": tags or {}, "description": None}}


def post(url: str, body: bytes | str | dict, headers: dict | None = None, sign: bool = True,
         delivery: str | None = None, stamp: str | None = None) -> tuple[int, dict, dict]:
    """POST to /webhook, signed the way MLflow signs unless ``sign`` is False; (status, answer, headers)."""
    payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
    payload = payload if isinstance(payload, bytes) else payload.encode()
    delivery = delivery or str(uuid.uuid4())
    stamp = stamp or str(int(time.time()))
    h = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp}
    if sign:
        h["X-MLflow-Signature"] = mlflow_signature(SECRET, delivery, stamp, payload.decode(errors="replace"))
    h.update(headers or {})
    h = {k: v for k, v in h.items() if v is not None}
    req = urllib.request.Request(f"{url}/webhook", data=payload, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), dict(err.headers)


def _tagged(client, model, name=None):
    name = name or f"m-{uuid.uuid4().hex[:8]}"
    return register_onnx(client, name, model, tags={"ptqflow.quantize": "true"})


def test_signed_delivery_triggers_one_run_with_the_model_uri(env):
    url, rec, client, model = env
    mv = _tagged(client, model)
    status, answer, _ = post(url, _event(mv.name, mv.version, {"ptqflow.quantize": "true"}))
    assert status == 202 and answer["status"] == "triggered", answer
    assert len(rec.runs) == 1
    dag_id, body = rec.runs[0]
    assert dag_id == "ptqflow_quantize"
    conf = body["conf"]
    assert conf["model"] == f"models:/{mv.name}/1" and conf["data"] == "s3://bucket/calib/"
    assert conf["output"] == f"s3://bucket/out/{mv.name}/1"
    assert (conf["statistics_shards"], conf["validation_shards"]) == (3, 2)  # the DAG's fan-out parameters
    assert conf["config"]["registry"] == {"target_name": f"{mv.name}-int8", "experiment": "ptqflow",
                                          "alias": "int8-candidate", "tracking_uri": client.tracking_uri}
    assert conf["config"]["quantization"] == {"subset_size": 16}
    assert client.get_model_version(mv.name, "1").tags["ptqflow.run"] == f"airflow:{answer['run_id']}"
    # Another delivery for the same version (e.g. the tag set again) starts nothing new.
    status, answer, _ = post(url, _event(mv.name, "1", action="created", tags={"ptqflow.quantize": "true"}))
    assert status == 200 and answer["status"] == "duplicate"
    assert len(rec.runs) == 1


def test_tag_set_event_opts_a_version_in(env):
    url, rec, client, model = env
    mv = register_onnx(client, f"m-{uuid.uuid4().hex[:8]}", model)
    other = {"entity": "model_version_tag", "action": "set",
             "data": {"name": mv.name, "version": "1", "key": "team", "value": "vision"}}
    assert post(url, other)[1]["status"] == "ignored"
    client.set_model_version_tag(mv.name, "1", "ptqflow.quantize", "true")
    event = {"entity": "model_version_tag", "action": "set",
             "data": {"name": mv.name, "version": "1", "key": "ptqflow.quantize", "value": "true"}}
    status, answer, _ = post(url, event)
    assert status == 202 and answer["status"] == "triggered"
    assert [b["conf"]["model"] for _, b in rec.runs] == [f"models:/{mv.name}/1"]


@pytest.mark.parametrize("case", ["wrong_signature", "unsigned", "no_timestamp", "no_delivery_id", "stale",
                                  "future", "non_json", "json_list", "oversized", "untagged", "target_model",
                                  "other_event", "no_length"])
def test_bad_deliveries_trigger_nothing(env, case):
    url, rec, client, model = env
    mv = _tagged(client, model)
    good = _event(mv.name, mv.version, {"ptqflow.quantize": "true"})
    old = str(int(time.time()) - 3600)
    expected = {
        "wrong_signature": (401, lambda: post(url, good, headers={"X-MLflow-Signature": "v1,AAAA"})),
        "unsigned": (400, lambda: post(url, good, sign=False)),
        "no_timestamp": (400, lambda: post(url, good, headers={"X-MLflow-Timestamp": None})),
        "no_delivery_id": (400, lambda: post(url, good, headers={"X-MLflow-Delivery-Id": None})),
        "stale": (401, lambda: post(url, good, stamp=old)),
        "future": (401, lambda: post(url, good, stamp=str(int(time.time()) + 3600))),
        "non_json": (400, lambda: post(url, b"model_version created, trust me")),
        "json_list": (400, lambda: post(url, b"[1, 2]")),
        "oversized": (413, lambda: post(url, {**good, "pad": "x" * 5000})),
        "untagged": (200, lambda: post(url, _event(mv.name, mv.version, {}))),
        "target_model": (200, lambda: post(url, _event(f"{mv.name}-int8", "1", {"ptqflow.quantize": "true"}))),
        "other_event": (200, lambda: post(url, {**good, "entity": "registered_model"})),
        "no_length": (411, lambda: _chunked(url)),
    }[case]
    status, answer, _ = expected[1]()
    assert status == expected[0], answer
    if status == 200:
        assert answer["status"] == "ignored"
    assert rec.runs == []
    assert "ptqflow.run" not in client.get_model_version(mv.name, mv.version).tags


def _chunked(url: str):
    """A POST without Content-Length (chunked transfer encoding)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/webhook")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"2\r\n{}\r\n0\r\n\r\n")
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read()), {}


def test_replayed_delivery_is_refused(env):
    url, rec, client, model = env
    mv = _tagged(client, model)
    event = _event(mv.name, mv.version, {"ptqflow.quantize": "true"})
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
    assert post(url, event, delivery=delivery, stamp=stamp)[0] == 202
    status, answer, _ = post(url, event, delivery=delivery, stamp=stamp)
    assert status == 409 and "replay" in answer["error"]
    assert len(rec.runs) == 1


def test_version_without_onnx_is_rejected(env):
    url, rec, client, _ = env
    mv = register_onnx(client, f"m-{uuid.uuid4().hex[:8]}", None, tags={"ptqflow.quantize": "true"})
    status, answer, _ = post(url, _event(mv.name, mv.version, {"ptqflow.quantize": "true"}))
    assert status == 422 and "no .onnx artifact" in answer["reason"]
    status, answer, _ = post(url, _event("does-not-exist", "3", {"ptqflow.quantize": "true"}))
    assert status == 422 and "not found" in answer["reason"]
    assert rec.runs == []


def test_unreachable_orchestrator_answers_503_then_accepts_the_retry(mlflow_url, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from processes import free_port

    monkeypatch.setenv("PTQFLOW_AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("PTQFLOW_AIRFLOW_PASSWORD", "pw")
    client = MlflowClient(mlflow_url)
    mv = _tagged(client, builders.save(builders.conv_classifier(), tmp_path / "model.onnx"))
    event = _event(mv.name, mv.version, {"ptqflow.quantize": "true"})
    delivery, stamp = str(uuid.uuid4()), str(int(time.time()))
    dead = f"http://127.0.0.1:{free_port()}"
    with hook_server(_config(dead, mlflow_url)) as url:
        started = time.monotonic()
        status, answer, headers = post(url, event, delivery=delivery, stamp=stamp)
        assert status == 503 and "unreachable" in answer["reason"] and headers.get("Retry-After")
        assert time.monotonic() - started < 5
        ready = urllib.request.Request(f"{url}/readyz")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(ready, timeout=10)
        assert err.value.code == 503
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
            assert resp.status == 200
    assert "ptqflow.run" not in client.get_model_version(mv.name, mv.version).tags
    # MLflow resends the same delivery (same id, timestamp and signature): once Airflow is up it is accepted.
    with recording_airflow() as (af_url, rec), hook_server(_config(af_url, mlflow_url)) as url:
        assert post(url, event, delivery=delivery, stamp=stamp)[0] == 202
        assert len(rec.runs) == 1
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
            assert resp.status == 200


def test_unreachable_registry_answers_503(monkeypatch):
    from processes import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with recording_airflow() as (af_url, rec), hook_server(_config(af_url, f"http://127.0.0.1:{free_port()}")) as url:
        status, answer, headers = post(url, _event("any-model", "1", {"ptqflow.quantize": "true"}))
        assert status == 503 and answer["reason"].startswith("registry") and headers.get("Retry-After")
        assert rec.runs == []


def test_real_mlflow_webhook_reaches_the_hook(env):
    """MLflow itself signs and delivers model_version.created; the hook triggers once."""
    from mlflow.entities.webhook import WebhookEvent

    url, rec, client, model = env
    hook = client.create_webhook(name=f"ptqflow-{uuid.uuid4().hex[:6]}", url=f"{url}/webhook",
                                 events=[WebhookEvent("model_version", "created"),
                                         WebhookEvent("model_version_tag", "set")], secret=SECRET)
    try:
        assert client.test_webhook(hook.webhook_id).success  # the example payload: rejected, not retried
        mv = _tagged(client, model)
        deadline = time.monotonic() + 30
        while not rec.runs and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # the tag the hook sets fires model_version_tag.set: it must not trigger again
        assert [b["conf"]["model"] for _, b in rec.runs] == [f"models:/{mv.name}/{mv.version}"]
    finally:
        client.delete_webhook(hook.webhook_id)


def test_poll_triggers_each_tagged_version_once(mlflow_url, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("PTQFLOW_AIRFLOW_USERNAME", "admin")
    monkeypatch.setenv("PTQFLOW_AIRFLOW_PASSWORD", "pw")
    client = MlflowClient(mlflow_url)
    model = builders.save(builders.conv_classifier(), tmp_path / "model.onnx")
    tag = f"ptqflow.poll{uuid.uuid4().hex[:6]}"
    name = f"poll-{uuid.uuid4().hex[:6]}"
    register_onnx(client, name, model, tags={tag: "true"})
    register_onnx(client, name, model, tags={tag: "true"})
    register_onnx(client, name, None, tags={tag: "true"})  # no ONNX: rejected, never triggered
    register_onnx(client, name, model)  # not opted in
    with recording_airflow() as (af_url, rec):
        cfg = _config(af_url, mlflow_url).model_copy(update={"registry": _config(af_url, mlflow_url).registry
                                                             .model_copy(update={"opt_in_tag": f"{tag}=true"})})
        core = HookCore(cfg, AirflowOrchestrator(cfg.airflow))
        first = {(o.version, o.status) for o in poll_once(core)}
        assert first == {("1", "triggered"), ("2", "triggered"), ("3", "rejected")}
        assert sorted(b["conf"]["model"] for _, b in rec.runs) == [f"models:/{name}/1", f"models:/{name}/2"]
        second = {(o.version, o.status) for o in poll_once(core)}
        assert second == {("1", "duplicate"), ("2", "duplicate"), ("3", "rejected")}
        assert len(rec.runs) == 2


def _cli(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptqflow.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_config_and_secret_errors(tmp_path, mlflow_url):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PTQFLOW_", "MLFLOW_"))}
    cfg = tmp_path / "hook.yaml"
    cfg.write_text("orchestrator: airflow\nairflow: {url: 'http://127.0.0.1:9'}\n"
                   f"registry: {{tracking_uri: '{mlflow_url}'}}\npipeline: {{output: 's3://b/{{name}}'}}\n")
    proc = _cli(["hook", "serve", "--port", "0"], {**base, "PTQFLOW_HOOK_CONFIG": str(cfg)})
    assert proc.returncode == 2 and "PTQFLOW_WEBHOOK_SECRET" in proc.stderr
    proc = _cli(["hook", "poll"], base)
    assert proc.returncode == 2 and "PTQFLOW_HOOK_CONFIG" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("orchestrator: airflow\nairflow: {url: x, dagid: y}\npipeline: {output: o}\nserver: {max_body_bytes: -1}\n")
    proc = _cli(["hook", "poll", "--config", str(bad)], base)
    assert proc.returncode == 2 and "airflow.dagid" in proc.stderr and "server.max_body_bytes" in proc.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cr3t-value\n")
    proc = _cli(["hook", "poll", "--config", str(cfg)],
                {**base, "PTQFLOW_WEBHOOK_SECRET_FILE": str(secret_file), "PTQFLOW_AIRFLOW_PASSWORD": "hunter2-pw"})
    assert proc.returncode == 0, proc.stderr  # nothing is tagged with the default opt-in tag: nothing to do
    assert "s3cr3t" not in proc.stderr + proc.stdout and "hunter2" not in proc.stderr + proc.stdout


def test_cli_serve_answers_health_and_stops_on_sigterm(tmp_path, mlflow_url):
    from processes import free_port

    port = free_port()
    cfg = tmp_path / "hook.yaml"
    cfg.write_text(f"airflow: {{url: 'http://127.0.0.1:{free_port()}'}}\nregistry: {{tracking_uri: '{mlflow_url}'}}\n"
                   "pipeline: {output: 's3://b/{name}/{version}', data: 's3://b/d/'}\n")
    env = {**os.environ, "PTQFLOW_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "ptqflow.cli", "hook", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--config", str(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    assert json.loads(resp.read()) == {"status": "ok"}
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert err.value.code == 503  # Airflow is not there
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert SECRET not in proc.stderr.read()
