"""Plan passes: they refine the QuantizationPlan once the statistics are in (the automatic safeguards), each in
its own file of ptqflow.quantization.passes, found there by ``plan_passes()``.

A plan pass declares what it needs before the statistics pass runs (``statistic_points``: statistics of its own;
``samples``: calibration samples kept aside to run the model again), then ``run`` sees the plan, the statistics
and those samples, changes the plan (``plan.keep_in_float``) and returns a PassResult saying what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import onnx

from ptqflow.config import QuantizationConfig
from ptqflow.quantization.passes.base import Pass, PassResult
from ptqflow.quantization.plan import FloatTensor, QuantizationPlan
from ptqflow.quantization.statistics.points import StatisticPoint
from ptqflow.quantization.statistics.store import Statistics


@dataclass
class PlanContext:
    """What a plan pass sees: the prepared FP32 model the plan refers to (None when shards' statistics are merged:
    a pass that needs the model or ``samples`` declares ``samples`` and is refused for sharding), the plan, the
    statistics (with this pass's own points), the config, the kept calibration samples and a session maker for
    the model's device."""

    prepared: onnx.ModelProto | None
    plan: QuantizationPlan
    statistics: Statistics
    config: QuantizationConfig
    samples: list[dict]
    make_session: Callable[[onnx.ModelProto], Any]
    device: str = "cpu"  # what make_session runs on (a pass that picks a runner, e.g. OpenVINO's, needs it)
    # The FP32 model's outputs on samples, computed once per sample (runtime.sessions.OutputCache); None: the pass
    # runs make_session's session itself.
    references: Callable[[list[dict]], list[list]] | None = None
    # The plan written as a QDQ model (no bias correction) with the given activation ranges (scale group -> (min,
    # max)) in the config's number formats: what a quantize-stage pass measures its choices on; None where not at hand.
    write: Callable[[dict], onnx.ModelProto] | None = None


class PlanPass(Pass):
    """A pass over the plan after the statistics pass; ``order`` places it among the others (lower first).
    ``stage``: "collect" runs it at the end of the collection (its decisions saved with the statistics),
    "quantize" when the statistics are applied, after bias correction and its guard (a changed plan is written
    again); its samples are then the calibration samples quantize reads, at hand in every face (a sharded
    collection included)."""

    order: ClassVar[int]
    stage: ClassVar[str] = "collect"

    def statistic_points(self, prepared: onnx.ModelProto, plan: QuantizationPlan,
                         config: QuantizationConfig) -> list[StatisticPoint]:
        """The statistics this pass reads, declared before the statistics pass (none by default)."""
        return []

    def samples(self, config: QuantizationConfig) -> int:
        """How many calibration samples this pass needs kept aside (none by default)."""
        return 0

    def run(self, ctx: PlanContext) -> PassResult:
        raise NotImplementedError

    def keep_in_float(self, ctx: PlanContext, decisions: list[tuple[str, str]]) -> PassResult:
        """Record ``decisions`` ((tensor, reason) pairs) in the plan as this pass's; the PassResult saying so."""
        ctx.plan.keep_in_float([FloatTensor(t, reason, self.name) for t, reason in decisions])
        return PassResult(self.name, bool(decisions), [f"{t}: {reason}" for t, reason in decisions])
