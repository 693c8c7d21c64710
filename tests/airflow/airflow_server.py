"""A real Airflow 3 deployment on loopback for the slow tests: api-server, scheduler and dag-processor.

``airflow_server`` migrates a fresh SQLite metadata DB in a temporary AIRFLOW_HOME, starts the three
components (LocalExecutor) on a free 127.0.0.1 port with the repository's dags/ folder, waits until the
health endpoint reports the scheduler and dag-processor healthy, logs in through the SimpleAuthManager
(``POST /auth/token`` with the generated admin password) and yields an ``AirflowServer`` REST helper.
Every process it started is stopped on exit (SIGTERM to its process group, SIGKILL after 15 s).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from processes import free_port, stop_group

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
COMPONENTS = ("api-server", "scheduler", "dag-processor")
TERMINAL = {"success", "failed"}


@dataclass
class AirflowServer:
    """A running Airflow: its base URL, a bearer token, its home and the environment its workers see."""

    url: str
    token: str
    home: Path
    env: dict[str, str]
    logs: dict[str, Path] = field(default_factory=dict)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """Call the REST API with the bearer token; returns the decoded JSON (None for an empty body)."""
        return call(f"{self.url}{path}", method, body, {"Authorization": f"Bearer {self.token}"}, timeout)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict) -> dict:
        """``POST /api/v2/dags/{dag_id}/dagRuns`` with ``conf``; returns the created run."""
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})

    def runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600.0) -> dict:
        """Poll the run until it succeeds or fails; returns it. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL:
                return run
            time.sleep(2)
        raise AssertionError(f"run {run_id} of {dag_id} not finished after {timeout:.0f}s: {run.get('state')}\n"
                             + self.log_tails())

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def log_tails(self, chars: int = 3000) -> str:
        """The end of each component's log, for assertion messages."""
        return "\n".join(f"--- {name} ---\n{path.read_text(errors='replace')[-chars:]}"
                         for name, path in self.logs.items() if path.exists())


def call(url: str, method: str = "GET", body: Any = None, headers: dict | None = None,
         timeout: float = 30.0) -> Any:
    """One JSON HTTP request; raises urllib.error.HTTPError with the response body in its message."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:2000]
        raise urllib.error.HTTPError(url, err.code, f"{err.reason}: {detail}", err.headers, None) from None
    return json.loads(raw) if raw.strip() else None


def airflow_env(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Airflow component (and so of the tasks the LocalExecutor runs)."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PTQFLOW_AIRFLOW_MODE": "local",
        **(extra or {}),
    }


def _airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def _start(name: str, args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([_airflow_bin(), *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait_healthy(url: str, procs: dict[str, subprocess.Popen], logs: dict[str, Path], timeout: float) -> None:
    """Until /api/v2/monitor/health says the metadata DB, scheduler and dag-processor are healthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n"
                                   f"{logs[name].read_text(errors='replace')[-3000:]}")
        try:
            last = call(f"{url}/api/v2/monitor/health", timeout=5)
            if all((last.get(part) or {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "dag_processor")):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as err:
            last = err
        time.sleep(1)
    raise RuntimeError(f"Airflow at {url} not healthy after {timeout:.0f}s: {last}")


def login(url: str, home: Path) -> str:
    """A bearer token for the SimpleAuthManager's admin, with the password Airflow generated."""
    passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    return call(f"{url}/auth/token", "POST", {"username": "admin", "password": passwords["admin"]})["access_token"]


def wait_dag(server: AirflowServer, dag_id: str, timeout: float = 120.0) -> dict:
    """Until the dag-processor has parsed ``dag_id``; AssertionError with the import errors otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return server.request("GET", f"/api/v2/dags/{dag_id}")
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise
        time.sleep(1)
    errors = server.request("GET", "/api/v2/importErrors")
    raise AssertionError(f"DAG {dag_id} not parsed after {timeout:.0f}s; import errors: {errors}")


@contextmanager
def airflow_server(workdir: Path, env: dict[str, str] | None = None, timeout: float = 180.0) -> Iterator[AirflowServer]:
    """Run Airflow on loopback in ``workdir``; ``env`` is added to every component's environment."""
    home = Path(workdir) / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = airflow_env(home, port, env)
    subprocess.run([_airflow_bin(), "db", "migrate"], env=full_env, check=True, capture_output=True, timeout=300)
    url = f"http://127.0.0.1:{port}"
    logs = {name: home / f"{name}.log" for name in COMPONENTS}
    procs: dict[str, subprocess.Popen] = {}
    with ExitStack() as stack:
        for name in COMPONENTS:
            args = [name, "--host", "127.0.0.1", "--port", str(port)] if name == "api-server" else [name]
            procs[name] = _start(name, args, full_env, logs[name])
            stack.callback(stop_group, procs[name])
        _wait_healthy(url, procs, logs, timeout)
        yield AirflowServer(url=url, token=login(url, home), home=home, env=full_env, logs=logs)
