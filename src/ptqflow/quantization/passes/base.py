"""What every pass has in common: a name, the AdvancedParameters field that switches it (its thresholds are
AdvancedParameters fields too, never numbers in code) and a PassResult saying what it changed.

A pass does one thing, lives in its own file and reports what it changed, in the style of onnx ir-py's passes.
Graph passes (ptqflow.quantization.graph.passes) rewrite the FP32 model before placement; plan passes
(ptqflow.quantization.passes) refine the QuantizationPlan before or after the statistics pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ptqflow.config import AdvancedParameters


@dataclass
class PassResult:
    """What one pass did: ``changed`` and one human-readable line per change (logged; kept in the plan's
    decisions where the pass decides something about a quantizer)."""

    name: str
    changed: bool
    changes: list[str] = field(default_factory=list)


class Pass:
    """Base of every pass. ``switch`` names the AdvancedParameters field that turns the pass on or off; a field
    left at None follows ``auto_safeguards`` (the safeguards' common default). ``switch = None``: the pass is
    part of what quantization means and always runs."""

    name: ClassVar[str]
    switch: ClassVar[str | None] = None

    def enabled(self, advanced: AdvancedParameters) -> bool:
        if self.switch is None:
            return True
        value = getattr(advanced, self.switch)
        return advanced.auto_safeguards if value is None else bool(value)
