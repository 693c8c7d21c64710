"""Starting a pipeline run: Airflow's REST API (``POST /api/v2/dags/{dag_id}/dagRuns``) or ``kfp.Client``.

Errors: ``OrchestratorUnavailable`` for what a retry may fix (connection refused, timeout, 5xx, 429),
``OrchestratorRejected`` for what it cannot (401/403 after a fresh token, 404 unknown DAG, 400/422 bad conf).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

from ptqflow.registry.hooks.config import AirflowTarget, HookConfig, KfpTarget, RetrySettings, secret
from ptqflow.logs import get_logger

log = get_logger("hook")
PING_TIMEOUT_S = 3.0  # readiness probes must answer quickly


class OrchestratorUnavailable(Exception):
    """The orchestrator could not be reached or failed transiently; a later attempt may succeed."""


class OrchestratorRejected(Exception):
    """The orchestrator refused the request; retrying the same request cannot succeed."""


class Orchestrator(Protocol):
    def trigger(self, run_name: str, conf: dict[str, Any]) -> str:
        """Start a run; returns its id."""

    def ping(self) -> None:
        """Raise OrchestratorUnavailable unless the orchestrator answers."""


class AirflowOrchestrator:
    """Airflow 3 REST API with a bearer token (given, or fetched from /auth/token with username/password)."""

    def __init__(self, target: AirflowTarget):
        self.target = target
        self.base = target.url.rstrip("/")
        self._token = secret("PTQFLOW_AIRFLOW_TOKEN")
        self._static_token = self._token is not None
        self._lock = threading.Lock()

    def _http(self, method: str, path: str, body: Any = None, token: str | None = None,
              timeout: float | None = None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.target.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            if err.code >= 500 or err.code in (408, 429):
                raise OrchestratorUnavailable(f"Airflow {method} {path}: HTTP {err.code}: {detail}") from None
            raise OrchestratorRejected(f"Airflow {method} {path}: HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise OrchestratorUnavailable(f"Airflow at {self.base} unreachable: {reason}") from None
        try:
            return json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            raise OrchestratorUnavailable(f"Airflow {method} {path}: answer is not JSON") from None

    def _login(self) -> str:
        user = secret("PTQFLOW_AIRFLOW_USERNAME")
        password = secret("PTQFLOW_AIRFLOW_PASSWORD")
        if not (user and password):
            raise OrchestratorRejected("no Airflow credentials: set PTQFLOW_AIRFLOW_TOKEN or "
                                       "PTQFLOW_AIRFLOW_USERNAME and PTQFLOW_AIRFLOW_PASSWORD (or their _FILE)")
        answer = self._http("POST", "/auth/token", {"username": user, "password": password})
        token = (answer or {}).get("access_token")
        if not token:
            raise OrchestratorRejected("Airflow /auth/token answered without an access_token")
        return token

    def _authed(self, method: str, path: str, body: Any = None) -> Any:
        with self._lock:
            if self._token is None:
                self._token = self._login()
            token = self._token
        try:
            return self._http(method, path, body, token)
        except OrchestratorRejected as err:
            if "HTTP 401" not in str(err) or self._static_token:
                raise
            with self._lock:  # the token expired: log in again once
                self._token = self._login()
                token = self._token
            return self._http(method, path, body, token)

    def trigger(self, run_name: str, conf: dict[str, Any]) -> str:
        run = self._authed("POST", f"/api/v2/dags/{self.target.dag_id}/dagRuns",
                           {"dag_run_id": run_name, "logical_date": None, "conf": conf,
                            "note": "triggered by ptqflow hook"})
        return run["dag_run_id"]

    def ping(self) -> None:
        self._http("GET", "/api/v2/monitor/health", timeout=min(self.target.timeout_s, PING_TIMEOUT_S))


class KfpOrchestrator:
    """Kubeflow Pipelines through ``kfp.Client`` (``pip install "ptqflow[kfp]"``): runs the uploaded
    pipeline ``pipeline_name`` (its default version) in ``experiment`` with the run parameters."""

    def __init__(self, target: KfpTarget):
        self.target = target
        self._client = None

    def _kfp(self):
        if self._client is None:
            try:
                import kfp
            except ImportError:
                raise OrchestratorRejected("orchestrator kfp needs the KFP SDK: pip install \"ptqflow[kfp]\"") from None
            self._client = kfp.Client(host=self.target.host, namespace=self.target.namespace,
                                      existing_token=secret("PTQFLOW_KFP_TOKEN"))
        return self._client

    def trigger(self, run_name: str, conf: dict[str, Any]) -> str:
        try:
            client = self._kfp()
            pipeline_id = client.get_pipeline_id(self.target.pipeline_name)
            if pipeline_id is None:
                raise OrchestratorRejected(f"KFP has no pipeline named {self.target.pipeline_name!r}")
            # kfp.Client runs an uploaded pipeline by (pipeline, version): the newest version is the one the Helm
            # chart's upload Job put there last.
            versions = client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
            if not versions.pipeline_versions:
                raise OrchestratorRejected(f"KFP pipeline {self.target.pipeline_name!r} has no version")
            experiment = client.create_experiment(self.target.experiment, namespace=self.target.namespace)
            version_id = versions.pipeline_versions[0].pipeline_version_id
            run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=run_name,
                                      pipeline_id=pipeline_id, version_id=version_id, params=kfp_parameters(conf))
            return run.run_id
        except OrchestratorRejected:
            raise
        except Exception as err:  # the SDK raises ApiException, urllib3 and connection errors
            status = getattr(err, "status", None)
            if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                raise OrchestratorRejected(f"KFP refused the run: HTTP {status}") from None
            raise OrchestratorUnavailable(f"KFP at {self.target.host}: {type(err).__name__}: "
                                          f"{str(err).splitlines()[0][:300] if str(err) else ''}") from None

    def ping(self) -> None:
        try:
            self._kfp().get_kfp_healthz()
        except OrchestratorRejected:
            raise
        except Exception as err:
            raise OrchestratorUnavailable(f"KFP at {self.target.host} unreachable: {type(err).__name__}") from None


def kfp_parameters(conf: dict[str, Any]) -> dict[str, Any]:
    """The KFP pipeline's run parameters for a run conf (HookCore.run_conf): the flat values as they are (the
    shard counts as integers), anything else as JSON, and the base config as ``base_config``."""
    params = {k: (v if isinstance(v, (str, int, float, bool)) else json.dumps(v)) for k, v in conf.items()
              if k != "config"}
    params["base_config"] = json.dumps(conf.get("config") or {})
    return params


def make_orchestrator(cfg: HookConfig) -> Orchestrator:
    """The orchestrator client that hook.yaml names."""
    if cfg.orchestrator == "kfp":
        return KfpOrchestrator(cfg.kfp or KfpTarget())
    return AirflowOrchestrator(cfg.airflow)


def with_retries(fn, retry: RetrySettings, deadline: float | None = None, what: str = "trigger"):
    """Call ``fn()``; on OrchestratorUnavailable retry with exponential backoff (``retry``), never sleeping
    past ``deadline`` (a time.monotonic() value). Re-raises the last error when attempts run out."""
    delay = retry.backoff_s
    for attempt in range(1, retry.attempts + 1):
        try:
            return fn()
        except OrchestratorUnavailable as err:
            last = attempt == retry.attempts or (deadline is not None and time.monotonic() + delay > deadline)
            log.warning("%s: attempt %d/%d failed: %s%s", what, attempt, retry.attempts, err,
                        "" if last else f"; retrying in {delay:.1f}s")
            if last:
                raise
            time.sleep(delay)
            delay = min(delay * 2, retry.max_backoff_s)
    raise AssertionError("unreachable")
