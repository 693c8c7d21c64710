"""Helm chart tests: the chart is linted and rendered in-process with Helm's Go SDK (helm-python-sdk)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ptqflow"
EXAMPLES = ROOT / "helm" / "examples"
NAMESPACE = "ml-ptq"
RELEASE = "rel"
KUBE_VERSIONS = ("1.31.0", "1.37.0")  # the oldest and newest Kubernetes the chart is validated against


@pytest.fixture(scope="session")
def chart():
    helm = pytest.importorskip("helm_python")
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> list of rendered Kubernetes objects (NOTES.txt left out)."""

    def _render(values: dict | None = None, **kw) -> list[dict]:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True, **kw)
        objects = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
        return objects

    return _render


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
