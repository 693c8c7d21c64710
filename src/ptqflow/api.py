"""ptqflow's public API: Dataset, quantize, and its two halves collect_statistics / apply_quantization.

collect_statistics prepares the graph, decides placement (the QuantizationPlan), gathers the statistic points that
MinMax, FastBiasCorrection and the enabled plan passes declare, observes them in one pass
(ptqflow.quantization.statistics) and runs the plan passes (ptqflow.quantization.passes: the safeguards);
apply_quantization turns the FP32 model and those statistics into an INT8 QDQ model, then corrects biases
(ptqflow.quantization.algorithms.bias_step). The halves are separate pipeline steps (collect-stats, quantize) and may run in
different processes; quantize_with_config runs both in one, reusing the prepared model and kept samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from ptqflow.logs import get_logger

from ptqflow.quantization.algorithms import fast_bias_correction, minmax, smooth_quant
from ptqflow.quantization.algorithms import quantizer_placement as placement
from ptqflow.quantization.algorithms.bias_layers import find_bias_layers
from ptqflow.quantization.algorithms.bias_step import Samples, correct_and_guard, statistics_request
from ptqflow.quantization.algorithms.summary import layer_summary
from ptqflow.config import (AdvancedParameters, IgnoredScope, ModelType, QuantizationConfig, QuantizationPreset,
                            RangeEstimator, TargetDevice)
from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION, is_large, prepare_model
from ptqflow.quantization.passes.context import PlanContext
from ptqflow.quantization.passes.registry import plan_passes
from ptqflow.quantization.plan import SmoothQuantFactors
from ptqflow.quantization.statistics import Statistics
from ptqflow.quantization.statistics.accumulate import observe, session
from ptqflow.quantization.statistics.collector import check_sample, input_specs
from ptqflow.quantization.statistics.runner import make_runner

log = get_logger("engine")


class Dataset:
    """A calibration dataset: any iterable of items, and ``transform_fn`` mapping an item to the model input.

    The model input is a dict input-name -> array, or a bare array for single-input models. Items that are
    tuples ``(data, annotation[, metadata])`` (OpenVINO POT data loaders) are unpacked to ``data`` when no
    ``transform_fn`` is given.
    """

    def __init__(self, data_source: Iterable, transform_fn: Callable[[Any], Any] | None = None):
        self.data_source = data_source
        self.transform_fn = transform_fn

    def get_inference_data(self) -> Iterator:
        """The transformed items, in order."""
        for item in self.data_source:
            if self.transform_fn is not None:
                yield self.transform_fn(item)
            elif isinstance(item, tuple) and 2 <= len(item) <= 3 and not all(isinstance(x, np.ndarray) for x in item):
                yield item[0]
            else:
                yield item

    def __iter__(self) -> Iterator:
        return self.get_inference_data()


def _as_dict(item, names: list[str], index: int) -> dict:
    """A model-input dict from a dict, a bare array (single input) or a tuple/list of arrays (input order)."""
    if isinstance(item, dict):
        return item
    if isinstance(item, (list, tuple)) and len(item) == len(names) and len(names) > 1:
        return dict(zip(names, item))
    if len(names) == 1:
        return {names[0]: item}
    raise InputError(f"calibration sample {index}: a bare array was given but the model has inputs {names}; "
                     "give a dict keyed by input name")


def _samples(dataset, model: onnx.ModelProto, limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Checked sample dicts from ``dataset`` (a Dataset or any iterable), at most ``limit``."""
    specs = input_specs(model)
    items = dataset.get_inference_data() if isinstance(dataset, Dataset) else iter(dataset)
    for i, item in enumerate(islice(items, limit)):
        yield check_sample(_as_dict(item, list(specs), i), i, specs)


@dataclass
class QuantizationResult:
    """The INT8 model and the per-layer summary (what was quantized, kept in float and why, bias shifts)."""

    model: onnx.ModelProto
    layers: list[dict] = field(default_factory=list)


@dataclass
class _Collected:
    """collect_statistics' result with what quantize_with_config reuses in the same process (never saved)."""

    statistics: Statistics
    prepared: onnx.ModelProto  # the prepared (and smoothed) model the plan refers to
    kept: list[dict]  # the first samples of the dataset, for the algorithms that run the model again


def collect_statistics(model, dataset, config: QuantizationConfig | None = None, *, device: str = "cpu",
                       keep_samples: int = 0) -> Statistics:
    """Prepare ``model``, plan the quantizers and observe the planned tensors on at most ``config.subset_size``
    samples of ``dataset``. Returns the Statistics (with the plan).
    """
    return _collect(model, dataset, config or QuantizationConfig(), device, keep_samples).statistics


def _collect(model, dataset, config: QuantizationConfig, device: str, keep_samples: int) -> _Collected:
    adv = config.advanced
    prepared, warnings = prepare_model(model, adv)
    stream = _samples(dataset, prepared, config.subset_size)
    smoothing = {}
    region = placement.transformer_nodes(prepared, config) if adv.smooth_quant_alpha is not None else set()
    if region:
        region -= placement.ignored_nodes(prepared, config.ignored_scope)
        head = list(islice(stream, adv.smooth_quant_samples))  # replayed below: the dataset may be a one-shot iterator
        smoothing = smooth_quant.smooth(prepared, region, head, adv.smooth_quant_alpha, lambda m, outs: make_runner(
            m, outs, device, adv.statistics_runtime, session))
        stream = chain(head, stream)
    plan = placement.build_plan(prepared, config, warnings)
    if smoothing:
        plan.smooth_quant = SmoothQuantFactors(adv.smooth_quant_alpha, smoothing)
    layers = find_bias_layers(prepared)
    plan.bias_layers = [layer.name for layer in layers]
    plan.collected = statistics_request(config)
    passes = [p for p in plan_passes() if p.enabled(adv)]
    points = minmax.statistic_points(plan)  # FastBiasCorrection's reference is the FP32 layer: input means only
    points += fast_bias_correction.statistic_points(layers) if plan.collected["bias_input_means"] else []
    for p in passes:
        points += p.statistic_points(prepared, plan, config)
    keep = max([keep_samples] + [p.samples(config) for p in passes])
    seen = observe(prepared, plan, points, stream, device=device, runtime=adv.statistics_runtime, keep=keep)
    ctx = PlanContext(prepared, plan, seen.statistics, config, seen.kept, lambda m: session(m, device))
    for p in passes:
        for change in p.run(ctx).changes:
            log.info("%s: %s", p.name, change)
    return _Collected(seen.statistics, prepared, seen.kept)


def quantize_with_summary(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                          dataset=None, device: str = "cpu") -> QuantizationResult:
    """Insert the planned quantizers with parameters from ``statistics``, then correct biases.

    Returns the INT8 QDQ model (ir_version <= MAX_IR_VERSION, checked) and the per-layer summary.
    """
    config = config or QuantizationConfig()
    prepared = prepare_model(model, config.advanced)[0]  # as collect_statistics prepared it: the plan's names match
    if statistics.plan.smooth_quant:  # the factors collect-stats chose, re-applied exactly
        smooth_quant.apply(prepared, statistics.plan.smooth_quant.tensors)
    samples = (lambda n: list(_samples(dataset, prepared, n))) if dataset is not None else (lambda n: [])
    return _quantize(prepared, statistics, config, samples, device)


def apply_quantization(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                       dataset=None, device: str = "cpu") -> onnx.ModelProto:
    """The INT8 QDQ model (see quantize_with_summary)."""
    return quantize_with_summary(model, statistics, config, dataset=dataset, device=device).model


def _quantize(prepared: onnx.ModelProto, statistics: Statistics, config: QuantizationConfig, samples: Samples,
              device: str) -> QuantizationResult:
    plan = statistics.plan
    plan.check_matches(prepared)
    q = onnx.ModelProto()
    q.CopyFrom(prepared)
    mean_minmax = RangeEstimator(config.advanced.activations_range) == RangeEstimator.MEAN_MINMAX
    records = minmax.insert_qdq(q, plan, statistics.ranges(mean_minmax))
    bc = correct_and_guard(prepared, q, statistics, config, samples, device)
    q.ir_version = min(q.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    if not is_large(q):
        onnx.checker.check_model(q)
    return QuantizationResult(model=q, layers=layer_summary(prepared, plan, records, bc))


def quantize(model, calibration_dataset, *, preset: QuantizationPreset | None = None,
             target_device: TargetDevice = TargetDevice.ANY, subset_size: int = 300,
             fast_bias_correction: bool = True, model_type: ModelType | None = None,
             ignored_scope: IgnoredScope | None = None, advanced_parameters: AdvancedParameters | None = None,
             device: str = "cpu") -> onnx.ModelProto:
    """Quantize ``model`` (ModelProto or path) on ``calibration_dataset``; returns the INT8 QDQ ModelProto."""
    config = QuantizationConfig(
        preset=preset, target_device=target_device, subset_size=subset_size,
        fast_bias_correction=fast_bias_correction, model_type=model_type,
        ignored_scope=ignored_scope or IgnoredScope(), advanced=advanced_parameters or AdvancedParameters())
    return quantize_with_config(model, calibration_dataset, config, device=device).model


def quantize_with_config(model, dataset, config: QuantizationConfig, *, device: str = "cpu") -> QuantizationResult:
    """Both halves in one process (the dataset is read once). Returns model and summary."""
    adv = config.advanced
    keep = 0 if config.fast_bias_correction else config.bias_correction_samples()
    if not adv.disable_bias_correction:
        keep = max(keep, adv.bias_correction_guard_samples, adv.bias_correction_guard_samples_no_softmax)
    collected = _collect(model, dataset, config, device, keep)
    return _quantize(collected.prepared, collected.statistics, config, lambda n: list(collected.kept[:n]), device)
