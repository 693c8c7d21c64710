"""A tiny HTTP server that stands in for Airflow's REST API in the hook's bad-input tests: it issues a
token, records every ``POST /api/v2/dags/{dag_id}/dagRuns`` and answers health probes. (The end-to-end
tests in tests/airflow use a real Airflow.)"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

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

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/api/v2/monitor/health":
                self._json(200, {"metadatabase": {"status": "healthy"}})
            else:
                self._json(404, {"detail": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path == "/auth/token":
                with rec.lock:
                    rec.logins += 1
                ok = body.get("username") == "admin" and body.get("password") == "pw"
                self._json(201 if ok else 401, {"access_token": TOKEN} if ok else {"detail": "bad credentials"})
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._json(401, {"detail": "not authenticated"})
                return
            parts = self.path.strip("/").split("/")
            if len(parts) == 5 and parts[:3] == ["api", "v2", "dags"] and parts[4] == "dagRuns":
                with rec.lock:
                    rec.runs.append((parts[3], body))
                self._json(200, {"dag_run_id": body.get("dag_run_id"), "state": "queued", "conf": body.get("conf")})
            else:
                self._json(404, {"detail": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rec
    finally:
        server.shutdown()
        server.server_close()
