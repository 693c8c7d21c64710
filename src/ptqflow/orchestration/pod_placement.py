"""Where each step's pod runs: node selector, tolerations and resource requests/limits per execution device.

collect-stats, quantize and validate run models on the configured execution device, so they ask for the
device plugin's resource (NVIDIA: ``nvidia.com/gpu``; Intel NPU device plugin: ``npu.intel.com/accel``) and
land on labelled nodes. fetch-model, build-calibration and export-ir only move bytes or convert, so they
stay on CPU nodes whatever the device. Both faces (KubernetesPodOperator, kfp-kubernetes) read this table.

The built-in table below is a default. A placement file (``load_placement_file``; the Helm chart renders one
into the ConfigMap ``<release>-placement``, key ``placement.yaml``) replaces it with the cluster's own
images, resources, node selectors, tolerations, affinity, S3 Secret and registry Secret, so placement is
configured once: the DAG reads the file named by PTQFLOW_PLACEMENT_FILE at parse time, the KFP compile takes
``--placement``.

Every step pod gets the S3 Secret's keys as env vars. The pods of the steps that talk to the MLflow model
registry (fetch-model, for ``models:/`` URIs, and publish) also get the registry Secret's keys as MLflow's env
vars, each key optional (Kubernetes ``secretKeyRef.optional``): a Secret holding only some keys, or no Secret
at all for runs without a registry, still lets the pod start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ptqflow.errors import ConfigError
from ptqflow.pipeline.steps import ACCELERATED_STEPS  # the steps that run models (ptqflow.pipeline.steps.STEPS)

GPU_RESOURCE = "nvidia.com/gpu"
NPU_RESOURCE = "npu.intel.com/accel"


@dataclass(frozen=True)
class Placement:
    """Scheduling settings of one step's pod (plain data; each face converts it to its own types)."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    accelerator: str | None = None  # the extended resource name, when the step needs one
    affinity: dict[str, Any] = field(default_factory=dict)  # a Kubernetes Affinity object (camelCase keys)
    image: str | None = None  # the step image; None: ptqflow.orchestration.images decides

    def as_dict(self) -> dict:
        """The settings as plain dicts/lists (for logs and tests)."""
        return {"node_selector": dict(self.node_selector), "tolerations": [dict(t) for t in self.tolerations],
                "requests": dict(self.requests), "limits": dict(self.limits), "accelerator": self.accelerator,
                "affinity": dict(self.affinity), "image": self.image}


_CPU = Placement(
    node_selector={"kubernetes.io/arch": "amd64"},
    requests={"cpu": "1", "memory": "2Gi"},
    limits={"cpu": "2", "memory": "8Gi"},
)

# Node labels: NVIDIA GPU feature discovery sets nvidia.com/gpu.present; node-feature-discovery with Intel's
# rules sets intel.feature.node.kubernetes.io/npu. Accelerator nodes are commonly tainted with the resource
# name, so the pods tolerate that taint.
_DEVICE = {
    "cuda": Placement(
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        requests={"cpu": "2", "memory": "8Gi", GPU_RESOURCE: "1"},
        limits={"cpu": "4", "memory": "16Gi", GPU_RESOURCE: "1"},
        accelerator=GPU_RESOURCE,
    ),
    "npu": Placement(
        node_selector={"intel.feature.node.kubernetes.io/npu": "true"},
        tolerations=[{"key": NPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        requests={"cpu": "2", "memory": "8Gi", NPU_RESOURCE: "1"},
        limits={"cpu": "4", "memory": "16Gi", NPU_RESOURCE: "1"},
        accelerator=NPU_RESOURCE,
    ),
    "cpu": Placement(
        node_selector={"kubernetes.io/arch": "amd64"},
        requests={"cpu": "2", "memory": "4Gi"},
        limits={"cpu": "4", "memory": "16Gi"},
    ),
}


# S3 credentials: one Kubernetes Secret, keys mapped to the environment variables boto3 reads.
S3_SECRET_NAME = "ptqflow-s3"
S3_SECRET_ENV = {"AWS_ACCESS_KEY_ID": "access_key", "AWS_SECRET_ACCESS_KEY": "secret_key",
                 "AWS_ENDPOINT_URL": "endpoint_url"}


# MLflow registry address and credentials: one Kubernetes Secret, keys mapped to MLflow's environment variables,
# for the pods of the steps that talk to the registry.
REGISTRY_SECRET_NAME = "ptqflow-mlflow"
REGISTRY_SECRET_ENV = {"MLFLOW_TRACKING_URI": "tracking_uri", "MLFLOW_TRACKING_TOKEN": "token",
                       "MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password"}
REGISTRY_STEPS = frozenset({"fetch-model", "publish"})


@dataclass(frozen=True)
class PlacementTable:
    """Placement per execution device, the placement of the steps that only move bytes, the S3 Secret and the
    registry Secret (an empty name: none)."""

    devices: dict[str, Placement]
    light: Placement
    s3_secret_name: str = S3_SECRET_NAME
    s3_secret_env: dict[str, str] = field(default_factory=lambda: dict(S3_SECRET_ENV))
    registry_secret_name: str = REGISTRY_SECRET_NAME
    registry_secret_env: dict[str, str] = field(default_factory=lambda: dict(REGISTRY_SECRET_ENV))

    def placement(self, step: str, device: str) -> Placement:
        """The pod placement of ``step`` when models run on ``device`` (cpu, cuda or npu)."""
        device = str(getattr(device, "value", device)).lower()
        if device not in self.devices:
            raise ValueError(f"execution device {device!r}: expected one of {', '.join(self.devices)}")
        return self.devices[device] if step in ACCELERATED_STEPS else self.light

    def registry_env(self, step: str) -> dict[str, str]:
        """MLflow env var -> key of the registry Secret for ``step``'s pod; {} for the steps that do not talk
        to the registry (only fetch-model and publish do) and when no registry Secret is configured. The faces
        mark each key optional."""
        if step not in REGISTRY_STEPS or not self.registry_secret_name:
            return {}
        return dict(self.registry_secret_env)


BUILTIN = PlacementTable(devices=_DEVICE, light=_CPU)

PLACEMENT_FILE_ENV = "PTQFLOW_PLACEMENT_FILE"
# Placement file key -> execution device (the chart and the file say "gpu" where the config says "cuda").
FILE_DEVICES = {"cpu": "cpu", "gpu": "cuda", "npu": "npu"}


def placement(step: str, device: str, table: PlacementTable | None = None) -> Placement:
    """The pod placement of ``step`` when models run on ``device`` (cpu, cuda or npu), from ``table``
    (default: ``active_table()``)."""
    return (table or active_table()).placement(step, device)


def active_table(path: str | os.PathLike | None = None) -> PlacementTable:
    """The placement file at ``path``, else the one named by PTQFLOW_PLACEMENT_FILE, else the built-in table."""
    path = path or os.environ.get(PLACEMENT_FILE_ENV) or None
    return load_placement_file(path) if path else BUILTIN


def toleration_kwargs(toleration: dict[str, Any]) -> dict[str, Any]:
    """A toleration's keys as the Kubernetes Python client and kfp-kubernetes name them (snake_case)."""
    return {("toleration_seconds" if k == "tolerationSeconds" else k): v for k, v in toleration.items()}


# --- The placement file -------------------------------------------------------------------------------------

_Quantity = str  # Kubernetes quantities: "2", "500m", "8Gi" (YAML numbers are accepted and kept as text)


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Toleration(_FileModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")


class _Resources(_FileModel):
    requests: dict[str, _Quantity] = Field(default_factory=dict)
    limits: dict[str, _Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                    for k, v in value.items()}
        return value


class _Affinity(_FileModel):
    node_affinity: dict[str, Any] | None = Field(None, alias="nodeAffinity")
    pod_affinity: dict[str, Any] | None = Field(None, alias="podAffinity")
    pod_anti_affinity: dict[str, Any] | None = Field(None, alias="podAntiAffinity")


class _Device(_FileModel):
    image: str | None = None
    accelerator: str = ""
    resources: _Resources = Field(default_factory=_Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[_Toleration] = Field(default_factory=list)
    affinity: _Affinity = Field(default_factory=_Affinity)

    @model_validator(mode="after")
    def _resource_names(self) -> "_Device":
        allowed = {"cpu", "memory"} | ({self.accelerator} if self.accelerator else set())
        for kind in ("requests", "limits"):
            for name in getattr(self.resources, kind):
                if name not in allowed:
                    raise ValueError(f"resources.{kind}.{name}: only cpu, memory and the device's accelerator "
                                     f"({self.accelerator or 'none'}) can be set")
        if self.accelerator and self.accelerator not in self.resources.limits:
            raise ValueError(f"resources.limits.{self.accelerator}: the accelerator resource needs a limit")
        return self

    def to_placement(self) -> Placement:
        """This entry as a Placement (tolerations and affinity keep their camelCase Kubernetes keys)."""
        return Placement(node_selector=dict(self.node_selector),
                         tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in self.tolerations],
                         requests=dict(self.resources.requests), limits=dict(self.resources.limits),
                         accelerator=self.accelerator or None,
                         affinity=self.affinity.model_dump(by_alias=True, exclude_none=True),
                         image=self.image or None)


class _S3(_FileModel):
    secret_name: str = Field(S3_SECRET_NAME, alias="secretName", min_length=1)
    env: dict[str, str] = Field(default_factory=lambda: dict(S3_SECRET_ENV))


class _Registry(_FileModel):
    secret_name: str = Field(REGISTRY_SECRET_NAME, alias="secretName")  # "": no registry Secret
    env: dict[str, str] = Field(default_factory=lambda: dict(REGISTRY_SECRET_ENV))


class _PlacementFile(_FileModel):
    devices: dict[Literal["cpu", "gpu", "npu"], _Device]
    s3: _S3 = Field(default_factory=_S3)
    registry: _Registry = Field(default_factory=_Registry)

    @field_validator("devices")
    @classmethod
    def _all_devices(cls, value: dict) -> dict:
        missing = [d for d in FILE_DEVICES if d not in value]
        if missing:
            raise ValueError(f"missing device(s): {', '.join(missing)}")
        return value


def parse_placement(data: Any, origin: str = "placement file") -> PlacementTable:
    """Validate the placement file's content (or the ConfigMap that holds it under ``placement.yaml``) into a
    PlacementTable; raise ConfigError naming the key."""
    if isinstance(data, dict) and data.get("kind") == "ConfigMap":
        text = (data.get("data") or {}).get("placement.yaml")
        if text is None:
            raise ConfigError(f"{origin}: ConfigMap has no data key 'placement.yaml'")
        data = _yaml(text, origin)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: must hold a mapping with 'devices', got {type(data).__name__}")
    try:
        parsed = _PlacementFile.model_validate(data)
    except ValidationError as err:
        from ptqflow.config import _format_validation_error

        raise ConfigError(_format_validation_error(err, origin)) from None
    devices = {FILE_DEVICES[key]: dev.to_placement() for key, dev in parsed.devices.items()}
    light = devices["cpu"]
    return PlacementTable(devices={d: devices[d] for d in FILE_DEVICES.values()}, light=light,
                          s3_secret_name=parsed.s3.secret_name, s3_secret_env=dict(parsed.s3.env),
                          registry_secret_name=parsed.registry.secret_name,
                          registry_secret_env=dict(parsed.registry.env))


def load_placement_file(path: str | os.PathLike) -> PlacementTable:
    """Read a placement file (YAML/JSON, or a ConfigMap manifest holding it) into a PlacementTable. Of several
    YAML documents (``helm template`` output with the ConfigMap in two namespaces) the first is read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read placement file {p}: {err.strerror}") from None
    return parse_placement(_yaml(text, str(p)), str(p))


def _yaml(text: str, origin: str) -> Any:
    """The first YAML document of ``text`` (None when empty)."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin} is not valid YAML: {err}") from None
    return docs[0] if docs else None
