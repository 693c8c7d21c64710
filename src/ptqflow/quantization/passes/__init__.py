"""Plan passes (ptqflow.quantization.passes.context): each module of this package that defines ``PASS`` (a PlanPass)
is one, found by ``plan_passes`` and run in its ``order``. Adding a pass is adding a file here."""

from __future__ import annotations

import importlib
import pkgutil

from ptqflow.quantization.passes.context import PlanContext, PlanPass


def plan_passes() -> list[PlanPass]:
    """Every plan pass of this package, in run order (``order``, then name)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        instance = getattr(importlib.import_module(f"{__name__}.{info.name}"), "PASS", None)
        if isinstance(instance, PlanPass):
            found.append(instance)
    return sorted(found, key=lambda p: (p.order, p.name))


__all__ = ["PlanContext", "PlanPass", "plan_passes"]
