"""Upload a compiled pipeline to the Kubeflow Pipelines API as a new version (the chart's upload Job).

    python kfp_upload.py --host URL --package pipeline.yaml --pipeline-name NAME --version-name VERSION
                         [--namespace NS] [--token-file FILE]

Creates the pipeline (with the package as its first version) when no pipeline of that name exists, else adds
the package as version VERSION. A version of that name already there counts as done, so a rerun of the Job
is harmless. A bearer token comes from --token-file or env KFP_BEARER_TOKEN. Standard library only: it runs
in ptqflow's image without the KFP SDK. Exit codes: 0 done, 2 bad arguments or package, 5 API unreachable or
failing (the Job's backoff retries).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

API = "/apis/v2beta1/pipelines"
EXIT_BAD_INPUT = 2
EXIT_API = 5
TIMEOUT_S = 30


class ApiError(Exception):
    """The KFP API answered with an error or could not be reached."""


def _request(host: str, method: str, path: str, query: dict[str, str], token: str | None,
             body: bytes | None = None, content_type: str | None = None) -> dict:
    """The JSON answer of one API call; ApiError on an HTTP error or when the API cannot be reached."""
    url = host.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            text = resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:500]
        raise ApiError(f"{method} {path}: HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ApiError(f"{method} {url}: {getattr(err, 'reason', err)}") from None
    return json.loads(text) if text.strip() else {}


def _multipart(filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the file in field ``uploadfile``; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/x-yaml\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _equals_filter(key: str, value: str) -> str:
    """An API list filter ``key == value`` (operation 1 is EQUALS, as the KFP SDK sends it)."""
    return json.dumps({"predicates": [{"operation": 1, "key": key, "stringValue": value}]})


def find_pipeline(host: str, name: str, namespace: str | None, token: str | None) -> str | None:
    """The id of the pipeline named ``name``, or None."""
    query = {"filter": _equals_filter("display_name", name)}
    if namespace:
        query["namespace"] = namespace
    found = _request(host, "GET", API, query, token).get("pipelines") or []
    return found[0]["pipeline_id"] if found else None


def version_exists(host: str, pipeline_id: str, version: str, token: str | None) -> bool:
    """Whether ``pipeline_id`` already has a version named ``version``."""
    query = {"filter": _equals_filter("display_name", version)}
    found = _request(host, "GET", f"{API}/{pipeline_id}/versions", query, token).get("pipeline_versions") or []
    return bool(found)


def upload(host: str, package: str, pipeline_name: str, version: str, namespace: str | None = None,
           token: str | None = None) -> str:
    """Upload ``package`` as version ``version`` of ``pipeline_name``; returns what was done, for the log."""
    try:
        with open(package, "rb") as f:
            content = f.read()
    except OSError as err:
        raise ValueError(f"cannot read pipeline package {package}: {err.strerror}") from None
    if not content.strip():
        raise ValueError(f"pipeline package {package} is empty")
    body, ctype = _multipart(os.path.basename(package), content)
    pipeline_id = find_pipeline(host, pipeline_name, namespace, token)
    if pipeline_id is None:
        query = {"name": pipeline_name, "display_name": pipeline_name}
        if namespace:
            query["namespace"] = namespace
        made = _request(host, "POST", f"{API}/upload", query, token, body, ctype)
        return f"created pipeline {pipeline_name} ({made.get('pipeline_id')}) with its first version"
    if version_exists(host, pipeline_id, version, token):
        return f"pipeline {pipeline_name} already has version {version}: nothing to do"
    query = {"name": version, "display_name": version, "pipelineid": pipeline_id}
    made = _request(host, "POST", f"{API}/upload_version", query, token, body, ctype)
    return f"uploaded version {version} ({made.get('pipeline_version_id')}) of pipeline {pipeline_name}"


def main(argv: list[str] | None = None) -> int:
    """Parse flags, upload, print what was done; returns the exit code (0, 2 or 5)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    ap.add_argument("--package", required=True, help="compiled pipeline YAML")
    ap.add_argument("--pipeline-name", required=True)
    ap.add_argument("--version-name", required=True)
    ap.add_argument("--namespace", default=None, help="KFP profile namespace (multi-user installs)")
    ap.add_argument("--token-file", default=None, help="file holding a bearer token")
    a = ap.parse_args(argv)
    token = os.environ.get("KFP_BEARER_TOKEN") or None
    try:
        if a.token_file:
            with open(a.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        print(upload(a.host, a.package, a.pipeline_name, a.version_name, a.namespace, token))
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ApiError as err:
        print(f"error: KFP API: {err}", file=sys.stderr)
        return EXIT_API
    return 0


if __name__ == "__main__":
    sys.exit(main())
