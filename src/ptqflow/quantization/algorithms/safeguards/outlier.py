"""Outlier safeguard: quantizers on tensors with extreme ranges are kept in float."""

from __future__ import annotations

import numpy as np

from ptqflow.config import QuantizationConfig
from ptqflow.quantization.statistics import Statistics


def float_decisions(stats: Statistics, config: QuantizationConfig) -> list[dict]:
    """The activation tensors of the plan to keep in float, each with its reason.

    A range ``advanced.outlier_range_ratio`` times wider than the typical per-sample range is dominated by rare
    outliers (at 8 bits the typical values would collapse onto a few codes); values beyond
    ``advanced.outlier_abs_max`` are out of int8's reach next to ordinary ones."""
    adv = config.advanced
    if not adv.safeguard("outliers"):
        return []
    decisions = []
    for p in stats.plan["activations"]:
        lo, hi = np.median(stats.mins[p["tensor"]]), np.median(stats.maxs[p["tensor"]])
        glo, ghi = np.min(stats.mins[p["tensor"]]), np.max(stats.maxs[p["tensor"]])
        typical = max(hi - lo, 1e-12)
        if max(abs(glo), abs(ghi)) > adv.outlier_abs_max or (ghi - glo) / typical > adv.outlier_range_ratio:
            decisions.append(
                {"tensor": p["tensor"], "reason": f"auto_safeguard: extreme activation range [{glo:.4g}, {ghi:.4g}] "
                                                  f"vs typical [{lo:.4g}, {hi:.4g}]"})
    return decisions
