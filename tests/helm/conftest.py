"""Helm chart tests: the chart is linted and rendered in-process with Helm's Go SDK (helm-python-sdk)."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from chart_helpers import CHART, NAMESPACE, RELEASE


@pytest.fixture(scope="session")
def chart():
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
