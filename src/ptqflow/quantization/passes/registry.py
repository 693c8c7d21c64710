"""The plan passes: each module of ptqflow.quantization.passes that defines ``PASS`` (a PlanPass) is one, found
here and run in its ``order``. Adding a pass is adding a file to the package."""

from __future__ import annotations

import importlib
import pkgutil

import ptqflow.quantization.passes as package
from ptqflow.quantization.passes.context import PlanPass


def plan_passes(stage: str = "collect") -> list[PlanPass]:
    """Every plan pass of the package that runs at ``stage`` ("collect" or "quantize"), in run order (``order``,
    then name)."""
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        instance = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "PASS", None)
        if isinstance(instance, PlanPass) and instance.stage == stage:
            found.append(instance)
    return sorted(found, key=lambda p: (p.order, p.name))
