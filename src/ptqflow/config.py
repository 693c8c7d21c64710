"""ptqflow's one typed configuration.

The same models are read from a YAML file, from CLI flags, from Airflow DAG params and from KFP pipeline
parameters; ``ptqflow config-schema`` prints the JSON schema generated from them. Unknown keys and wrong
types are rejected before any work starts, with a message naming the field (see ``load_config``).

Each pipeline step reads only its own sections, so that changing e.g. the bias-correction mode reruns the
quantize step but reuses the fetched model, the calibration data and the statistics.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ptqflow.errors import ConfigError


class _Strict(BaseModel):
    # allow_inf_nan=False: a NaN threshold compares false with everything, an infinite one can never be met.
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=True, allow_inf_nan=False)


# Field types whose values have a shape: the JSON schema carries the constraint, the before-validator gives one
# readable message instead of pydantic's per-branch ones.
_CALLABLE_SPEC = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"  # as importlib.import_module + getattr take it
_SHA256 = r"^\s*[0-9a-fA-F]{64}\s*$"


def _matching(pattern: str, expected: str):
    def check(value: Any) -> Any:
        if isinstance(value, str) and not re.match(pattern, value):
            raise ValueError(f"expected {expected}")
        return value
    return BeforeValidator(check)


def _size(value: Any) -> Any:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
        isinstance(value, list) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if value is not None and not ok:
        raise ValueError("expected a positive int or [height, width] of positive ints")
    return value


_Positive = Annotated[int, Field(gt=0)]
_HeightWidth = Annotated[list[_Positive], Field(min_length=2, max_length=2)]
_Callable = Annotated[str, Field(pattern=_CALLABLE_SPEC), _matching(_CALLABLE_SPEC, "'module:function'")]


# --------------------------------------------------------------------------------------------------
# Quantization parameters (names and meanings as NNCF users know them)
# --------------------------------------------------------------------------------------------------


class QuantizationPreset(str, Enum):
    """PERFORMANCE: symmetric activations. MIXED: asymmetric activations (better for skewed ranges)."""

    PERFORMANCE = "performance"
    MIXED = "mixed"


class TargetDevice(str, Enum):
    """The hardware that will run the INT8 model; it decides quantizer placement."""

    ANY = "ANY"
    CPU = "CPU"
    CPU_SPR = "CPU_SPR"
    GPU = "GPU"
    NPU = "NPU"
    VPU = "NPU"  # NNCF's name for NPU before 2.7: an alias (TargetDevice.VPU is TargetDevice.NPU)


class ModelType(str, Enum):
    """Special handling for a model family. TRANSFORMER keeps LayerNorm/Softmax/GELU regions in float."""

    TRANSFORMER = "transformer"
    Transformer = "transformer"  # the spelling of NNCF's and OpenVINO's docs: an alias of TRANSFORMER


class RangeEstimator(str, Enum):
    """How a per-tensor activation range is formed from per-sample statistics."""

    MEAN_MINMAX = "mean_minmax"  # mean over samples of each sample's min and max (robust to outliers)
    MINMAX = "minmax"  # global min and max over all samples


class OverflowFix(str, Enum):
    """Use 7-bit weight codes to avoid int16 accumulator saturation on CPUs without VNNI."""

    DISABLE = "disable"
    FIRST_LAYER = "first_layer"
    ENABLE = "enable"


class ExecutionDevice(str, Enum):
    """Where a step runs models: onnxruntime's CPU or CUDA provider, or OpenVINO's NPU."""

    CPU = "cpu"
    CUDA = "cuda"
    NPU = "npu"


def _str_list(value: Any, where: str) -> list:
    """``value`` as a list: one string is one entry (NNCF's docs pass ``patterns=regex``), None is empty."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise ConfigError(f"{where}: expected a list of strings, got {type(value).__name__}")


@dataclass
class Subgraph:
    """A region of the graph bounded by node or tensor names: every node on a path from ``inputs`` to ``outputs``.

    A single string is one name, as in NNCF."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inputs = _str_list(self.inputs, "Subgraph.inputs")
        self.outputs = _str_list(self.outputs, "Subgraph.outputs")


@dataclass
class IgnoredScope:
    """Nodes to keep in float: by exact name, by regex pattern on names, by op type, or by subgraph.

    ``names``, ``patterns`` and ``types`` take a list, or one string as one entry (``patterns=".*head.*"``).
    A pattern that is not a valid regular expression is a ConfigError naming it. With ``validate=True`` a
    name, pattern, type or subgraph that matches nothing is an error naming it.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")
    names: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    subgraphs: list[Subgraph] = field(default_factory=list)
    validate: bool = True

    def __post_init__(self) -> None:
        self.names = _str_list(self.names, "ignored_scope.names")
        self.patterns = _str_list(self.patterns, "ignored_scope.patterns")
        self.types = _str_list(self.types, "ignored_scope.types")
        subgraphs = self.subgraphs
        self.subgraphs = ([subgraphs] if isinstance(subgraphs, Subgraph)
                          else _str_list(subgraphs, "ignored_scope.subgraphs"))
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ConfigError(f"ignored_scope.patterns: {pattern!r} is not a regular expression ({err})") from None

    def is_empty(self) -> bool:
        """True when the scope ignores nothing."""
        return not (self.names or self.patterns or self.types or self.subgraphs)


# Full BiasCorrection's default sample count as a share of subset_size (see QuantizationConfig.bias_correction_samples).
BIAS_CORRECTION_SUBSET_SHARE = 0.2


# The automatic safeguards with their own switch (AdvancedParameters.safeguard_<name>; None follows
# auto_safeguards). The sensitivity search is switched by sensitivity_search (and needs auto_safeguards).
SAFEGUARDS = ("outliers", "depthwise", "softmax_heads", "detected_transformer", "sensitivity")


class AdvancedParameters(_Strict):
    """Less common knobs; the defaults are what a user should ship with."""

    disable_bias_correction: bool = Field(False, description="Skip bias correction entirely.")
    activations_range: RangeEstimator = Field(
        RangeEstimator.MEAN_MINMAX, description="Per-tensor activation range estimator."
    )
    per_channel: bool = Field(True, description="Per-output-channel weight scales (per-tensor if false).")
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
        "squared error only breaks ties (on PP-OCRv4 rec, full BiasCorrection lowered the squared error while "
        "doubling the decision disagreement).",
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
        "(classifier and CTC logits) in float, its input and weights. None (default) follows auto_safeguards.",
    )
    safeguard_detected_transformer: bool | None = Field(
        None,
        description="Automatic safeguard: give a graph that looks like a transformer (attention and a "
        "normalization) transformer placement from its first normalization on: its elementwise/normalization "
        "ops stay in float, its activations asymmetric unless a preset is given (it is also the region "
        "SmoothQuant works on). None (default) follows auto_safeguards; model_type='transformer' is not affected.",
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
        "than ~25 of the 127 codes, and a depthwise conv never mixes channels). 0.2 measured on PP-OCR: the "
        "recognizer's stem output (0.16) costs a third of the exact matches when quantized, the detector's "
        "depthwise inputs (0.27, 0.29) lose nothing.",
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
    smooth_quant_alpha: float | None = Field(
        None, ge=0, le=1,
        description="SmoothQuant migration strength for the linear layers of transformers (declared, or detected "
        "by the automatic safeguards), e.g. 0.5; None (default) leaves it off: the Mul it puts before each MatMul "
        "costs OpenVINO speed (MiniLM INT8 speedup 2.0x -> 1.35x) for accuracy (Spearman 0.9949 -> 0.9996).",
    )
    smooth_quant_samples: int = Field(
        64, gt=0,
        description="First calibration samples on which SmoothQuant measures the per-channel max |x| of the "
        "MatMul inputs (when smooth_quant_alpha is set); they are replayed into the statistics pass.",
    )

    def safeguard(self, name: str) -> bool:
        """Whether the automatic safeguard ``name`` is on: ``"outliers"``, ``"depthwise"``, ``"softmax_heads"``
        and ``"detected_transformer"`` follow their ``safeguard_<name>`` field, or ``auto_safeguards`` when that is
        None; ``"sensitivity"`` is ``sensitivity_search`` and ``auto_safeguards`` together."""
        if name == "sensitivity":
            return self.sensitivity_search and self.auto_safeguards
        if name not in SAFEGUARDS:
            raise ValueError(f"unknown safeguard {name!r}; expected one of {', '.join(SAFEGUARDS)}")
        own = getattr(self, f"safeguard_{name}")
        return self.auto_safeguards if own is None else own


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


# --------------------------------------------------------------------------------------------------
# Data: sources, preprocessing, splits
# --------------------------------------------------------------------------------------------------


class PreprocessConfig(_Strict):
    """Built-in image preprocessing. ``method`` picks a recipe; the other fields configure ``chain``."""

    method: Literal["none", "preprocess_method1", "preprocess_method2", "chain"] = Field(
        "chain", description="onnxruntime's preprocess_method1/2, a configurable chain, or none."
    )
    resize: Annotated[_HeightWidth | _Positive | None, BeforeValidator(_size)] = Field(
        None, description="int: shorter side; [h, w]: exact size. Default: the model's static input size."
    )
    resize_mode: Literal["shorter", "exact", "letterbox", "pad_right"] = Field(
        "exact", description="How to reach the target size."
    )
    center_crop: Annotated[_HeightWidth | None, BeforeValidator(_size)] = Field(
        None, description="[h, w] centre crop after resizing."
    )
    mean: list[float] | None = Field(None, min_length=1, description="Per-channel mean subtracted after scaling.")
    std: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=1, description="Per-channel std (each > 0) divided after mean subtraction."
    )
    scale: float = Field(1.0 / 255.0, gt=0, description="Multiplier (> 0) applied to raw pixel values first.")
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16", "uint8", "int8"] = "float32"

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> "PreprocessConfig":
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}: give one per channel in both")
        return self


class DataConfig(_Strict):
    """Where calibration/validation data comes from and how it becomes model inputs."""

    source: str | None = Field(None, description="Dataset URI: directory, file, file:// or s3://.")
    transform: _Callable | None = Field(
        None, description="'module:function' mapping one raw item to the model's input dict."
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    label_file: str | None = Field(
        None, description="Text labels: a file inside the data directory with one 'relative/path<TAB>text' line per "
        "image (PaddleOCR's recognition label format); validation.metric then receives the label strings."
    )
    validation_size: int = Field(300, ge=0, description="Held-out validation samples (disjoint from calibration).")
    seed: int = Field(0, ge=0, description="Seed (>= 0, as numpy's generators take) for the deterministic subset "
                      "selection.")
    shard_max_mb: int = Field(64, gt=0, description="Upper bound on one shard's size.")
    max_bad_fraction: float = Field(
        0.05, ge=0, le=1, description="Error out when more than this fraction of items is unreadable."
    )


# --------------------------------------------------------------------------------------------------
# Validation gate, export
# --------------------------------------------------------------------------------------------------


class GateConfig(_Strict):
    """Thresholds the INT8 model must meet to be published. ``None`` disables a threshold."""

    max_accuracy_drop: float | None = Field(
        0.01, ge=0, description="Largest allowed drop of the task metric (a fraction <= 1 in relative mode)."
    )
    accuracy_drop_mode: Literal["absolute", "relative"] = "absolute"
    accuracy_metric: str | None = Field(
        None, description="Task metric the accuracy drop applies to, e.g. 'char_accuracy' from validation.metric "
        "(default: top1 when labels are classes, else the first metric)."
    )
    min_cosine: float | None = Field(
        0.98, ge=-1, le=1, description="Smallest allowed cosine similarity to FP32 outputs (a cosine is in [-1, 1])."
    )
    min_sqnr_db: float | None = Field(None, description="Smallest allowed SQNR (dB) of INT8 vs FP32 outputs.")
    min_top1_agreement: float | None = Field(
        None, ge=0, le=1, description="Smallest allowed fraction of samples whose top-1 class INT8 and FP32 agree on "
        "(classifier-like outputs)."
    )
    min_speedup: float | None = Field(
        1.0, gt=0, description="Smallest allowed INT8/FP32 speed ratio on OpenVINO (> 0; 1.0: not slower)."
    )

    @model_validator(mode="after")
    def _relative_drop_is_a_fraction(self) -> "GateConfig":
        if self.accuracy_drop_mode == "relative" and self.max_accuracy_drop is not None and self.max_accuracy_drop > 1:
            raise ValueError(f"max_accuracy_drop={self.max_accuracy_drop} with accuracy_drop_mode 'relative': a "
                             "relative drop is a fraction of the FP32 metric, at most 1 (e.g. 0.01 for 1%)")
        return self


class ValidationConfig(_Strict):
    """The validate step: metrics, speed measurement and gate."""

    metric: _Callable | None = Field(
        None, description="'module:function' taking (outputs, labels) -> float."
    )
    gate: GateConfig = Field(default_factory=GateConfig)
    latency_iterations: int = Field(50, gt=0, description="Alternating FP32/INT8 timed runs per runtime.")
    openvino_device: str = Field("CPU", description="OpenVINO device for speed figures.")
    fp32_inference_precision: Literal["f32", "bf16", "f16"] = Field(
        "f32", description="INFERENCE_PRECISION_HINT for the FP32 baseline on OpenVINO."
    )
    per_layer_sensitivity: bool = Field(False, description="Per-layer SQNR (costs extra inferences).")


class ExportConfig(_Strict):
    """The export-ir step."""

    openvino_device: str = Field("CPU", description="Device the IR must compile on before it is published.")
    export_fp32: bool = Field(False, description="Also write the FP32 IR (fp32/model.xml).")
    parity_tolerance: float = Field(
        0.05, gt=0, description="How much further from the FP32 outputs (relative L2 over the parity samples) the IR "
                                "may be than the INT8 ONNX model is.")


class RegistryConfig(_Strict):
    """The model registry (MLflow) that publishes the gated INT8 result; present means enabled.

    Credentials never go here: MLflow's own environment variables (MLFLOW_TRACKING_TOKEN, ...) apply."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: env MLFLOW_TRACKING_URI).")
    target_name: str | None = Field(
        None, description="Registered model receiving the INT8 version (default: '<source name>-int8')."
    )
    alias: str | None = Field(None, description="Alias set on the new INT8 version, e.g. 'int8-candidate'.")
    experiment: str = Field("ptqflow", description="MLflow experiment holding the publishing runs.")


# --------------------------------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------------------------------


class PipelineConfig(_Strict):
    """Everything ``ptqflow run`` needs; each step reads its own sections."""

    model: str | None = Field(
        None, description="FP32 model URI: path, file://, s3://, http(s)://, models:/<name>/<version> or "
        "models:/<name>@<alias> (MLflow registry)."
    )
    model_sha256: Annotated[str, Field(pattern=_SHA256), _matching(_SHA256, "64 hexadecimal digits")] | None = Field(
        None, description="Expected sha256 (64 hex digits) of the fetched model file."
    )
    output: str | None = Field(None, description="Output prefix URI: path, file:// or s3://.")
    device: ExecutionDevice = Field(ExecutionDevice.CPU, description="Where model-running steps run.")
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    registry: RegistryConfig | None = Field(
        None, description="Publish the gated INT8 model to this registry after export-ir (absent: off)."
    )


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown field"
        lines.append(f"{origin}: field '{loc}': {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], origin: str = "config") -> PipelineConfig:
    """Validate a plain dict into a PipelineConfig; raise ConfigError naming every bad field."""
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML/JSON config file (optional) and apply dotted-key overrides such as
    ``{"quantization.preset": "mixed"}``; return the validated config."""
    data: dict[str, Any] = {}
    origin = "config"
    if path is not None:
        p = Path(path)
        origin = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_config(data, origin)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted == 'a.b'``, creating intermediate dicts."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def config_schema() -> dict[str, Any]:
    """The JSON schema of PipelineConfig, generated from the code."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ptqflow pipeline configuration"
    return schema


def section_dump(model: BaseModel | Any) -> dict[str, Any]:
    """A JSON-ready dict of a config section (enums as values), stable for hashing."""
    if isinstance(model, BaseModel):
        return json.loads(model.model_dump_json())
    from pydantic import TypeAdapter

    return json.loads(TypeAdapter(type(model)).dump_json(model))
