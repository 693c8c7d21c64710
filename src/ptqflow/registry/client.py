"""Model-registry access (MLflow) shared by fetch-model, the publish step and the registry hooks.

Registry URIs are ``models:/<name>/<version>`` and ``models:/<name>@<alias>``. The tracking URI comes from the
config (``registry.tracking_uri``) or MLflow's own environment (MLFLOW_TRACKING_URI); credentials only from
MLflow's environment variables. The client is ``mlflow-skinny`` (``pip install "ptqflow[registry]"``),
imported only when a registry is used.

Tags that ptqflow writes on the INT8 versions it registers (and reads to stay idempotent):
``ptqflow.source_model``, ``ptqflow.source_version``, ``ptqflow.source_run_id``, ``ptqflow.version``,
``ptqflow.config_hash``, ``ptqflow.verdict``, ``ptqflow.metric.<name>``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ptqflow.errors import ConfigError, InputError, StorageError

SCHEME = "models:/"
TAG_SOURCE_MODEL = "ptqflow.source_model"
TAG_SOURCE_VERSION = "ptqflow.source_version"
TAG_SOURCE_RUN = "ptqflow.source_run_id"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.\-]+))/?$")


@dataclass(frozen=True)
class RegistryRef:
    """A parsed registry URI: a name and exactly one of version or alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.name}/{self.version}" if self.version else f"{SCHEME}{self.name}@{self.alias}"


def is_registry_uri(uri: str | None) -> bool:
    """Whether ``uri`` names a registered model version (``models:/...``)."""
    return bool(uri) and uri.startswith(SCHEME)


def parse_registry_uri(uri: str) -> RegistryRef:
    """``models:/name/3`` or ``models:/name@alias``; ConfigError naming the URI otherwise."""
    m = _URI.match(uri)
    if not m:
        raise ConfigError(f"field 'model': {uri!r} is not a registry URI; expected models:/<name>/<version> "
                          "or models:/<name>@<alias>")
    return RegistryRef(m["name"], m["version"], m["alias"])


def filter_value(text: str) -> str:
    """``text`` quoted for an MLflow search filter (single quotes, embedded quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def registry_errors(what: str) -> Iterator[None]:
    """Map MLflow client errors to ptqflow's: missing entities are InputError (exit 3), a registry that
    cannot be reached or answers 5xx is StorageError (exit 5, retryable), a refused request ConfigError."""
    try:
        yield
    except (ConfigError, InputError, StorageError):
        raise
    except Exception as err:
        from mlflow.exceptions import MlflowException

        if not isinstance(err, (MlflowException, OSError)):
            raise
        code = getattr(err, "error_code", "")
        text = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in text.lower():
            raise InputError(f"{what}: {text}") from None
        if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            raise ConfigError(f"{what}: the registry refused the request ({code}): {text}") from None
        raise StorageError(f"{what}: registry request failed: {text}") from None


def client(tracking_uri: str | None = None):
    """An ``MlflowClient`` for ``tracking_uri`` (None: MLflow's environment); ConfigError without mlflow."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError("a model registry is configured but the MLflow client is not installed; "
                          "pip install \"ptqflow[registry]\"") from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve(mlflow_client, ref: RegistryRef):
    """The ``ModelVersion`` that ``ref`` names (an alias resolved to its current version)."""
    with registry_errors(ref.uri):
        if ref.alias:
            return mlflow_client.get_model_version_by_alias(ref.name, ref.alias)
        return mlflow_client.get_model_version(ref.name, ref.version)


def download_uri(mlflow_client, version) -> str:
    """Where the artifacts of a model version live (its source, resolved by the registry)."""
    with registry_errors(f"models:/{version.name}/{version.version}"):
        return mlflow_client.get_model_version_download_uri(version.name, version.version)


def onnx_artifacts(mlflow_client, version, suffixes: tuple[str, ...] = (".onnx",)) -> list[str]:
    """Relative paths of the ``.onnx`` files (or of the files ending in one of ``suffixes``: an OpenVINO IR's
    ``.xml``) among a model version's artifacts (empty: none)."""
    from mlflow.artifacts import list_artifacts

    root = download_uri(mlflow_client, version)
    found: list[str] = []
    with registry_errors(f"models:/{version.name}/{version.version}"):
        pending = [""]
        while pending:
            prefix = pending.pop()
            for info in list_artifacts(artifact_uri=f"{root.rstrip('/')}/{prefix}" if prefix else root,
                                       tracking_uri=mlflow_client.tracking_uri) or []:
                rel = f"{prefix}/{Path(info.path).name}" if prefix else Path(info.path).name
                if info.is_dir:
                    pending.append(rel)
                elif rel.lower().endswith(suffixes):
                    found.append(rel)
    return sorted(found)


def download(mlflow_client, version, dest: Path) -> Path:
    """Download a model version's artifacts into ``dest``; returns the local directory."""
    from mlflow.artifacts import download_artifacts

    dest.mkdir(parents=True, exist_ok=True)
    with registry_errors(f"models:/{version.name}/{version.version}"):
        local = download_artifacts(artifact_uri=download_uri(mlflow_client, version), dst_path=str(dest),
                                   tracking_uri=mlflow_client.tracking_uri)
    return Path(local)


def version_record(version, tracking_uri: str | None) -> dict[str, Any]:
    """What a manifest records about a registry source: registry, name, version, source run."""
    return {"registry": tracking_uri, "name": version.name, "version": str(version.version),
            "run_id": version.run_id or None, "source": version.source,
            "aliases": sorted(getattr(version, "aliases", []) or [])}


def find_published(mlflow_client, target: str, source_name: str, source_version: str) -> list:
    """Versions of ``target`` that ptqflow registered from ``source_name``/``source_version``."""
    query = (f"name={filter_value(target)} and tags.`{TAG_SOURCE_MODEL}`={filter_value(source_name)} "
             f"and tags.`{TAG_SOURCE_VERSION}`={filter_value(str(source_version))}")
    with registry_errors(f"search {target}"):
        return list(mlflow_client.search_model_versions(query))
