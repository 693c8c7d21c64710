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

from typing import Iterator

import numpy as np

from ptqflow.config import QuantizationConfig
from ptqflow.quantization.algorithms import range_search
from ptqflow.quantization.algorithms.output_error import decision_outputs, token_masks
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass


class RangeSearch(PlanPass):
    """Switch ``range_search``; samples: ``range_search_samples`` to choose on, as many more to judge on. After the
    mixed-precision search (the quantizers it keeps in float need no range). The model is run through three
    methods (``values``, ``references``, ``outputs``): onnxruntime here, OpenVINO in its OpenVINO form
    (openvino_engine.RangeSearchOnOpenVINO)."""

    name = "range_search"
    switch = "range_search"
    order = 96
    stage = "quantize"

    def samples(self, config: QuantizationConfig) -> int:
        return 2 * config.advanced.range_search_samples

    def ready(self, ctx: PlanContext) -> str:
        """Why the pass cannot run on ``ctx`` ("" when it can)."""
        return "" if ctx.write is not None else "no writer of the plan at hand"

    def values(self, ctx: PlanContext, tensors: list[str], samples: list[dict]) -> Iterator[dict[str, np.ndarray]]:
        """The FP32 values of ``tensors`` on each of ``samples``."""
        return range_search.onnx_values(ctx.prepared, tensors, samples, ctx.make_session)

    def references(self, ctx: PlanContext, samples: list[dict]) -> list[list]:
        """The FP32 model's outputs on each of ``samples`` (graph output order)."""
        if ctx.references is not None:
            return ctx.references(samples)
        session = ctx.make_session(ctx.prepared)
        return [session.run(None, s) for s in samples]

    def outputs(self, ctx: PlanContext, ranges: dict, samples: list[dict]) -> list[list]:
        """The outputs on each of ``samples`` of the plan written with ``ranges`` (no bias correction)."""
        session = ctx.make_session(ctx.write(ranges))
        return [session.run(None, s) for s in samples]

    def run(self, ctx: PlanContext) -> PassResult:
        if not ctx.samples or ctx.prepared is None or not ctx.plan.activations:
            return PassResult(self.name, False, ["skipped: no calibration samples or no activation quantizers"])
        if ctx.plan.ranges or ctx.plan.range_verdict:
            return PassResult(self.name, False, ["skipped: the plan's ranges were measured already"])
        why = self.ready(ctx)
        if why:
            return PassResult(self.name, False, [f"skipped: {why}"])
        config, plan = ctx.config, ctx.plan
        n = config.advanced.range_search_samples
        default = ctx.statistics.ranges(config.advanced.mean_minmax)
        tensors = sorted({p.tensor for p in plan.activations})
        chosen = range_search.search(plan, ctx.statistics.ranges(True), ctx.statistics.ranges(False),
                                     self.values(ctx, tensors, ctx.samples[:n]), len(ctx.samples[:n]),
                                     config.effective_activation_type())
        picked = {g: (c["min"], c["max"]) for g, c in chosen.items()}
        changed = {g: c for g, c in chosen.items() if picked[g] != default.get(g)}
        if not changed:
            plan.range_verdict = {"kept": False, "reason": "every group's default range had the least error"}
            return PassResult(self.name, False, [f"{len(chosen)} ranges measured: the default estimator's won in "
                                                 "every group"])
        held = ctx.samples[n:2 * n]
        judged = held or ctx.samples[:n]
        verdict = range_search.judge([o.name for o in ctx.prepared.graph.output], decision_outputs(ctx.prepared),
                                     self.references(ctx, judged), lambda r: self.outputs(ctx, r, judged), default,
                                     {**default, **picked}, masks=token_masks(judged))
        verdict["held_out"] = bool(held)
        plan.range_verdict = verdict
        counts: dict[str, int] = {}
        for c in chosen.values():
            counts[c["estimator"]] = counts.get(c["estimator"], 0) + 1
        lines = [f"{len(chosen)} ranges measured: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                 f"{'kept' if verdict['kept'] else 'not kept'}: output error {verdict['error_chosen']:.4g} with the "
                 f"chosen ranges, {verdict['error_default']:.4g} with the default estimator's (relative squared "
                 f"error {verdict['relative_chosen']:.4g} and {verdict['relative_default']:.4g}) on "
                 f"{verdict['samples']} {'held-out ' if held else ''}samples (mostly output {verdict['output']!r})"]
        if not verdict["kept"]:
            return PassResult(self.name, False, lines)
        plan.ranges.update(chosen)
        lines += [f"{g}: {c['estimator']} [{c['min']:.4g}, {c['max']:.4g}], squared error {c['error']:.3g} "
                  f"(mean_minmax {c['errors']['mean_minmax']:.3g})" for g, c in changed.items()]
        return PassResult(self.name, True, lines)


PASS = RangeSearch()
