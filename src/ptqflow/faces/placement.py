"""Where each step's pod runs: node selector, tolerations and resource requests/limits per execution device.

collect-stats, quantize and validate run models on the configured execution device, so they ask for the
device plugin's resource (NVIDIA: ``nvidia.com/gpu``; Intel NPU device plugin: ``npu.intel.com/accel``) and
land on labelled nodes. fetch-model, build-calibration and export-ir only move bytes or convert, so they
stay on CPU nodes whatever the device. Both faces (KubernetesPodOperator, kfp-kubernetes) read this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACCELERATED_STEPS = frozenset({"collect-stats", "quantize", "validate"})

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

    def as_dict(self) -> dict:
        """The settings as plain dicts/lists (for logs and tests)."""
        return {"node_selector": dict(self.node_selector), "tolerations": [dict(t) for t in self.tolerations],
                "requests": dict(self.requests), "limits": dict(self.limits), "accelerator": self.accelerator}


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


def placement(step: str, device: str) -> Placement:
    """The pod placement of ``step`` when models run on ``device`` (cpu, cuda or npu)."""
    device = str(getattr(device, "value", device)).lower()
    if device not in _DEVICE:
        raise ValueError(f"execution device {device!r}: expected one of {', '.join(_DEVICE)}")
    return _DEVICE[device] if step in ACCELERATED_STEPS else _CPU


# S3 credentials: one Kubernetes Secret, keys mapped to the environment variables boto3 reads.
S3_SECRET_NAME = "ptqflow-s3"
S3_SECRET_ENV = {"AWS_ACCESS_KEY_ID": "access_key", "AWS_SECRET_ACCESS_KEY": "secret_key",
                 "AWS_ENDPOINT_URL": "endpoint_url"}
