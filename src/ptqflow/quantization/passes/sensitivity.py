"""Sensitivity safeguard (``sensitivity_search``): the activation quantizers whose removal alone cuts the model's
output error the most stay in float (the search itself: ptqflow.quantization.algorithms.sensitivity)."""

from __future__ import annotations

from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.quantization.algorithms import sensitivity
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.passes.context import PlanContext, PlanPass


class SensitivitySafeguard(PlanPass):
    """Runs only with ``sensitivity_search`` and ``auto_safeguards`` both on and samples at hand;
    ``advanced.sensitivity_*`` bound the samples, the runs and how many quantizers are kept in float."""

    name = "sensitivity_search"
    switch = "sensitivity_search"
    order = 90

    def enabled(self, advanced: AdvancedParameters) -> bool:
        return advanced.safeguard("sensitivity")

    def samples(self, config: QuantizationConfig) -> int:
        return config.advanced.sensitivity_samples

    def run(self, ctx: PlanContext) -> PassResult:
        adv = ctx.config.advanced
        if not ctx.samples:
            return PassResult(self.name, False, ["skipped: no calibration samples at hand"])
        points = len(ctx.plan.activations)
        n = max(2, min(adv.sensitivity_samples, adv.sensitivity_max_runs // max(points, 1)))
        found = self.measure(ctx, ctx.statistics.ranges(adv.mean_minmax), ctx.samples[:n])
        return self.keep_in_float(ctx, [(t, f"auto_safeguard: most accuracy-sensitive quantizer (output error "
                                            f"{before:.4g} -> {after:.4g} without it)") for t, before, after in found])

    def measure(self, ctx: PlanContext, ranges: dict, samples: list[dict]) -> list[tuple[str, float, float]]:
        """The search on ``samples``: (tensor, error before, error after) per quantizer to keep in float (an
        OpenVINO model measures on its own backend: algorithms.openvino_sensitivity)."""
        adv = ctx.config.advanced
        return sensitivity.find_sensitive(ctx.prepared, ctx.plan, ranges, samples, ctx.make_session,
                                          max_points=adv.sensitivity_max_points, min_gain=adv.sensitivity_min_gain,
                                          min_error=adv.sensitivity_min_error)


PASS = SensitivitySafeguard()
