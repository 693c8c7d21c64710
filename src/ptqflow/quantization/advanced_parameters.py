"""NNCF's advanced quantization parameters, spelled as NNCF spells them, mapped onto ptqflow's.

``AdvancedQuantizationParameters`` is ptqflow's ``AdvancedParameters`` (so it goes wherever that goes) that also
takes NNCF's field names:

- ``overflow_fix``, ``disable_bias_correction``, ``smooth_quant_alpha``: the same meaning in both (NNCF's
  negative alpha, "SmoothQuant off", is ptqflow's None; ``overflow_fix=None`` is ptqflow's default);
- ``smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=a)``: ``smooth_quant_alpha=a`` (ptqflow smooths
  MatMul inputs only, so ``convolution`` must stay negative);
- ``bias_correction_params=AdvancedBiasCorrectionParameters(threshold=t)``: ``bias_correction_threshold=t``;
- ``quantize_outputs``, ``inplace_statistics``, ``disable_channel_alignment``, ``batchwise_statistics``,
  ``backend_params``: accepted at the value ptqflow behaves like (NNCF's defaults) and refused otherwise.

Any other NNCF parameter (range estimators, quantization parameters, propagation rules) is refused by name:
ptqflow has no equivalent, and silently dropping it would quantize differently from what was asked.

``AdvancedAccuracyRestorerParameters`` and ``RestoreMode`` are the knobs of ``quantize_with_accuracy_control``
(ptqflow.accuracy_control), with NNCF's names and defaults.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import model_validator

from ptqflow.config import AdvancedParameters, OverflowFix

# NNCF fields ptqflow behaves like at exactly this value.
_FIXED = {"quantize_outputs": False, "inplace_statistics": True, "disable_channel_alignment": True,
          "batchwise_statistics": None, "backend_params": {}}
# NNCF fields with no ptqflow equivalent, and what comes closest.
_UNSUPPORTED = {
    "activations_range_estimator_params": "activations_range ('mean_minmax' or 'minmax')",
    "weights_range_estimator_params": "nothing: weights always use their min/max",
    "activations_quantization_params": "the preset (symmetric or asymmetric activations)",
    "weights_quantization_params": "per_channel",
    "quantizer_propagation_rule": "nothing: quantizers are always merged where a tensor has one",
}


@dataclass
class AdvancedSmoothQuantParameters:
    """NNCF's SmoothQuant strengths per layer kind; a negative value turns SmoothQuant off for that kind."""

    convolution: float = -1
    matmul: float = 0.95


@dataclass
class AdvancedBiasCorrectionParameters:
    """NNCF's bias correction knobs: ``threshold`` skips a layer whose correction is larger than it."""

    apply_for_all_nodes: bool = False
    threshold: float | None = None


class RestoreMode(str, Enum):
    """What accuracy control reverts with an activation quantizer: ACTIVATIONS_AND_WEIGHTS also the weights of the
    layers left with no quantized input (the layer runs in float, NNCF's default); ONLY_ACTIVATIONS keeps every
    weight int8."""

    ACTIVATIONS_AND_WEIGHTS = "activations_and_weights"
    ONLY_ACTIVATIONS = "only_activations"


@dataclass
class AdvancedAccuracyRestorerParameters:
    """NNCF's knobs of quantize_with_accuracy_control (see ptqflow.accuracy_control)."""

    max_num_iterations: int = sys.maxsize  # reverts tried (one validation_fn call each, of one or more quantizers)
    tune_hyperparams: bool = False  # NNCF's parameter grid search before reverting: not implemented, True is refused
    ranking_subset_size: int | None = None  # validation samples that rank the quantizers; None: subset_size
    num_ranking_workers: int | None = None  # accepted and ignored: one session ranks every quantizer (gated model)
    intermediate_model_dir: str | None = None  # where to save the fully quantized model (intermediate_model.onnx)
    restore_mode: RestoreMode = RestoreMode.ACTIVATIONS_AND_WEIGHTS


def _alpha(value: float | None) -> float | None:
    return None if isinstance(value, (int, float)) and value < 0 else value


class AdvancedQuantizationParameters(AdvancedParameters):
    """ptqflow's AdvancedParameters, also taking NNCF's field names (see the module docstring)."""

    @model_validator(mode="before")
    @classmethod
    def _from_nncf_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, instead in _UNSUPPORTED.items():
            if name in data:
                raise ValueError(f"NNCF's {name} has no ptqflow equivalent; use {instead}")
        for name, value in _FIXED.items():
            given = data.pop(name, value)
            if given != value:
                raise ValueError(f"NNCF's {name}={given!r} is not supported: ptqflow always behaves as "
                                 f"{name}={value!r}")
        if data.get("overflow_fix", 0) is None:
            data.pop("overflow_fix")
        if "smooth_quant_alpha" in data:
            data["smooth_quant_alpha"] = _alpha(data["smooth_quant_alpha"])
        alphas = data.pop("smooth_quant_alphas", None)
        if isinstance(alphas, dict):
            alphas = AdvancedSmoothQuantParameters(**alphas)
        if alphas is not None:
            if alphas.convolution is not None and alphas.convolution >= 0:
                raise ValueError("smooth_quant_alphas.convolution: ptqflow applies SmoothQuant to MatMul inputs "
                                 "only; set it to -1")
            if data.get("smooth_quant_alpha") is not None:
                raise ValueError("give smooth_quant_alpha or smooth_quant_alphas, not both")
            data["smooth_quant_alpha"] = _alpha(alphas.matmul)
        bc = data.pop("bias_correction_params", None)
        if isinstance(bc, dict):
            bc = AdvancedBiasCorrectionParameters(**bc)
        if bc is not None:
            if bc.apply_for_all_nodes:
                raise ValueError("bias_correction_params.apply_for_all_nodes=True is not supported: ptqflow "
                                 "corrects the layers that have a bias")
            if bc.threshold is not None:
                data["bias_correction_threshold"] = bc.threshold
        return data


__all__ = ["AdvancedAccuracyRestorerParameters", "AdvancedBiasCorrectionParameters", "AdvancedQuantizationParameters",
           "AdvancedSmoothQuantParameters", "OverflowFix", "RestoreMode"]
