"""Error-driven mixed precision (``safeguard_mixed_precision``): the activation quantizers that carry most of
the model's output error, measured on a few calibration samples, stay in float (the search:
ptqflow.quantization.algorithms.error_search). It runs at quantize time, where the calibration samples are at
hand in every face (sharded collection included), before the plan is written as QDQ."""

from __future__ import annotations

import math

from ptqflow.config import QuantizationConfig, RangeEstimator
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms import error_search
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass
from ptqflow.quantization.plan import FloatTensor
from ptqflow.quantization.statistics.runner import make_runner

log = get_logger("mixed_precision")


class MixedPrecision(PlanPass):
    """Bounded by ``advanced.mixed_precision_*``: samples, the share of quantizers that may go float, the share
    of the error a quantizer must carry, the target error and the evaluations."""

    name = "mixed_precision"
    switch = "safeguard_mixed_precision"
    order = 95
    stage = "quantize"

    def samples(self, config: QuantizationConfig) -> int:
        return 2 * config.advanced.mixed_precision_samples  # the search's samples, then as many held out

    def run(self, ctx: PlanContext) -> PassResult:
        adv = ctx.config.advanced
        if not ctx.samples:
            return PassResult(self.name, False, ["skipped: no calibration samples at hand"])
        mean_minmax = RangeEstimator(adv.activations_range) == RangeEstimator.MEAN_MINMAX
        n_points, n = len(ctx.plan.activations), adv.mixed_precision_samples
        found = error_search.search(
            ctx.prepared, ctx.plan, ctx.statistics.ranges(mean_minmax), ctx.samples[:n],
            ctx.make_session, lambda m, outputs: make_runner(m, outputs, ctx.device, adv.statistics_runtime,
                                                             lambda m2, d: ctx.make_session(m2)),
            max_float=max(1, math.floor(adv.mixed_precision_max_float_share * n_points)),
            min_share=adv.mixed_precision_min_share, target=adv.mixed_precision_target_error,
            max_evals=adv.mixed_precision_max_evals, held_out=ctx.samples[n:2 * n])
        ctx.plan.output_errors.update(found.contributions)
        ctx.plan.keep_in_float([
            FloatTensor(m.tensor, f"mixed precision: carries {m.error_int8 - m.error_float:.3g} of the output error "
                                  f"({m.error_int8:.3g} -> {m.error_float:.3g} in float, mostly output {m.output!r})",
                        self.name, m.as_dict()) for m in found.float_tensors])
        summary = (f"output error {found.error_int8:.4g} all int8, {found.error_final:.4g} after, {found.error_floor:.4g} "
                   f"weights only; {len(found.float_tensors)} of {n_points} quantizers kept in float; "
                   f"{found.evaluations} evaluations; stopped: {found.stopped}")
        return PassResult(self.name, bool(found.float_tensors),
                          [summary] + [f"{m.tensor}: {m.as_dict()}" for m in found.float_tensors])


PASS = MixedPrecision()
