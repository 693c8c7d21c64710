"""A tiny HTTP server that stands in for Airflow's REST API in the hook's bad-input tests: it issues a
token, records every ``POST /api/v2/dags/{dag_id}/dagRuns`` and answers health probes. (The end-to-end
tests in tests/airflow use a real Airflow.)"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from processes import JsonHandler, serving

TOKEN = "recording-token"


class Recorder:
    """What the stand-in received: ``runs`` is a list of (dag_id, body) of accepted trigger calls."""

    def __init__(self):
        self.runs: list[tuple[str, dict]] = []
        self.logins = 0
        self.lock = threading.Lock()


@contextmanager
def recording_airflow() -> Iterator[tuple[str, Recorder]]:
    """Serve the stand-in on a free loopback port; yields (base URL, recorder)."""
    rec = Recorder()

    class Handler(JsonHandler):
        def do_GET(self):
            if self.path == "/api/v2/monitor/health":
                self.json(200, {"metadatabase": {"status": "healthy"}})
            else:
                self.json(404, {"detail": "not found"})

        def do_POST(self):
            body = self.body()
            if self.path == "/auth/token":
                with rec.lock:
                    rec.logins += 1
                ok = body.get("username") == "admin" and body.get("password") == "pw"
                self.json(201 if ok else 401, {"access_token": TOKEN} if ok else {"detail": "bad credentials"})
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.json(401, {"detail": "not authenticated"})
                return
            parts = self.path.strip("/").split("/")
            if len(parts) == 5 and parts[:3] == ["api", "v2", "dags"] and parts[4] == "dagRuns":
                with rec.lock:
                    rec.runs.append((parts[3], body))
                self.json(200, {"dag_run_id": body.get("dag_run_id"), "state": "queued", "conf": body.get("conf")})
            else:
                self.json(404, {"detail": "not found"})

    with serving(Handler) as url:
        yield url, rec
