"""Quantizer placement: which weights and which activation tensors get a quantizer, and how.

The result is a QuantizationPlan (ptqflow.quantization.plan): weights (per-output-channel int8), activation
points (tensor -> consumer edges to rewire, scale group), and the layers kept in float with the pass or rule that
decided it and why. ``build`` holds the core placement, ``activations`` the merging of activation quantizers,
``ops`` the op tables; the refinements with their own switch are passes, one file each: ``softmax_heads``,
``detected_transformer``, ``overflow_fix`` (and ``ignored_scope``, the user's exclusions).
"""

from ptqflow.quantization.algorithms.quantizer_placement.build import build_plan
from ptqflow.quantization.algorithms.quantizer_placement.detected_transformer import (looks_like_transformer,
                                                                                      transformer_nodes)
from ptqflow.quantization.algorithms.quantizer_placement.ignored_scope import ignored_nodes
from ptqflow.quantization.algorithms.quantizer_placement.ops import ACT_INPUTS, ELEMENTWISE, WEIGHTED

__all__ = ["ACT_INPUTS", "ELEMENTWISE", "WEIGHTED", "build_plan", "ignored_nodes", "looks_like_transformer",
           "transformer_nodes"]
