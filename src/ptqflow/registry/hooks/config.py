"""The hook service's configuration (hook.yaml, non-secret) and its secrets (environment or files only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from ptqflow.errors import ConfigError
from ptqflow.orchestration import FAN_OUTS

CONFIG_ENV = "PTQFLOW_HOOK_CONFIG"
EVENTS = ("model_version.created", "model_version_tag.set", "model_version_alias.created")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AirflowTarget(_Strict):
    """The Airflow deployment to trigger (REST API v2, token auth)."""

    url: str = Field(..., description="Base URL of the Airflow API server, e.g. http://airflow-api-server:8080.")
    dag_id: str = Field("ptqflow_quantize", description="DAG to trigger.")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one REST call.")


class KfpTarget(_Strict):
    """The Kubeflow Pipelines deployment to trigger (``kfp.Client``)."""

    host: str | None = Field(None, description="KFP API host (default: env KFP_HOST).")
    pipeline_name: str = Field("ptqflow-quantize-container-cpu", description="Uploaded pipeline to run.")
    experiment: str = Field("ptqflow", description="KFP experiment of the runs.")
    namespace: str | None = Field(None, description="Kubeflow namespace (multi-user deployments).")


class RegistrySettings(_Strict):
    """The MLflow registry the events come from and the INT8 versions go to."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: env MLFLOW_TRACKING_URI).")
    opt_in_tag: str = Field("ptqflow.quantize=true", description="KEY=VALUE a model version must carry.")
    target_name: str = Field("{name}-int8", description="Registered model of the INT8 versions ({name}: source).")
    alias: str | None = Field(None, description="Alias set on each new INT8 version.")
    experiment: str = Field("ptqflow", description="MLflow experiment of the publishing runs.")

    @field_validator("opt_in_tag")
    @classmethod
    def _key_value(cls, v: str) -> str:
        if "=" not in v or not v.split("=", 1)[0].strip():
            raise ValueError("expected KEY=VALUE, e.g. ptqflow.quantize=true")
        return v

    @property
    def opt_in(self) -> tuple[str, str]:
        key, value = self.opt_in_tag.split("=", 1)
        return key.strip(), value.strip()


class _PipelineBase(_Strict):
    data: str | None = Field(None, description="Dataset URI (a version tag ptqflow.data overrides it).")
    output: str = Field(..., description="Output prefix; {name} and {version} are filled in.")
    config: dict[str, Any] = Field(default_factory=dict, description="Base ptqflow pipeline config of each run.")


# One field per fan-out of the faces (ptqflow.orchestration.FAN_OUTS: statistics_shards, validation_shards), named
# and described as the Airflow DAG's and the KFP pipeline's run parameter it is passed as: a new fan-out needs no
# change here, and the Helm chart's hook.config schema (scripts/gen_helm_schema.py) follows.
PipelineSettings = create_model(
    "PipelineSettings", __base__=_PipelineBase, __doc__="What each triggered run gets besides the model URI.",
    **{f.param: (int, Field(1, ge=1, description=f"{f.description} Passed to each triggered run as its run "
                                                 f"parameter {f.param}."))
       for f in FAN_OUTS.values()})


class ServerSettings(_Strict):
    """Limits of ``hook serve``."""

    max_body_bytes: int = Field(1 << 20, gt=0, description="Larger webhook bodies are refused (413).")
    timestamp_tolerance_s: int = Field(300, gt=0, description="Older or future-dated deliveries are refused.")
    ack_timeout_s: float = Field(10.0, gt=0, description="How long a delivery waits for the trigger's outcome.")
    dedupe_ttl_s: int = Field(86400, gt=0, description="How long delivery ids and model versions are remembered.")


class RetrySettings(_Strict):
    """Retries of an orchestrator call: exponential backoff from backoff_s, capped at max_backoff_s."""

    attempts: int = Field(4, ge=1)
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(30.0, ge=0)


class HookConfig(_Strict):
    """hook.yaml."""

    orchestrator: Literal["airflow", "kfp"] = "airflow"
    airflow: AirflowTarget | None = None
    kfp: KfpTarget | None = None
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    events: list[str] = Field(default_factory=lambda: ["model_version.created", "model_version_tag.set"])
    pipeline: PipelineSettings
    server: ServerSettings = Field(default_factory=ServerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e not in EVENTS]
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)}; supported: {', '.join(EVENTS)}")
        return v


def resolve_path(path: str | None) -> str:
    """The config path from ``--config`` or env PTQFLOW_HOOK_CONFIG; ConfigError when neither is given."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"hook: no config file; pass --config FILE or set {CONFIG_ENV}")
    return path


def load_hook_config(path: str | None) -> HookConfig:
    """Read and validate hook.yaml; ConfigError naming the file and each bad field."""
    p = Path(resolve_path(path))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ConfigError(f"cannot read hook config {p}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"hook config {p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"hook config {p} must hold a mapping at the top level")
    try:
        cfg = HookConfig.model_validate(data)
    except ValidationError as err:
        lines = [f"{p}: field '{'.'.join(str(x) for x in e['loc'])}': "
                 f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None
    if getattr(cfg, cfg.orchestrator) is None and cfg.orchestrator == "airflow":
        raise ConfigError(f"{p}: field 'airflow' is required when orchestrator is airflow (airflow.url)")
    return cfg


def secret(name: str, required: bool = False) -> str | None:
    """Secret ``name`` from env var NAME, else from the file named by NAME_FILE (stripped); never logged."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {err.strerror}") from None
        if value:
            return value
    if required:
        raise ConfigError(f"secret {name} is not set (set {name} or {name}_FILE)")
    return None
