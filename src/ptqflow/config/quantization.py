"""QuantizationConfig: the post-training quantization parameters (the ``quantization`` section)."""

from __future__ import annotations

from pydantic import Field

from ptqflow.config.advanced import BIAS_CORRECTION_SUBSET_SHARE, AdvancedParameters
from ptqflow.config.base import _Strict
from ptqflow.config.enums import ModelType, QuantizationPreset, TargetDevice
from ptqflow.config.scope import IgnoredScope


class QuantizationConfig(_Strict):
    """The post-training quantization parameters."""

    preset: QuantizationPreset | None = Field(
        None, description="performance (symmetric activations) or mixed; default depends on model_type."
    )
    target_device: TargetDevice = Field(TargetDevice.ANY, description="Hardware the INT8 model will run on.")
    subset_size: int = Field(300, gt=0, description="Calibration samples used for statistics.")
    fast_bias_correction: bool = Field(
        True, description="True: FastBiasCorrection; False: full BiasCorrection (slower, more accurate)."
    )
    model_type: ModelType | None = Field(None, description="transformer, or none for CNN-like models.")
    ignored_scope: IgnoredScope = Field(default_factory=IgnoredScope, description="Nodes kept in float.")
    advanced: AdvancedParameters = Field(default_factory=AdvancedParameters)

    def bias_correction_samples(self) -> int:
        """Samples full BiasCorrection runs on: ``advanced.bias_correction_subset_size``, else
        BIAS_CORRECTION_SUBSET_SHARE of ``subset_size`` (at least 1)."""
        return self.advanced.bias_correction_subset_size or max(1, int(BIAS_CORRECTION_SUBSET_SHARE * self.subset_size))

    def effective_preset(self) -> QuantizationPreset:
        """The preset actually applied: the user's, else MIXED for transformers, else PERFORMANCE."""
        if self.preset is not None:
            return self.preset
        if self.model_type == ModelType.TRANSFORMER:
            return QuantizationPreset.MIXED
        return QuantizationPreset.PERFORMANCE
