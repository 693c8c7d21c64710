"""ptqflow's public API: Dataset, quantize, and its two halves collect_statistics / apply_quantization.

collect_statistics prepares the graph, decides placement (the QuantizationPlan), gathers the statistic points that
MinMax, FastBiasCorrection and the enabled plan passes declare, observes them in one pass and runs the plan passes
(the safeguards); apply_quantization turns the FP32 model and those statistics into an INT8 QDQ model, then
corrects biases. The engine does both (ptqflow.quantization.engine); this module turns datasets into checked
samples. collect_partial_statistics / merge_statistics run the collection in shards and merge them exactly. The halves are separate pipeline steps (collect-stats, quantize) and may run in
different processes; quantize_with_config runs both in one, reusing the prepared model and kept samples.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from ptqflow.config import AdvancedParameters, IgnoredScope, ModelType, QuantizationConfig, QuantizationPreset, TargetDevice
from ptqflow.errors import InputError
from ptqflow.quantization import engine
from ptqflow.quantization.algorithms.bias_step import statistics_request  # noqa: F401  (collect-stats' cache key)
from ptqflow.quantization.engine import QuantizationResult
from ptqflow.quantization.statistics import Statistics
from ptqflow.quantization.statistics.collector import check_sample, input_specs
from ptqflow.quantization.statistics.partial import PartialStatistics


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


def _stream_for(dataset) -> Callable:
    return lambda prepared, limit: _samples(dataset, prepared, limit)


def collect_statistics(model, dataset, config: QuantizationConfig | None = None, *, device: str = "cpu",
                       keep_samples: int = 0) -> Statistics:
    """Prepare ``model``, plan the quantizers and observe the planned tensors on at most ``config.subset_size``
    samples of ``dataset``. Returns the Statistics (with the plan).
    """
    return engine.collect(model, _stream_for(dataset), config or QuantizationConfig(), device, keep_samples).statistics


def collect_partial_statistics(model, dataset, config: QuantizationConfig | None = None, *, shard: int, shards: int,
                               num_samples: int, device: str = "cpu") -> PartialStatistics:
    """Shard ``shard`` (0-based) of ``shards`` of collect_statistics over the first ``num_samples`` samples of
    ``dataset`` (every shard reads the dataset from its start and observes only its own samples); the partials
    of all shards merge (``merge_statistics``) into exactly what collect_statistics returns."""
    return engine.collect_partial(model, _stream_for(dataset), config or QuantizationConfig(), device, shard, shards,
                                  num_samples)


def merge_statistics(partials: Iterable[PartialStatistics], config: QuantizationConfig | None = None, *,
                     device: str = "cpu") -> Statistics:
    """The Statistics of every shard's partial statistics together (see collect_partial_statistics)."""
    return engine.merge_partials(list(partials), config or QuantizationConfig(), device)


def quantize_with_summary(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                          dataset=None, device: str = "cpu") -> QuantizationResult:
    """Insert the planned quantizers with parameters from ``statistics``, then correct biases.

    Returns the INT8 QDQ model (ir_version <= MAX_IR_VERSION, checked) and the per-layer summary.
    """
    config = config or QuantizationConfig()
    prepared = engine.prepare_for(model, statistics, config)
    samples = (lambda n: list(_samples(dataset, prepared, n))) if dataset is not None else (lambda n: [])
    return engine.quantize(prepared, statistics, config, samples, device)


def apply_quantization(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                       dataset=None, device: str = "cpu") -> onnx.ModelProto:
    """The INT8 QDQ model (see quantize_with_summary)."""
    return quantize_with_summary(model, statistics, config, dataset=dataset, device=device).model


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
    collected = engine.collect(model, _stream_for(dataset), config, device, engine.samples_needed(config))
    return engine.quantize(collected.prepared, collected.statistics, config, lambda n: list(collected.kept[:n]), device)
