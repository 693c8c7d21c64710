"""Error-driven mixed precision (``safeguard_mixed_precision``): the quantizers that carry most of the model's
output error, measured on a few calibration samples, stay in float (the search:
ptqflow.quantization.algorithms.error_search): an activation quantizer found goes (its tensor stays float), a
weight quantizer found takes its layers to float (the weight and the activation edges into them). It runs at quantize time, where the calibration samples are at
hand in every face (sharded collection included), before the plan is written as QDQ."""

from __future__ import annotations

import math

from ptqflow.config import QuantizationConfig
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms import error_search
from ptqflow.quantization.algorithms.quantizer_placement import softmax_heads
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass
from ptqflow.quantization.plan import FloatLayer, FloatTensor
from ptqflow.quantization.statistics.runner import make_runner
from ptqflow.runtime.model_files import is_large

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
            return PassResult(self.name, False, ["skipped: no calibration samples at hand"] + self._heads_by_rule(ctx))
        # Weight gates hold every weight twice (float and quantized): not for a model over 2 GB.
        weights = adv.mixed_precision_weights and not is_large(ctx.prepared)
        n_points, n = len(ctx.plan.activations) + (len(ctx.plan.weights) if weights else 0), adv.mixed_precision_samples
        found = self.search(
            ctx, ctx.statistics.ranges(adv.mean_minmax), ctx.samples[:n],
            max_float=max(1, math.floor(adv.mixed_precision_max_float_share * n_points)),
            min_share=adv.mixed_precision_min_share, target=adv.mixed_precision_target_error,
            max_evals=adv.mixed_precision_max_evals, held_out=ctx.samples[n:2 * n], weights=weights,
            references=ctx.references)
        ctx.plan.output_errors.update(found.contributions)
        ctx.plan.keep_in_float([FloatTensor(m.tensor, _why(m), self.name, m.as_dict())
                                for m in found.float_tensors if not m.weight])
        nodes = {w.tensor: [node for node, _ in w.nodes] for w in ctx.plan.weights}
        ctx.plan.keep_layers_float([FloatLayer(node, _why(m, "its weight " + repr(m.tensor)), self.name, m.as_dict())
                                    for m in found.float_tensors if m.weight for node in nodes[m.tensor]])
        floor = ("weights in the search" if weights else f"{found.error_floor:.4g} weights only"
                 + ("; weights left out of the search: the model is over 2 GB (their gates would hold its weights "
                    "twice)" if adv.mixed_precision_weights else ""))
        summary = (f"output error {found.error_int8:.4g} all int8, {found.error_final:.4g} after ({floor}); "
                   f"{len(found.float_tensors)} of {n_points} quantizers kept in float "
                   f"({sum(m.weight for m in found.float_tensors)} weights); "
                   f"{found.evaluations:.3g} evaluations; stopped: {found.stopped}")
        return PassResult(self.name, bool(found.float_tensors),
                          [summary] + [f"{m.tensor}: {m.as_dict()}" for m in found.float_tensors])

    @staticmethod
    def _heads_by_rule(ctx: PlanContext) -> list[str]:
        """Where the search cannot measure (no samples), the Softmax-head rule it stands in for applies, unless
        the user set that switch (AdvancedParameters.safeguard): the heads' layers go float, by that rule."""
        adv = ctx.config.advanced
        if adv.safeguard_softmax_heads is not None or not adv.auto_safeguards or ctx.prepared is None:
            return []
        found, _ = softmax_heads.PASS.float_nodes(GraphIndex(ctx.prepared))
        planned = {n for w in ctx.plan.weights for n, _ in w.nodes} | {e[0] for a in ctx.plan.activations
                                                                         for e in a.edges}
        decisions = [FloatLayer(node, f"{why} (mixed precision, which measures it, had no samples)", by)
                     for node, (by, why) in found.items() if node in planned]
        ctx.plan.keep_layers_float(decisions)
        return [f"{d.node}: {d.reason}" for d in decisions]

    def search(self, ctx: PlanContext, ranges: dict, samples: list[dict], **bounds) -> error_search.SearchResult:
        """error_search.search on ``samples`` with ``bounds`` (its keyword arguments), measured with onnxruntime
        sessions of ``ctx`` and the statistics runtime's runner (an OpenVINO model measures on its own backend:
        openvino_engine.MixedPrecisionOnOpenVINO)."""
        adv = ctx.config.advanced
        return error_search.search(
            ctx.prepared, ctx.plan, ranges, samples, ctx.make_session,
            lambda m, outputs: make_runner(m, outputs, ctx.device, adv.statistics_runtime,
                                           lambda m2, d: ctx.make_session(m2)), **bounds)


def _why(m: error_search.Measured, what: str = "") -> str:
    """The reason recorded with a decision of the search: what the quantizer carries of the output error."""
    return (f"mixed precision: {what + ' ' if what else ''}carries {m.error_int8 - m.error_float:.3g} of the output "
            f"error ({m.error_int8:.3g} -> {m.error_float:.3g} in float, mostly output {m.output!r})")

PASS = MixedPrecision()
