"""Activation ranges chosen by measured error (``range_search``): per scale group, the candidate range (mean or
global min/max, percentiles, the squared-error-optimal clip) whose quantized values are closest to the FP32 ones
on a few kept calibration samples (ptqflow.quantization.algorithms.range_search). The choice and its measured
error go into the plan (``plan.ranges``), which every reader of ``Statistics.ranges`` then uses."""

from __future__ import annotations

from ptqflow.config import QuantizationConfig
from ptqflow.quantization.algorithms import range_search
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass


class RangeSearch(PlanPass):
    """Switch ``range_search`` (off by default: bench/README.md has the figures); samples:
    ``range_search_samples``. After the safeguards (the quantizers they keep in float need no range)."""

    name = "range_search"
    switch = "range_search"
    order = 30

    def samples(self, config: QuantizationConfig) -> int:
        return config.advanced.range_search_samples

    def run(self, ctx: PlanContext) -> PassResult:
        if not ctx.samples or ctx.prepared is None or not ctx.plan.activations:
            return PassResult(self.name, False, ["skipped: no calibration samples or no activation quantizers"])
        config = ctx.config
        qtype = config.effective_activation_type()
        chosen = range_search.search(ctx.prepared, ctx.plan, ctx.statistics.ranges(True), ctx.statistics.ranges(False),
                                     ctx.samples[:config.advanced.range_search_samples], ctx.make_session, qtype)
        ctx.plan.ranges.update(chosen)
        changed = {g: c for g, c in chosen.items() if c["estimator"] != "mean_minmax"}
        counts: dict[str, int] = {}
        for c in chosen.values():
            counts[c["estimator"]] = counts.get(c["estimator"], 0) + 1
        lines = [f"{len(chosen)} ranges measured: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
        lines += [f"{g}: {c['estimator']} [{c['min']:.4g}, {c['max']:.4g}], squared error {c['error']:.3g} "
                  f"(mean_minmax {c['errors']['mean_minmax']:.3g})" for g, c in changed.items()]
        return PassResult(self.name, bool(changed), lines)


PASS = RangeSearch()
