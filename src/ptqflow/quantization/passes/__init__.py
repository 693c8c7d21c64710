"""Passes. ``base``: what every pass has (name, switch, PassResult). The plan passes (``context``: PlanPass,
PlanContext) are this package's other modules, one per file, found by ``registry.plan_passes``; graph passes live
in ptqflow.quantization.graph.passes, placement refinements in ptqflow.quantization.algorithms.quantizer_placement."""
