"""The container image each step runs in: one place for repository, tag and per-device variant.

The tag is the ptqflow package version, so a DAG or compiled pipeline built from this checkout runs the
code it was built from. onnxruntime's CPU, CUDA and OpenVINO wheels cannot share an environment, hence one
image per execution device (``-cuda`` / ``-npu`` suffixes).
"""

from __future__ import annotations

import os

from ptqflow import __version__

DEFAULT_REPOSITORY = "ghcr.io/ptqflow/ptqflow"
_SUFFIX = {"cpu": "", "cuda": "-cuda", "npu": "-npu"}


def image(device: str = "cpu", repository: str | None = None) -> str:
    """``<repository>:<version>[-cuda|-npu]``; the repository comes from PTQFLOW_IMAGE_REPOSITORY if set."""
    device = str(getattr(device, "value", device)).lower()
    if device not in _SUFFIX:
        raise ValueError(f"execution device {device!r}: expected one of {', '.join(_SUFFIX)}")
    repo = repository or os.environ.get("PTQFLOW_IMAGE_REPOSITORY", DEFAULT_REPOSITORY)
    return f"{repo}:{__version__}{_SUFFIX[device]}"


def step_image(step: str, device: str) -> str:
    """Steps that run models get the device's image; the others run on the CPU image."""
    from ptqflow.faces.placement import ACCELERATED_STEPS

    return image(device if step in ACCELERATED_STEPS else "cpu")
