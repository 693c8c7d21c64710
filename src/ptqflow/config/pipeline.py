"""The pipeline's sections besides quantization (data, validation, export, registry) and PipelineConfig, the
whole configuration."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from ptqflow.config.base import _SHA256, _Callable, _HeightWidth, _matching, _Positive, _size, _Strict
from ptqflow.config.enums import ExecutionDevice
from ptqflow.config.quantization import QuantizationConfig


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
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model expects.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout the model expects.")
    dtype: Literal["float32", "float16", "uint8", "int8"] = Field(
        "float32", description="Element type of the model input the images are converted to.")

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
    accuracy_drop_mode: Literal["absolute", "relative"] = Field(
        "absolute", description="max_accuracy_drop as a difference of the metric (absolute) or as a fraction of the "
        "FP32 value (relative).")
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


class AccuracyControlConfig(_Strict):
    """Accuracy control in validate: when the gate fails on accuracy or fidelity, revert activation quantizers to
    float, most harmful first, quantizing again from the run's statistics, until the gate's own thresholds hold
    on the validation split (ptqflow.quantize_with_accuracy_control's loop). Off by default."""

    enabled: bool = Field(
        False, description="Run the revert loop when the gate's accuracy or fidelity thresholds fail; validate then "
        "reads the statistics artifact and publishes the INT8 model it found (<validate>/quantized) when the gate "
        "passes with it.")
    max_iterations: int = Field(
        20, ge=0, description="Reverts tried at most (>= 0); each quantizes the model again and validates it on the "
        "whole validation split (one quantizer a revert while that lowers the shortfall, twice as many after one that "
        "did not).")
    max_time_s: float | None = Field(
        None, gt=0, description="Time budget of the revert loop in seconds (> 0; null: no limit): no revert starts "
        "after it.")
    ranking_samples: int = Field(
        100, ge=1, description="Validation samples (>= 1) the quantizers are ranked on by the output error each "
        "adds.")
    restore_mode: Literal["activations_and_weights", "only_activations"] = Field(
        "activations_and_weights", description="activations_and_weights: a reverted quantizer's layers left with no "
        "quantized input also get float weights (NNCF's default); only_activations: every weight stays int8.")


class ValidationConfig(_Strict):
    """The validate step: metrics, speed measurement and gate."""

    metric: _Callable | None = Field(
        None, description="'module:function' taking (outputs, labels) -> float."
    )
    gate: GateConfig = Field(default_factory=GateConfig)
    accuracy_control: AccuracyControlConfig = Field(default_factory=AccuracyControlConfig)
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
                                "may be than the furthest of onnxruntime's executions of the INT8 ONNX model (its "
                                "graph optimization levels all, basic and none).")


class ConversionConfig(_Strict):
    """fetch-model's conversion of a PyTorch, TensorFlow, Keras or TFLite model to ONNX (ptqflow.frontends)."""

    input_shapes: dict[str, list[int]] = Field(
        default_factory=dict, description="Shapes of source-model inputs by name, for formats that do not record "
        "them (TorchScript) or leave dimensions open, e.g. {input: [1, 3, 224, 224]}; the first dimension stays "
        "dynamic in the ONNX model when dynamic_batch is on.")
    input_dtypes: dict[str, str] = Field(
        default_factory=dict, description="Dtypes of source-model inputs by name (numpy names; default float32 "
        "where the source does not say).")
    tolerance: float = Field(
        1e-3, gt=0, description="Largest allowed relative difference (max |source - onnx| / max |source|, per "
        "output) between the source framework's and the converted model's outputs on the check samples.")
    check_samples: int = Field(4, ge=1, le=64, description="Inputs the conversion is checked on.")
    opset: int | None = Field(None, ge=7, description="ONNX opset of the converted model (default: the "
                              "converter's).")
    dynamic_batch: bool = Field(True, description="Export the first dimension of every input as dynamic.")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto", description="PyTorch exporter: auto tries torch.export (dynamo) and falls back to the TorchScript "
        "exporter, saying why in the manifest.")


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
    conversion: ConversionConfig = Field(default_factory=ConversionConfig)
    registry: RegistryConfig | None = Field(
        None, description="Publish the gated INT8 model to this registry after export-ir (absent: off)."
    )
