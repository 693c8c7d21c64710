"""Outlier safeguard (``safeguard_outliers``): activation quantizers on tensors with extreme ranges stay in float."""

from __future__ import annotations

import numpy as np

from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass


class OutlierSafeguard(PlanPass):
    """A range ``advanced.outlier_range_ratio`` times wider than the typical per-sample range is dominated by rare
    outliers (at 8 bits the typical values would collapse onto a few codes); values beyond
    ``advanced.outlier_abs_max`` are out of int8's reach next to ordinary ones."""

    name = "safeguard_outliers"
    switch = "safeguard_outliers"
    order = 10

    def run(self, ctx: PlanContext) -> PassResult:
        adv = ctx.config.advanced
        mins, maxs = ctx.statistics.mins, ctx.statistics.maxs
        decisions = []
        for p in ctx.plan.activations:
            lo, hi = np.median(mins[p.tensor]), np.median(maxs[p.tensor])
            glo, ghi = np.min(mins[p.tensor]), np.max(maxs[p.tensor])
            typical = max(hi - lo, 1e-12)
            if max(abs(glo), abs(ghi)) > adv.outlier_abs_max or (ghi - glo) / typical > adv.outlier_range_ratio:
                decisions.append((p.tensor, f"auto_safeguard: extreme activation range [{glo:.4g}, {ghi:.4g}] "
                                            f"vs typical [{lo:.4g}, {hi:.4g}]"))
        return self.keep_in_float(ctx, decisions)


PASS = OutlierSafeguard()
