"""The chart's KFP upload Job script (helm/ptqflow/files/kfp_upload.py), run as the Job runs it, against a
loopback server that answers the KFP v2beta1 pipeline endpoints the KFP SDK 2.17 calls (list with a
display_name filter, upload, list versions, upload_version). No KFP backend runs here."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.parse
from http.server import ThreadingHTTPServer

import pytest

from chart_helpers import CHART
from processes import JsonHandler

SCRIPT = CHART / "files" / "kfp_upload.py"
API = "/apis/v2beta1/pipelines"


class FakeKfp:
    """Pipelines and versions in memory, every request recorded as (method, path, query, auth)."""

    def __init__(self, fail_with: int | None = None):
        self.pipelines: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict, str | None]] = []
        self.fail_with = fail_with

    def handler(self):
        fake = self

        class Handler(JsonHandler):
            def _record(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                fake.requests.append((self.command, url.path, query, self.headers.get("Authorization")))
                return url.path, query

            def do_GET(self):
                path, query = self._record()
                if fake.fail_with:
                    return self.json(fake.fail_with, {"error": "backend down"})
                wanted = json.loads(query["filter"])["predicates"][0]
                assert wanted["operation"] == 1 and wanted["key"] == "display_name"
                if path == API:
                    found = [p for p in fake.pipelines.values() if p["display_name"] == wanted["stringValue"]]
                    return self.json(200, {"pipelines": [{k: p[k] for k in ("pipeline_id", "display_name")}
                                                           for p in found]} if found else {})
                pid = path[len(API) + 1:].split("/")[0]
                versions = [v for v in fake.pipelines[pid]["versions"] if v["display_name"] == wanted["stringValue"]]
                return self.json(200, {"pipeline_versions": versions} if versions else {})

            def do_POST(self):
                path, query = self._record()
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"].startswith("multipart/form-data; boundary=")
                assert b'name="uploadfile"' in body and b"PIPELINE DEFINITION" in body
                display_name = query.get("display_name", query["name"])  # the API's default
                if path == f"{API}/upload":
                    pid = f"p{len(fake.pipelines) + 1}"
                    fake.pipelines[pid] = {"pipeline_id": pid, "display_name": display_name,
                                           "namespace": query.get("namespace"),
                                           "versions": [{"pipeline_version_id": f"{pid}-v1",
                                                         "display_name": display_name}]}
                    return self.json(200, {"pipeline_id": pid, "display_name": display_name})
                if path == f"{API}/upload_version":
                    versions = fake.pipelines[query["pipelineid"]]["versions"]
                    version = {"pipeline_version_id": f"{query['pipelineid']}-v{len(versions) + 1}",
                               "display_name": display_name}
                    versions.append(version)
                    return self.json(200, version)
                return self.json(404, {"error": "not found"})

        return Handler


@pytest.fixture
def kfp_api():
    servers = []

    def start(fail_with: int | None = None):
        fake = FakeKfp(fail_with)
        server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return fake, f"http://127.0.0.1:{server.server_address[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text((CHART / "files" / "ptqflow_pipeline.yaml").read_text())
    return path


def _upload(host, package, version, *extra, env=None):
    cmd = [sys.executable, str(SCRIPT), "--host", host, "--package", str(package), "--pipeline-name",
           "ptqflow-quantize", "--version-name", version, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def test_creates_then_adds_versions_then_does_nothing(kfp_api, package, tmp_path):
    fake, host = kfp_api()
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    first = _upload(host, package, "0.1.0-r1", "--namespace", "team-a", "--token-file", str(token))
    assert first.returncode == 0, first.stderr
    assert "created pipeline ptqflow-quantize" in first.stdout
    (pipeline,) = fake.pipelines.values()
    assert pipeline["namespace"] == "team-a"
    second = _upload(host, package, "0.1.0-r2", "--namespace", "team-a", "--token-file", str(token))
    assert second.returncode == 0 and "uploaded version 0.1.0-r2" in second.stdout
    again = _upload(host, package, "0.1.0-r2", "--namespace", "team-a", "--token-file", str(token))
    assert again.returncode == 0 and "already has version 0.1.0-r2" in again.stdout
    assert [v["display_name"] for v in pipeline["versions"]] == ["ptqflow-quantize", "0.1.0-r2"]
    assert {auth for *_, auth in fake.requests} == {"Bearer sa-token"}
    posts = [(path, query) for method, path, query, _ in fake.requests if method == "POST"]
    assert posts[1] == (f"{API}/upload_version", {"name": "0.1.0-r2", "display_name": "0.1.0-r2",
                                                  "pipelineid": pipeline["pipeline_id"]})


def test_token_from_environment(kfp_api, package):
    import os

    fake, host = kfp_api()
    run = _upload(host, package, "v1", env=dict(os.environ, KFP_BEARER_TOKEN="from-secret"))
    assert run.returncode == 0, run.stderr
    assert {auth for *_, auth in fake.requests} == {"Bearer from-secret"}


def test_api_errors_exit_5_for_a_retry(kfp_api, package):
    fake, host = kfp_api(fail_with=503)
    run = _upload(host, package, "v1")
    assert run.returncode == 5 and "HTTP 503" in run.stderr and not fake.pipelines
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    run = _upload(f"http://127.0.0.1:{closed}", package, "v1")
    assert run.returncode == 5 and "KFP API" in run.stderr


def test_bad_package_exits_2_without_calling_the_api(kfp_api, tmp_path):
    fake, host = kfp_api()
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    run = _upload(host, empty, "v1")
    assert run.returncode == 2 and "is empty" in run.stderr
    run = _upload(host, tmp_path / "absent.yaml", "v1")
    assert run.returncode == 2 and "cannot read pipeline package" in run.stderr
    assert fake.requests == []
