"""Start-up device check: a step asked to run on CUDA, an NPU or a non-CPU OpenVINO device fails at once
(DeviceUnavailableError, exit 6) when this environment lacks it, before any input is staged.

What each setting needs:

- ``device: cuda`` (collect-stats, quantize, validate): onnxruntime's CUDAExecutionProvider (the CUDA image
  installs onnxruntime-gpu), an NVIDIA device node, and a tiny session that really runs on the GPU. The last
  probe catches a provider that is installed but cannot start (no GPU visible, CUDA/cuDNN libraries missing),
  where onnxruntime would otherwise carry on on the CPU.
- ``device: npu`` (the same steps): OpenVINO listing an NPU in ``Core().available_devices``.
- ``validation.openvino_device`` (validate) and ``export.openvino_device`` (export-ir), when not CPU: OpenVINO
  listing that device.

The default configuration (cpu everywhere) checks nothing and imports nothing. Probe results are cached per
process, so ``ptqflow run`` pays for each probe once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ptqflow.config import ExecutionDevice, PipelineConfig
from ptqflow.errors import DeviceUnavailableError
from ptqflow.pipeline.steps import ACCELERATED_STEPS


@dataclass(frozen=True)
class Need:
    """One device a step needs: ``kind`` is "cuda", "npu" or "openvino"; ``field`` is the config field asking."""

    step: str
    kind: str
    device: str
    field: str


def needs(steps: Iterable[str], cfg: PipelineConfig) -> list[Need]:
    """The devices ``steps`` need under ``cfg``, beyond the CPU (which every environment has)."""
    found: list[Need] = []
    for step in steps:
        if step in ACCELERATED_STEPS and cfg.device != ExecutionDevice.CPU:
            found.append(Need(step, cfg.device.value, cfg.device.value, "device"))
        if step == "validate":
            found.append(Need(step, "openvino", cfg.validation.openvino_device, "validation.openvino_device"))
        if step == "export-ir":
            found.append(Need(step, "openvino", cfg.export.openvino_device, "export.openvino_device"))
    return [n for n in found if not (n.kind == "openvino" and _is_cpu(n.device))]


def _is_cpu(openvino_device: str) -> bool:
    return openvino_device.upper().split(".")[0] == "CPU"


def require(steps: Iterable[str], cfg: PipelineConfig) -> None:
    """Raise DeviceUnavailableError for the first device ``steps`` need that this environment lacks."""
    for need in needs(steps, cfg):
        problem = problem_with(need.kind, need.device)
        if problem:
            raise DeviceUnavailableError(
                f"{need.step}: {need.field}={need.device!r} but {problem}. Not running on the CPU instead: "
                f"run this step where the device is present, or set {need.field} to "
                f"{'CPU' if need.kind == 'openvino' else 'cpu'}"
            )


def problem_with(kind: str, device: str) -> str | None:
    """Why ``device`` of ``kind`` ("cuda", "npu", "openvino") is unusable here, or None when it is usable."""
    if kind == ExecutionDevice.CUDA.value:
        return cuda_problem()
    if kind == ExecutionDevice.NPU.value:
        return openvino_problem("NPU")
    return openvino_problem(device)


@functools.lru_cache(maxsize=None)
def cuda_problem() -> str | None:
    """None when onnxruntime runs a tiny model on an NVIDIA GPU here; otherwise what is missing."""
    from ptqflow.orchestration.images import image
    from ptqflow.runtime.sessions import available_providers, make_session

    providers = available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (f"this onnxruntime has no CUDAExecutionProvider (providers: {', '.join(providers)}); "
                f"the CUDA image {image('cuda')} installs onnxruntime-gpu")
    nodes = nvidia_device_nodes()
    if not nodes:
        return ("no NVIDIA GPU is visible (no /dev/nvidia0...): the container was started without a GPU "
                "(Kubernetes: a nvidia.com/gpu resource limit; Docker: --gpus)")
    try:
        session = make_session(_probe_model(), "cuda")
        if session.get_providers()[0] != "CUDAExecutionProvider":
            return (f"onnxruntime could not start its CUDA provider on {', '.join(nodes)} and fell back to "
                    f"{session.get_providers()[0]} (CUDA or cuDNN libraries missing, or the driver is too old)")
        x = np.arange(4, dtype=np.float32)
        (y,) = session.run(None, {"x": x})
    except DeviceUnavailableError as err:
        return str(err)
    except Exception as err:  # onnxruntime raises plain RuntimeErrors for CUDA failures
        return f"onnxruntime's CUDA provider failed on a probe model: {type(err).__name__}: {err}"
    if not np.array_equal(y, x + x):
        return "onnxruntime's CUDA provider returned a wrong result on a probe model"
    return None


def nvidia_device_nodes(dev: Path = Path("/dev")) -> list[str]:
    """The NVIDIA GPU device nodes (``nvidia0``, ``nvidia1``...) under ``dev``, sorted."""
    return sorted(str(p) for p in dev.glob("nvidia[0-9]*"))


@functools.lru_cache(maxsize=None)
def openvino_problem(device: str) -> str | None:
    """None when OpenVINO lists ``device`` here; otherwise what is missing."""
    from ptqflow.runtime import openvino as ov
    from ptqflow.orchestration.images import image

    hint = f"; the NPU image {image('npu')} has the NPU driver" if device.upper().startswith("NPU") else ""
    try:
        core = ov.core()
    except ImportError:
        return f"OpenVINO is not installed (pip install 'ptqflow[openvino]'){hint}"
    try:
        ov.check_device(core, device)
    except DeviceUnavailableError as err:
        return f"{err}{hint}"
    return None


def _probe_model() -> bytes:
    """A one-node model (y = x + x) for the CUDA probe."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "ptqflow_device_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def report(steps: Iterable[str], cfg: PipelineConfig) -> dict:
    """What ``ptqflow check-device`` prints: each needed device and its problem (None when usable)."""
    checked = [{"step": n.step, "field": n.field, "device": n.device, "problem": problem_with(n.kind, n.device)}
               for n in needs(steps, cfg)]
    return {"ok": all(c["problem"] is None for c in checked), "checked": checked}
