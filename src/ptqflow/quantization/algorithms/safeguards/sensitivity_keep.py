"""Sensitivity safeguard (``advanced.sensitivity_search``): the activation quantizers whose removal alone cuts the
model's output error the most are kept in float (the search itself: ptqflow.quantization.algorithms.sensitivity)."""

from __future__ import annotations

import onnx

from ptqflow.quantization.algorithms import sensitivity
from ptqflow.config import QuantizationConfig, RangeEstimator
from ptqflow.quantization.statistics import Statistics


def float_decisions(prepared: onnx.ModelProto, stats: Statistics, config: QuantizationConfig, samples: list,
                    make_session) -> list[dict]:
    """The activation tensors of the plan to keep in float, each with its reason; none unless
    ``advanced.safeguard("sensitivity")`` (``sensitivity_search`` and ``auto_safeguards``) and samples are at hand
    (``advanced.sensitivity_*`` bound the samples, the runs and how many are kept).
    ``make_session(model)`` makes the session the search runs."""
    adv = config.advanced
    if not (adv.safeguard("sensitivity") and samples):
        return []
    points = len(stats.plan["activations"])
    n = max(2, min(adv.sensitivity_samples, adv.sensitivity_max_runs // max(points, 1)))
    mean_minmax = RangeEstimator(adv.activations_range) == RangeEstimator.MEAN_MINMAX
    found = sensitivity.find_sensitive(prepared, stats.plan, stats.ranges(mean_minmax), samples[:n], make_session,
                                       max_points=adv.sensitivity_max_points, min_gain=adv.sensitivity_min_gain,
                                       min_error=adv.sensitivity_min_error)
    return [{"tensor": t, "reason": f"auto_safeguard: most accuracy-sensitive quantizer (output error "
                                    f"{before:.4g} -> {after:.4g} without it)"} for t, before, after in found]
