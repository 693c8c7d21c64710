"""AdvancedParameters: the less common quantization knobs, each a typed, documented field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ptqflow.config.base import _Strict
from ptqflow.config.enums import OverflowFix, RangeEstimator


# Full BiasCorrection's default sample count as a share of subset_size (see QuantizationConfig.bias_correction_samples).
BIAS_CORRECTION_SUBSET_SHARE = 0.2


# The automatic safeguards with their own switch (AdvancedParameters.safeguard_<name>; None follows
# auto_safeguards). The sensitivity search is switched by sensitivity_search (and needs auto_safeguards).
SAFEGUARDS = ("outliers", "depthwise", "softmax_heads", "detected_transformer", "sensitivity", "mixed_precision")


class AdvancedParameters(_Strict):
    """Less common knobs; the defaults are what a user should ship with."""

    disable_bias_correction: bool = Field(False, description="Skip bias correction entirely.")
    activations_range: RangeEstimator = Field(
        RangeEstimator.MEAN_MINMAX, description="Per-tensor activation range estimator."
    )
    per_channel: bool = Field(True, description="Per-output-channel weight scales (per-tensor if false).")
    per_channel_depthwise_inputs: bool = Field(
        True,
        description="A scale per channel for the activation quantizer of a depthwise convolution's input (a "
        "depthwise conv never mixes channels, so each channel keeps its own grid; channels whose range is far below "
        "the largest keep their precision): each channel's scale from its largest |x| over the calibration samples, "
        "at most the per-tensor scale. Symmetric and unsigned quantizers (zero point 0) of a tensor that only "
        "depthwise convolutions read, with the QDQ format and OpenVINO's activation types; needs opset 13 and "
        "per_channel. An unsigned quantizer is written as int8 with zero point -128 (the same grid), the form "
        "onnxruntime's default session runs (its QDQ fusion would turn a depthwise Conv whose input is uint8 per "
        "channel into a QLinearConv, which refuses a per-channel input); OpenVINO reads both alike.",
    )
    overflow_fix: OverflowFix = Field(
        OverflowFix.DISABLE, description="7-bit weights to avoid int16 overflow on pre-VNNI CPUs."
    )
    bias_correction_subset_size: int | None = Field(
        None, gt=0, description=f"Samples used by full BiasCorrection (default: {BIAS_CORRECTION_SUBSET_SHARE} * "
        "subset_size, at least 1)."
    )
    bias_correction_threshold: float = Field(
        2.0, gt=0, description="Skip a layer whose max |shift| / max |bias| exceeds this (implausible)."
    )
    bias_correction_fallback: bool = Field(
        True,
        description="With fast_bias_correction: where the guard reverts FastBiasCorrection, full BiasCorrection is "
        "fitted on bias_correction_fallback_samples calibration samples and judged the same way (on the samples "
        "after them, then on the fitted ones); it stays only where it lowers the model's output error, else the "
        "biases stay uncorrected. The synthetic constant input of the fast correction misses what full "
        "BiasCorrection measures on real samples (evidence: docs/algorithms.md, 'Bias correction').",
    )
    bias_correction_fallback_samples: int = Field(
        8, gt=0,
        description="Calibration samples the fallback's full BiasCorrection fits on (bias_correction_fallback): "
        "few, since its memory grows with them (the tensors its segments pass on) and per-channel means settle on "
        "a few samples; a configured full BiasCorrection takes bias_correction_subset_size.",
    )
    bias_correction_guard_samples: int = Field(
        32, ge=0,
        description="Calibration samples on which the model's output error against FP32 is compared with and "
        "without bias correction; the correction is reverted (and the summary says so) when it makes the outputs "
        "worse. Models without a Softmax/LogSoftmax output use bias_correction_guard_samples_no_softmax "
        "instead. 0 turns the guard off.",
    )
    bias_correction_guard_samples_no_softmax: int = Field(
        8, ge=0,
        description="Guard samples for models without a Softmax/LogSoftmax output: their outputs are judged by "
        "squared error alone, which is continuous and settles on fewer samples than argmax decisions (8: a "
        "quarter of the default bias_correction_guard_samples). 0 turns the guard off for such models.",
    )
    bias_correction_guard_tie_weight: float = Field(
        1e-3, ge=0,
        description="Weight of a Softmax/LogSoftmax output's relative squared error next to its class-balanced "
        "share of changed argmax decisions in the guard's output error: small, so the decisions decide and the "
        "squared error only breaks ties (evidence: docs/algorithms.md#the-bias-correction-guard).",
    )
    auto_safeguards: bool = Field(
        True,
        description="Keep layers in float automatically where quantization is known to destroy accuracy "
        "(reported in the per-layer summary). The default of each safeguard_* switch left at None; "
        "sensitivity_search needs it on.",
    )
    safeguard_outliers: bool | None = Field(
        None,
        description="Automatic safeguard: keep activations with extreme outlier ranges in float (see "
        "outlier_range_ratio, outlier_abs_max). None (default) follows auto_safeguards.",
    )
    safeguard_depthwise: bool | None = Field(
        None,
        description="Automatic safeguard: observe the per-channel max |x| of depthwise-convolution inputs and keep "
        "the two-sided ones with widely differing channel ranges in float (see depthwise_channel_spread, "
        "depthwise_two_sided_ratio). None (default) follows auto_safeguards.",
    )
    safeguard_softmax_heads: bool | None = Field(
        None,
        description="Automatic safeguard: keep the last weighted layer before a Softmax/LogSoftmax output head "
        "(classifier and CTC logits) in float, its input and weights, by rule. None (default): only where "
        "error-driven mixed precision is off (safeguard_mixed_precision), which otherwise measures the head's "
        "quantizers with the rest, Softmax heads judged by their argmax decisions, and keeps them float only where "
        "they carry the error; with auto_safeguards off, off.",
    )
    safeguard_detected_transformer: bool | None = Field(
        None,
        description="Automatic safeguard: give a graph that looks like a transformer (attention and a "
        "normalization) transformer placement from its first normalization on: its elementwise/normalization "
        "ops stay in float, its activations asymmetric unless a preset is given (it is also the region "
        "SmoothQuant works on). None (default) follows auto_safeguards; model_type='transformer' is not affected.",
    )
    safeguard_mixed_precision: bool | None = Field(
        None,
        description="Error-driven mixed precision, at quantize time: measure on a few calibration samples which "
        "activation quantizers carry most of the model's output error against FP32 (group testing on one gated "
        "model, per-channel normalized error, Softmax heads judged by their argmax decisions) and keep those in "
        "float, each with its measurement in the plan and the per-layer summary (see mixed_precision_*). None "
        "(default) follows auto_safeguards.",
    )
    decision_outputs: list[str] | None = Field(
        None,
        description="Model outputs the application reads by their argmax over the last axis with no Softmax in the "
        "graph (classifier or CTC logits). Mixed precision, the bias-correction guard, the range search and "
        "accuracy control then judge them by their decisions, as they judge Softmax/LogSoftmax outputs, instead "
        "of by squared error. A name that is not an output of the model is an error.",
    )
    mixed_precision_samples: int = Field(
        8, gt=0,
        description="Calibration samples on which error-driven mixed precision measures the output error (one "
        "sample a run), and as many held out on which a pick's gain must hold.",
    )
    mixed_precision_weights: bool = Field(
        True,
        description="Error-driven mixed precision measures the weight quantizers too, as candidates of the same "
        "search (a weight found takes its layer to float, recorded as a float layer with its measurement). Not for "
        "a model over 2 GB, whose weights the search's gated model would hold twice.",
    )
    mixed_precision_max_float_share: float = Field(
        0.05, ge=0, le=1,
        description="Budget of error-driven mixed precision, as INT8 speed kept: at most this share of the "
        "quantizers it measures (activations, and weights with mixed_precision_weights; at least one) goes back "
        "to float.",
    )
    mixed_precision_min_share: float = Field(
        0.1, gt=0, le=1,
        description="Error-driven mixed precision keeps a quantizer in float only when it alone carries at least "
        "this share of the output error the quantizers it measures still cause (with mixed_precision_weights, "
        "the error against FP32; without, the error above the weights-only floor): a few quantizers that carry most of the error, not many that carry a little each.",
    )
    mixed_precision_target_error: float = Field(
        1e-3, ge=0,
        description="Error-driven mixed precision stops when the model's output error is at or below this "
        "(mean over the outputs of the per-channel squared error over the FP32 variance, i.e. 1/SNR: 1e-3 is "
        "30 dB; for a Softmax head, the share of changed argmax decisions plus the probability mass moved).",
    )
    mixed_precision_max_evals: int = Field(
        64, gt=0,
        description="Budget of error-driven mixed precision: most evaluations of the gated model (each over "
        "mixed_precision_samples samples; the group test's screening runs on half of them and counts half), the "
        "time it may take. A pick costs about 4 + 2 log2(quantizers / 4) evaluations (fewer after the first: the "
        "group test keeps its measured blocks); a search that finds nothing more stops before it.",
    )
    sensitivity_search: bool = Field(
        False,
        description="Measure each activation quantizer's own output error on a few samples and keep the worst "
        "in float (slower; part of the automatic safeguards: it runs only when auto_safeguards is on too).",
    )
    outlier_range_ratio: float = Field(
        64.0, ge=1,
        description="Automatic safeguard: keep an activation in float when its range over all calibration samples "
        "is more than this many times its typical one (median per-sample min and max): rare outliers then own "
        "the scale and the typical values fall on at most 256/64 = 4 of the int8 codes.",
    )
    outlier_abs_max: float = Field(
        1e4, gt=0,
        description="Automatic safeguard: keep an activation in float when any calibration value exceeds this "
        "magnitude (a range int8 cannot cover next to ordinary values).",
    )
    depthwise_channel_spread: float = Field(
        0.2, ge=0, le=1,
        description="Automatic safeguard: keep a two-sided input of a depthwise convolution in float when its "
        "median channel's max |x| is below this share of the tensor's largest channel (such a channel gets fewer "
        "than ~25 of the 127 codes, and a depthwise conv never mixes channels). 0.2 was measured on PP-OCR "
        "(evidence: docs/algorithms.md#depthwise-inputs).",
    )
    depthwise_two_sided_ratio: float = Field(
        0.25, ge=0,
        description="A depthwise-convolution input counts as two-sided (a pre-activation, e.g. a BatchNorm "
        "output) for the depthwise_channel_spread safeguard when its minimum is below -this x its maximum.",
    )
    sensitivity_samples: int = Field(
        8, gt=0,
        description="Calibration samples the sensitivity search (sensitivity_search) measures each quantizer's "
        "output error on, at most (see sensitivity_max_runs).",
    )
    sensitivity_max_runs: int = Field(
        600, gt=0,
        description="Bound on the sensitivity search's inference runs: its samples are cut to this divided by "
        "the number of activation quantizers when that is fewer (but not below 2), so models with many "
        "quantizers stay affordable.",
    )
    sensitivity_max_points: int = Field(
        2, ge=0,
        description="Most activation quantizers the sensitivity search keeps in float (one per greedy pass): "
        "it is for the few quantizers that alone cost most of the accuracy.",
    )
    sensitivity_min_gain: float = Field(
        0.3, gt=0, le=1,
        description="The sensitivity search keeps a quantizer in float only when removing it alone cuts the "
        "model's output error by at least this share.",
    )
    sensitivity_min_error: float = Field(
        1e-3, ge=0,
        description="The sensitivity search stops when the model's output error (relative squared error plus "
        "changed argmax decisions) is below this: nothing left worth a float layer.",
    )
    statistics_runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="Runtime of the statistics pass on CPU: 'auto' takes OpenVINO's CPU plugin (f32, two parallel "
        "streams) when installed and able to compile the model, else onnxruntime; other devices always use "
        "onnxruntime's provider.",
    )
    smooth_quant_alpha: float | str | None = Field(
        "auto", json_schema_extra={"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"const": "auto"},
                                             {"type": "null"}]},
        description="SmoothQuant for the linear layers of transformers (declared, or detected by the automatic "
        "safeguards); other models are not touched. 'auto' (default): each MatMul input's migration strength is "
        "the one of 0.5, 0.65, 0.8, 0.95 that leaves its MatMuls the least quantization error, measured on the "
        "first calibration samples; a number: that strength everywhere (NNCF's smooth_quant_alpha); None: off "
        "(as NNCF's negative alpha). 'auto' passes over statistics collected in shards, an OpenVINO model and a model "
        "over 2 GB, where a number is refused (evidence: docs/algorithms.md#smoothquant).",
    )
    smooth_quant_samples: int = Field(
        64, gt=0,
        description="First calibration samples on which SmoothQuant measures the per-channel max |x| of the "
        "MatMul inputs (when smooth_quant_alpha is not None; the first 16 of them also choose 'auto''s strengths); "
        "they are replayed into the statistics pass.",
    )
    graph_constant_folding: bool = Field(
        True,
        description="Graph preparation: run onnxruntime's basic (level 1) offline optimizer on the FP32 model before "
        "placement: constant folding and Conv+BatchNormalization/Add/Mul fusion, ONNX ops only. Off: constant "
        "subgraphs stay in the graph as exported (and may get quantizers).",
    )
    graph_fold_batchnorm: bool = Field(
        True,
        description="Graph preparation: fold a BatchNormalization into the Conv before it (when nothing else reads "
        "the Conv's output or weights), so its scale is part of the quantized weights. onnxruntime's optimizer "
        "(graph_constant_folding) fuses such pairs first; this folds the ones it left or all of them when it is off.",
    )
    range_search: bool = Field(
        False,
        description="Activation ranges by measured error, at quantize time (after the mixed-precision search): each "
        "per-tensor range is chosen among candidates (mean or global min/max, the 99.9/99.99/99.999th percentiles, "
        "the clip with the least squared error), written as the quantizer writes them and compared with the FP32 "
        "values on range_search_samples calibration samples; the chosen ranges are kept as a whole only where the "
        "plan as it would ship has a lower output error against FP32 on as many held-out samples (the verdict is "
        "in the plan). Off by default: on the demo's text lines the verdict kept ranges that lowered every output "
        "measure and cost 13 points of text agreement with FP32 (docs/algorithms.md).",
    )
    range_search_samples: int = Field(
        8, gt=0, description="Calibration samples on which range_search measures each candidate range's error; as "
        "many more judge the chosen ranges.",
    )
    cross_layer_equalization: bool = Field(
        False,
        description="Graph preparation: cross-layer equalization (Nagel et al. 2019): each Conv -> ReLU/LeakyReLU/"
        "nothing -> Conv pair (depthwise ones included) rescaled per channel so both layers' channel weight ranges "
        "are equal, the model's function unchanged; a Clip (ReLU6) between them is skipped. Off by default: it "
        "raised output SQNR on most bench models but lowered it on PP-OCR rec (bench/README.md, 'Cross-layer "
        "equalization and ranges by measured error').",
    )
    bias_absorption_sigmas: float = Field(
        3.0, ge=0,
        description="Cross-layer equalization's bias absorption: max(0, beta - this x |gamma|) of a ReLU input (its "
        "BatchNormalization's mean and deviation) moves into the next layer's bias, where that layer has no "
        "padding; 3 is the paper's. 0 turns absorption off.",
    )

    adaround: bool = Field(
        False,
        description="Adaptive weight rounding (AdaRound, Nagel et al. 2020) at quantization: each Conv/MatMul/Gemm "
        "weight is rounded down or up (scales unchanged) to minimize the layer's output error on adaround_samples "
        "calibration samples, instead of to the nearest code; a layer keeps nearest rounding where that error is "
        "not lower. Takes up to adaround_time_budget seconds. ONNX models only (skipped with a plan warning on an "
        "OpenVINO model). Off by default: it raised output SQNR on PP-OCR cls but lowered it on rec and det, whose "
        "layers' own errors fell (bench/README.md, 'AdaRound').",
    )
    adaround_samples: int = Field(
        16, gt=0, description="Calibration samples whose layer inputs AdaRound reconstructs (read at quantization).",
    )
    adaround_time_budget: float = Field(
        60.0, gt=0,
        description="Seconds AdaRound may take for the whole model (the samples' runs included), shared among the "
        "layers by their cost; a layer whose share allows too few iterations keeps nearest rounding.",
    )
    adaround_quantized_inputs: bool = Field(
        False,
        description="AdaRound reconstructs each layer's FP32 output from its input as its activation quantizer "
        "writes it (the paper's asymmetric reconstruction) instead of from the FP32 input.",
    )

    def safeguard(self, name: str) -> bool:
        """Whether the automatic safeguard ``name`` is on: ``"outliers"``, ``"depthwise"``, ``"softmax_heads"``,
        ``"detected_transformer"`` and ``"mixed_precision"`` follow their ``safeguard_<name>`` field, or
        ``auto_safeguards`` when that is None (``"softmax_heads"``: when that is None, on only where mixed
        precision is off); ``"sensitivity"`` is ``sensitivity_search`` and ``auto_safeguards``
        together."""
        if name == "sensitivity":
            return self.sensitivity_search and self.auto_safeguards
        if name not in SAFEGUARDS:
            raise ValueError(f"unknown safeguard {name!r}; expected one of {', '.join(SAFEGUARDS)}")
        own = getattr(self, f"safeguard_{name}")
        if own is None and name == "softmax_heads":  # the rule stands in where the measurement does not run
            return self.auto_safeguards and not self.safeguard("mixed_precision")
        return self.auto_safeguards if own is None else own

    @property
    def mean_minmax(self) -> bool:
        """Whether activation ranges are the mean of the per-sample minima and maxima (``activations_range``), not
        the global extremes: what every reader of ``Statistics.ranges`` asks for."""
        return RangeEstimator(self.activations_range) == RangeEstimator.MEAN_MINMAX

    @field_validator("smooth_quant_alpha", mode="before")
    @classmethod
    def _smooth_quant_alpha(cls, value):
        if value is None or value == "auto" or (
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            return value
        raise ValueError("must be 'auto', a number from 0 to 1, or null")
