"""A tiny HTTP server that stands in for the Kubeflow Pipelines API (v2beta1) that ``kfp.Client`` calls to start a
run of an uploaded pipeline: healthz, the pipeline by name, its versions, the experiment by name, and
``POST /apis/v2beta1/runs``. Like the KFP backend, it refuses a run whose parameters the pipeline does not declare
or whose values do not have the declared type; it records the runs it accepts."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import yaml

from processes import JsonHandler, serving

PIPELINE_ID, VERSION_ID, EXPERIMENT_ID = "pipeline-1", "version-1", "experiment-1"
# The JSON types a parameter of each declared KFP type may take in runtime_config.parameters.
_TYPES = {"STRING": (str,), "NUMBER_INTEGER": (int,), "NUMBER_DOUBLE": (int, float), "BOOLEAN": (bool,),
          "LIST": (list,), "STRUCT": (dict,)}


def pipeline_parameters(package: Path) -> dict[str, str]:
    """{name: KFP parameter type} of a compiled pipeline's root inputs."""
    spec = next(yaml.safe_load_all(Path(package).read_text(encoding="utf-8")))
    return {k: v["parameterType"] for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}


class Recorder:
    """What the stand-in accepted: ``runs`` holds each created run's request body."""

    def __init__(self):
        self.runs: list[dict] = []
        self.lock = threading.Lock()


def _bad_parameters(params: dict, declared: dict[str, str]) -> list[str]:
    bad = [f"{k}: not a parameter of the pipeline" for k in params if k not in declared]
    for k, v in params.items():
        ok = _TYPES.get(declared.get(k), ())
        if k in declared and (not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok)):
            bad.append(f"{k}: {v!r} is not {declared[k]}")
    return bad


@contextmanager
def recording_kfp(pipeline_name: str, package: Path) -> Iterator[tuple[str, Recorder]]:
    """Serve the stand-in of a KFP holding ``pipeline_name`` (compiled as ``package``) on a free loopback port;
    yields (host URL, recorder)."""
    rec, declared = Recorder(), pipeline_parameters(package)

    class Handler(JsonHandler):
        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/apis/v2beta1/healthz":
                self.json(200, {"multi_user": False})
            elif url.path == "/apis/v2beta1/pipelines":
                wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
                found = [{"pipeline_id": PIPELINE_ID, "display_name": pipeline_name}] if wanted == pipeline_name else []
                self.json(200, {"pipelines": found, "total_size": len(found)})
            elif url.path == f"/apis/v2beta1/pipelines/{PIPELINE_ID}/versions":
                self.json(200, {"pipeline_versions": [{"pipeline_id": PIPELINE_ID, "pipeline_version_id": VERSION_ID,
                                                        "display_name": "v1"}], "total_size": 1})
            elif url.path == "/apis/v2beta1/experiments":
                wanted = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
                self.json(200, {"experiments": [{"experiment_id": EXPERIMENT_ID, "display_name": wanted}],
                                 "total_size": 1})
            else:
                self.json(404, {"error": f"not found: {url.path}"})

        def do_POST(self):
            body = self.body()
            if urlparse(self.path).path != "/apis/v2beta1/runs":
                self.json(404, {"error": "not found"})
                return
            ref = body.get("pipeline_version_reference") or {}
            bad = _bad_parameters(body.get("runtime_config", {}).get("parameters") or {}, declared)
            if (ref.get("pipeline_id"), ref.get("pipeline_version_id")) != (PIPELINE_ID, VERSION_ID):
                bad.append(f"unknown pipeline version {ref}")
            if bad:
                self.json(400, {"error": "; ".join(bad)})
                return
            with rec.lock:
                rec.runs.append(body)
            self.json(200, {"run_id": f"run-{len(rec.runs)}", "display_name": body.get("display_name"),
                             "experiment_id": body.get("experiment_id"), "state": "PENDING"})

    with serving(Handler) as url:
        yield url, rec
