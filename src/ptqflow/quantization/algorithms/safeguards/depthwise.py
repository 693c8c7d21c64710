"""Depthwise safeguard: two-sided inputs of depthwise convolutions with widely differing channel ranges are kept
in float (their per-channel max |x| is observed by the statistics pass, see ``inputs``)."""

from __future__ import annotations

import numpy as np
import onnx

from ptqflow.config import QuantizationConfig
from ptqflow.quantization.statistics import Statistics


def is_depthwise(node, inits) -> bool:
    """True for a Conv with one input channel per group (depthwise)."""
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group > 1 and inits[node.input[1]].dims[1] == 1


def inputs(prepared: onnx.ModelProto, points: list[dict]) -> set[str]:
    """Tensors of the activation points whose every consumer edge is a depthwise convolution."""
    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    return {p["tensor"] for p in points if all(is_depthwise(nodes.get(e[0]), inits) for e in p["edges"])}


def float_decisions(prepared: onnx.ModelProto, stats: Statistics, config: QuantizationConfig,
                    channel_absmax: dict[str, np.ndarray]) -> list[dict]:
    """The activation tensors of the plan to keep in float, each with its reason.

    A depthwise conv never mixes channels, so the channels whose range is far below the per-tensor scale lose
    their precision for good; two-sided (pre-activation, e.g. a BatchNorm output) inputs are where this bites.
    Thresholds: ``advanced.depthwise_channel_spread`` and ``advanced.depthwise_two_sided_ratio`` (measured on
    PP-OCR: quantizing the detector's depthwise inputs keeps its stem in int8 at no cost).
    """
    adv = config.advanced
    if not adv.safeguard("depthwise"):
        return []
    ranges = stats.ranges(True)
    depthwise = inputs(prepared, stats.plan["activations"])
    decisions = []
    for p in stats.plan["activations"]:
        lo, hi = ranges[p["group"]]
        absmax = channel_absmax.get(p["tensor"])
        spread = float(np.median(absmax) / max(absmax.max(), 1e-12)) if absmax is not None else 0.0
        if (p["tensor"] in depthwise and lo < -adv.depthwise_two_sided_ratio * max(hi, 0.0)
                and spread < adv.depthwise_channel_spread):
            decisions.append(
                {"tensor": p["tensor"], "reason": f"auto_safeguard: two-sided input [{lo:.3g}, {hi:.3g}] of a "
                                                  f"depthwise convolution, median channel at {spread:.2f} of its "
                                                  "range, kept in float"})
    return decisions
