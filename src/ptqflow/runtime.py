"""The one place ptqflow creates onnxruntime sessions: explicit device, all cores, no silent CPU fallback."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from ptqflow.errors import DeviceUnavailableError

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


def make_session(model, device: str = "cpu") -> ort.InferenceSession:
    """An InferenceSession for ``model`` (ModelProto, path or serialized bytes) on ``device`` ("cpu" or "cuda").

    Intra-op threads use every core. Asking for a device whose provider is missing raises
    DeviceUnavailableError naming the providers that are available, instead of falling back to CPU.
    """
    device = str(getattr(device, "value", device)).lower()
    if device not in _PROVIDERS:
        raise DeviceUnavailableError(f"no onnxruntime runner for device {device!r}; available: cpu, cuda")
    provider = _PROVIDERS[device]
    available = available_providers()
    if provider not in available:
        raise DeviceUnavailableError(
            f"device {device!r} needs onnxruntime's {provider}, which this installation lacks; "
            f"available providers: {', '.join(available)}"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    providers = [provider] if device == "cpu" else [provider, "CPUExecutionProvider"]
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, (str, Path)):
        model = str(model)
    return ort.InferenceSession(model, sess_options=opts, providers=providers)
