"""A real MLflow tracking + registry server on loopback (SQLite backend, proxied artifacts), for the tests.

The server runs from its own environment (.venv-mlflow with ``mlflow==3.17.2``, made by
scripts/test_hooks.sh; PTQFLOW_MLFLOW_BIN overrides the executable). Webhooks to loopback are allowed
(``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https``, ``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true``) and the
server's webhook cache lives one second, so a webhook created or disabled by a test applies at once.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from processes import free_port, stop_group, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]


def mlflow_bin() -> str:
    """The ``mlflow`` executable of the server environment; RuntimeError saying how to make it."""
    path = os.environ.get("PTQFLOW_MLFLOW_BIN") or str(ROOT / ".venv-mlflow" / "bin" / "mlflow")
    if not Path(path).is_file():
        raise RuntimeError(f"no MLflow server at {path}: run scripts/test_hooks.sh (it creates .venv-mlflow) "
                           "or set PTQFLOW_MLFLOW_BIN")
    return path


@contextmanager
def mlflow_server(workdir: Path, timeout: float = 120.0) -> Iterator[str]:
    """Run ``mlflow server`` in ``workdir`` on a free loopback port; yields its URL; always stops it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # The server's temporary files (its SQLite migration lock, db_init_lock-*) in workdir, not in /tmp.
    (workdir / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_CACHE_TTL": "1",
           "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "2"}
    args = [mlflow_bin(), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    log_path = workdir / "mlflow-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", proc, timeout, log_path)
        yield url
    finally:
        stop_group(proc)


def register_onnx(client, name: str, model_path: Path | None, tags: dict | None = None,
                  experiment: str = "sources"):
    """Log ``model_path`` (or, when None, only a README: a version without ONNX) in a new run and register
    it as a new version of ``name`` with ``tags``; returns the ModelVersion."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id)
    if model_path is not None:
        client.log_artifact(run.info.run_id, str(model_path), "model")
    else:
        client.log_text(run.info.run_id, "not an ONNX model", "model/README.txt")
    client.set_terminated(run.info.run_id)
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    return client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                       tags=tags or {})
