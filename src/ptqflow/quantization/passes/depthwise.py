"""Depthwise safeguard (``safeguard_depthwise``): two-sided inputs of depthwise convolutions with widely differing
channel ranges stay in float; it declares the per-channel max |x| of those inputs as its own statistics."""

from __future__ import annotations

import numpy as np
import onnx

from ptqflow.config import QuantizationConfig
from ptqflow.quantization.algorithms.quantizer_placement.ops import is_depthwise
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass
from ptqflow.quantization.plan import ActivationQuantizer, QuantizationPlan
from ptqflow.quantization.statistics.points import Reducer, StatisticPoint


def inputs(prepared: onnx.ModelProto, points: list[ActivationQuantizer]) -> set[str]:
    """Tensors of the activation points whose every consumer edge is a depthwise convolution."""
    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    return {p.tensor for p in points if all(is_depthwise(nodes.get(e[0]), inits) for e in p.edges)}


class DepthwiseSafeguard(PlanPass):
    """A depthwise conv never mixes channels, so the channels whose range is far below the per-tensor scale lose
    their precision for good; two-sided (pre-activation, e.g. a BatchNorm output) inputs are where this bites.
    Thresholds: ``advanced.depthwise_channel_spread`` and ``advanced.depthwise_two_sided_ratio`` (evidence:
    docs/algorithms.md#depthwise-inputs)."""

    name = "safeguard_depthwise"
    switch = "safeguard_depthwise"
    order = 20

    def statistic_points(self, prepared: onnx.ModelProto, plan: QuantizationPlan,
                         config: QuantizationConfig) -> list[StatisticPoint]:
        # every depthwise input, per-channel ones too: one whose channel maxima cannot be observed (unknown rank)
        # goes back to one scale (statistics.accumulate.fill_channels), and the safeguard then judges it
        return [StatisticPoint(self.name, t, t, Reducer.ABSMAX, 1) for t in sorted(inputs(prepared, plan.activations))]

    def run(self, ctx: PlanContext) -> PassResult:
        adv = ctx.config.advanced
        ranges = ctx.statistics.ranges(True)
        channel_absmax = ctx.statistics.of(self.name)
        depthwise = {p.tensor for p in ctx.statistics.points if p.consumer == self.name}  # as declared
        decisions = []
        for p in ctx.plan.activations:
            if p.axis is not None:  # a scale per channel: no channel is below the tensor's scale
                continue
            lo, hi = ranges[p.group]
            absmax = channel_absmax.get(p.tensor)
            spread = float(np.median(absmax) / max(absmax.max(), 1e-12)) if absmax is not None else 0.0
            if (p.tensor in depthwise and lo < -adv.depthwise_two_sided_ratio * max(hi, 0.0)
                    and spread < adv.depthwise_channel_spread):
                decisions.append((p.tensor, f"auto_safeguard: two-sided input [{lo:.3g}, {hi:.3g}] of a depthwise "
                                            f"convolution, median channel at {spread:.2f} of its range, kept in float"))
        return self.keep_in_float(ctx, decisions)


PASS = DepthwiseSafeguard()
