"""Activation ranges chosen by measured error (``range_search``): per scale group, the candidate range (mean or
global min/max, percentiles, the squared-error-optimal clip) whose quantized values are closest to the FP32 ones
on a few calibration samples (ptqflow.quantization.algorithms.range_search), kept as a whole only where they lower
the model's output error on as many held-out samples (``range_search.judge``). A quantize-stage pass: it runs when
the statistics are applied, on the calibration samples quantize reads (so a sharded collection takes it too), after
the mixed-precision search, so the verdict is on the plan that is written: the search's float decisions change
which ranges matter (on all-MiniLM-L6-v2 the chosen ranges halved the output error of the plan before the search
and raised the final one's). The choice, its measured errors and the verdict go into the plan (``plan.ranges``,
``plan.range_verdict``); ``Statistics.ranges`` applies kept ranges for every reader."""

from __future__ import annotations

from ptqflow.config import QuantizationConfig, RangeEstimator
from ptqflow.quantization.algorithms import range_search
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass
from ptqflow.runtime.model_files import is_large


class RangeSearch(PlanPass):
    """Switch ``range_search``; samples: ``range_search_samples`` to choose on, as many more to judge on. After the
    mixed-precision search (the quantizers it keeps in float need no range)."""

    name = "range_search"
    switch = "range_search"
    order = 96
    stage = "quantize"

    def samples(self, config: QuantizationConfig) -> int:
        return 2 * config.advanced.range_search_samples

    def run(self, ctx: PlanContext) -> PassResult:
        if not ctx.samples or ctx.prepared is None or ctx.write is None or not ctx.plan.activations:
            return PassResult(self.name, False, ["skipped: no calibration samples, no writer or no activation "
                                                 "quantizers"])
        if ctx.plan.ranges or ctx.plan.range_verdict:
            return PassResult(self.name, False, ["skipped: the plan's ranges were measured already"])
        if is_large(ctx.prepared):  # its probe and the two written models would each hold the weights again
            return PassResult(self.name, False, ["skipped: the model is over 2 GB"])
        config = ctx.config
        n = config.advanced.range_search_samples
        default = ctx.statistics.ranges(RangeEstimator(config.advanced.activations_range) == RangeEstimator.MEAN_MINMAX)
        chosen = range_search.search(ctx.prepared, ctx.plan, ctx.statistics.ranges(True), ctx.statistics.ranges(False),
                                     ctx.samples[:n], ctx.make_session, config.effective_activation_type())
        picked = {g: (c["min"], c["max"]) for g, c in chosen.items()}
        changed = {g: c for g, c in chosen.items() if picked[g] != default.get(g)}
        if not changed:
            ctx.plan.range_verdict = {"kept": False, "reason": "every group's default range had the least error"}
            return PassResult(self.name, False, [f"{len(chosen)} ranges measured: the default estimator's won in "
                                                 "every group"])
        held = ctx.samples[n:2 * n]
        verdict = range_search.judge(ctx.prepared, ctx.write, ctx.make_session, default, {**default, **picked},
                                     held or ctx.samples[:n], ctx.references)
        verdict["held_out"] = bool(held)
        ctx.plan.range_verdict = verdict
        counts: dict[str, int] = {}
        for c in chosen.values():
            counts[c["estimator"]] = counts.get(c["estimator"], 0) + 1
        lines = [f"{len(chosen)} ranges measured: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                 f"{'kept' if verdict['kept'] else 'not kept'}: output error {verdict['error_chosen']:.4g} with the "
                 f"chosen ranges, {verdict['error_default']:.4g} with the default estimator's on "
                 f"{verdict['samples']} {'held-out ' if held else ''}samples (mostly output {verdict['output']!r})"]
        if not verdict["kept"]:
            return PassResult(self.name, False, lines)
        ctx.plan.ranges.update(chosen)
        lines += [f"{g}: {c['estimator']} [{c['min']:.4g}, {c['max']:.4g}], squared error {c['error']:.3g} "
                  f"(mean_minmax {c['errors']['mean_minmax']:.3g})" for g, c in changed.items()]
        return PassResult(self.name, True, lines)


PASS = RangeSearch()
