"""The container image each step runs in: one place for repository, tag and per-device variant.

The tag is the ptqflow package version, so a DAG or compiled pipeline built from this checkout runs the
code it was built from. onnxruntime's CPU, CUDA and OpenVINO wheels cannot share an environment, hence one
image per execution device (``-cuda`` / ``-npu`` suffixes), each built from its Dockerfile under containers/.

``python -m ptqflow.orchestration.images --device cuda`` prints the CUDA image's reference (the Makefile tags with it);
``--dockerfile`` prints the Dockerfile instead, ``--all`` one line per device.
"""

from __future__ import annotations

import argparse
import os
import sys

from ptqflow import __version__

DEFAULT_REPOSITORY = "ghcr.io/ptqflow/ptqflow"
_SUFFIX = {"cpu": "", "cuda": "-cuda", "npu": "-npu"}
# The Dockerfile each device's image is built from, relative to the repository root.
DOCKERFILES = {"cpu": "containers/cpu/Dockerfile", "cuda": "containers/gpu/Dockerfile",
               "npu": "containers/npu/Dockerfile"}
_ALIASES = {"gpu": "cuda"}  # the containers/ folder name of the CUDA image


def image(device: str = "cpu", repository: str | None = None) -> str:
    """``<repository>:<version>[-cuda|-npu]``; the repository comes from PTQFLOW_IMAGE_REPOSITORY if set."""
    device = str(getattr(device, "value", device)).lower()
    if device not in _SUFFIX:
        raise ValueError(f"execution device {device!r}: expected one of {', '.join(_SUFFIX)}")
    repo = repository or os.environ.get("PTQFLOW_IMAGE_REPOSITORY", DEFAULT_REPOSITORY)
    return f"{repo}:{__version__}{_SUFFIX[device]}"


def step_image(step: str, device: str) -> str:
    """Steps that run models get the device's image; the others run on the CPU image."""
    from ptqflow.pipeline.steps import ACCELERATED_STEPS

    return image(device if step in ACCELERATED_STEPS else "cpu")


def main(argv: list[str] | None = None) -> int:
    """Print an image reference (or its Dockerfile); used by the Makefile and the docs."""
    parser = argparse.ArgumentParser(prog="python -m ptqflow.orchestration.images",
                                     description="Print the container image reference of an execution device.")
    parser.add_argument("--device", default="cpu", choices=[*_SUFFIX, *_ALIASES])
    parser.add_argument("--dockerfile", action="store_true", help="print the Dockerfile path instead")
    parser.add_argument("--all", action="store_true", help="one line per device: device, Dockerfile, image")
    args = parser.parse_args(argv)
    if args.all:
        for device in _SUFFIX:
            print(device, DOCKERFILES[device], image(device))
        return 0
    device = _ALIASES.get(args.device, args.device)
    print(DOCKERFILES[device] if args.dockerfile else image(device))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
