"""Paths and helpers of the Helm chart tests (imported by the test modules; the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ptqflow"
EXAMPLES = ROOT / "helm" / "examples"
NAMESPACE = "ml-ptq"
RELEASE = "rel"
KUBE_VERSIONS = ("1.31.0", "1.37.0")  # the oldest and newest Kubernetes the chart is validated against


def example(name: str) -> dict:
    """A values file of helm/examples."""
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


def find(objects: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    """The objects of ``kind`` (and ``name`` / ``namespace`` when given)."""
    return [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    """{kind/name: pod spec} of every workload."""
    out = {}
    for o in objects:
        spec = None
        if o["kind"] in ("Deployment", "Job"):
            spec = o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            spec = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        if spec is not None:
            out[f"{o['kind']}/{o['metadata']['name']}"] = spec
    return out
