"""ptqflow's public API: Dataset, quantize, and its two halves collect_statistics / apply_quantization.

collect_statistics prepares the graph, decides placement (the QuantizationPlan), gathers the statistic points that
MinMax, FastBiasCorrection and the enabled plan passes declare, observes them in one pass and runs the plan passes
(the safeguards); apply_quantization turns the FP32 model and those statistics into an INT8 QDQ model, then
corrects biases. The engine does both (ptqflow.quantization.engine); this module turns datasets into checked
samples. collect_partial_statistics / merge_statistics run the collection in shards and merge them exactly. The halves are separate pipeline steps (collect-stats, quantize) and may run in
different processes; quantize_with_config runs both in one, reusing the prepared model and kept samples.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from ptqflow.config import (AdvancedParameters, IgnoredScope, ModelType, QuantFormat, QuantizationConfig, QuantizationPreset,
                            QuantType, TargetDevice, TargetRuntime)
from ptqflow.errors import ConfigError, InputError
from ptqflow.quantization import engine
from ptqflow.quantization.algorithms.bias_step import statistics_request  # noqa: F401  (collect-stats' cache key)
from ptqflow.quantization.engine import QuantizationResult
from ptqflow.quantization.graph.openvino_view import is_openvino
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
        if is_pot_loader(self.data_source) and self.transform_fn is None:
            yield from pot_items(self.data_source)
            return
        source = _indexed(self.data_source) if is_pot_loader(self.data_source) else self.data_source
        for item in source:
            if self.transform_fn is not None:
                yield self.transform_fn(item)
            elif isinstance(item, tuple) and 2 <= len(item) <= 3 and not all(isinstance(x, np.ndarray) for x in item):
                yield item[0]
            else:
                yield item

    def __iter__(self) -> Iterator:
        return self.get_inference_data()


def is_pot_loader(source) -> bool:
    """True for an OpenVINO POT DataLoader: an object with ``__len__`` and ``__getitem__`` that is not a plain
    container (a list, tuple, dict or array of samples is iterated as it is)."""
    plain = (list, tuple, dict, np.ndarray, str, bytes)
    return hasattr(source, "__len__") and hasattr(source, "__getitem__") and not isinstance(source, plain)


def _indexed(loader) -> Iterator:
    return (loader[i] for i in range(len(loader)))


def pot_items(loader) -> Iterator:
    """The model inputs of a POT DataLoader: ``data`` of each ``(data, annotation)`` or ``(data, annotation,
    metadata)`` item (an array, or a dict by input name); InputError naming the item that is neither."""
    for i, item in enumerate(_indexed(loader)):
        if not isinstance(item, tuple) or not 2 <= len(item) <= 3:
            raise InputError(f"POT DataLoader item {i}: expected (data, annotation) or (data, annotation, metadata), "
                             f"got {type(item).__name__}" + (f" of {len(item)}" if isinstance(item, tuple) else ""))
        yield item[0]


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
    for i, item in enumerate(islice(_items(dataset), limit)):
        yield check_sample(_as_dict(item, list(specs), i), i, specs)


def _items(dataset) -> Iterator:
    """The model inputs ``dataset`` (a Dataset, a POT DataLoader or any iterable) yields, in order."""
    if isinstance(dataset, Dataset):
        return dataset.get_inference_data()
    return pot_items(dataset) if is_pot_loader(dataset) else iter(dataset)


def _stream_for(dataset) -> Callable:
    return lambda prepared, limit: _samples(dataset, prepared, limit)


def _engine(model):
    """The engine backend for ``model``: the OpenVINO one for an ov.Model or an IR path, else the ONNX one."""
    if not is_openvino(model):
        return engine
    from ptqflow.quantization import openvino_engine  # imports openvino only when an IR is given

    return openvino_engine


def collect_statistics(model, dataset, config: QuantizationConfig | None = None, *, device: str = "cpu",
                       keep_samples: int = 0) -> Statistics:
    """Prepare ``model`` (an ONNX ModelProto or path, an ov.Model or an IR's .xml path), plan the quantizers and
    observe the planned tensors on at most ``config.subset_size`` samples of ``dataset``. Returns the Statistics
    (with the plan).
    """
    config = config or QuantizationConfig()
    return _engine(model).collect(model, _stream_for(dataset), config, device, keep_samples).statistics


def collect_partial_statistics(model, dataset, config: QuantizationConfig | None = None, *, shard: int, shards: int,
                               num_samples: int, device: str = "cpu") -> PartialStatistics:
    """Shard ``shard`` (0-based) of ``shards`` of collect_statistics over the first ``num_samples`` samples of
    ``dataset`` (every shard reads the dataset from its start and observes only its own samples); the partials
    of all shards merge (``merge_statistics``) into exactly what collect_statistics returns."""
    if is_openvino(model):
        raise ConfigError("statistics in shards are not available for an OpenVINO model; collect in one process")
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
    backend = _engine(model)
    prepared = backend.prepare_for(model, statistics, config)
    graph = getattr(prepared, "view", None)
    graph = graph.view if graph is not None else prepared  # an OpenVINO model's inputs are read from its view
    samples = (lambda n: list(_samples(dataset, graph, n))) if dataset is not None else (lambda n: [])
    # the plan passes refine the plan they are given: the caller's statistics stay as collected, so quantizing
    # twice from them gives the same model (with and without samples, another config, ...)
    statistics = dataclasses.replace(statistics, plan=copy.deepcopy(statistics.plan))
    return backend.quantize(prepared, statistics, config, samples, device)


def apply_quantization(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                       dataset=None, device: str = "cpu") -> onnx.ModelProto:
    """The INT8 QDQ model (see quantize_with_summary)."""
    return quantize_with_summary(model, statistics, config, dataset=dataset, device=device).model


def quantize(model, calibration_dataset, *, preset: QuantizationPreset | None = None,
             target_device: TargetDevice = TargetDevice.ANY, subset_size: int = 300,
             fast_bias_correction: bool = True, model_type: ModelType | None = None,
             ignored_scope: IgnoredScope | None = None, advanced_parameters: AdvancedParameters | None = None,
             device: str = "cpu", quant_format: QuantFormat | str = QuantFormat.QDQ,
             target_runtime: TargetRuntime | str | None = None, activation_type: QuantType | str | None = None,
             weight_type: QuantType | str = QuantType.INT8, per_channel: bool | None = None, nbits: int = 8,
             input_quantization_params: dict | None = None,
             output_quantization_params: dict | None = None, example_inputs=None) -> onnx.ModelProto:
    """Quantize ``model`` on ``calibration_dataset``: an ONNX ModelProto or path gives the INT8 ModelProto in
    ``quant_format`` (QDQ by default; see QuantizationConfig for the other arguments; ``per_channel`` None keeps
    ``advanced_parameters.per_channel``), an ov.Model or an IR's ``.xml`` path (its ``.bin`` beside it) the INT8
    ov.Model with FakeQuantize nodes. A ``torch.nn.Module`` (with ``example_inputs``: a tensor, a tuple of
    tensors or a dict by forward's argument names) is exported to ONNX and checked against the module on the
    first calibration samples (ptqflow.frontends.torch), then quantized as ONNX: the INT8 ONNX ModelProto."""
    if _is_torch_module(model):
        model, calibration_dataset = _torch_to_onnx(model, calibration_dataset, example_inputs)
    advanced = advanced_parameters or AdvancedParameters()
    if per_channel is not None:
        advanced = advanced.model_copy(update={"per_channel": per_channel})
    config = QuantizationConfig(
        preset=preset, target_device=target_device, subset_size=subset_size,
        fast_bias_correction=fast_bias_correction, model_type=model_type,
        ignored_scope=ignored_scope or IgnoredScope(), advanced=advanced, quant_format=quant_format,
        target_runtime=target_runtime, activation_type=activation_type, weight_type=weight_type, nbits=nbits,
        input_quantization_params=input_quantization_params or {},
        output_quantization_params=output_quantization_params or {})
    return quantize_with_config(model, calibration_dataset, config, device=device).model


def _is_torch_module(model) -> bool:
    torch = sys.modules.get("torch")  # a Module exists only once torch is imported: torch stays optional
    return torch is not None and isinstance(model, torch.nn.Module)


def _torch_to_onnx(module, dataset, example_inputs) -> tuple[onnx.ModelProto, Iterable]:
    """The FP32 ONNX export of ``module``, checked on the first calibration samples, and the calibration samples
    again from the first (ptqflow.frontends.torch.module_to_onnx)."""
    from ptqflow.frontends.base import ConversionOptions
    from ptqflow.frontends.torch import module_to_onnx

    model, _, samples = module_to_onnx(module, example_inputs, _items(dataset), ConversionOptions())
    return model, samples


def quantize_with_config(model, dataset, config: QuantizationConfig, *, device: str = "cpu") -> QuantizationResult:
    """Both halves in one process (the dataset is read once). Returns model and summary."""
    backend = _engine(model)
    collected = backend.collect(model, _stream_for(dataset), config, device, engine.samples_needed(config))
    return backend.quantize(collected.prepared, collected.statistics, config, lambda n: list(collected.kept[:n]),
                            device)


def quantize_dynamic(model, *, weight_type: QuantType | str = QuantType.INT8, per_channel: bool = True,
                     model_type: ModelType | None = None, ignored_scope: IgnoredScope | None = None,
                     advanced_parameters: AdvancedParameters | None = None) -> onnx.ModelProto:
    """Dynamic quantization of ``model`` (ModelProto or path), no calibration data: weights as ``weight_type``
    integers offline, the activations of MatMul/Gemm/Conv quantized at run time by DynamicQuantizeLinear
    (IntegerOps, onnxruntime). Returns the INT8 ModelProto."""
    advanced = (advanced_parameters or AdvancedParameters()).model_copy(update={"per_channel": per_channel})
    config = QuantizationConfig(static=False, quant_format=QuantFormat.IntegerOps, weight_type=weight_type,
                                model_type=model_type, ignored_scope=ignored_scope or IgnoredScope(), advanced=advanced)
    return engine.quantize_dynamic(model, config).model


def quantize_dynamic_with_summary(model, config: QuantizationConfig) -> QuantizationResult:
    """Dynamic quantization of ``model`` with ``config`` (its ``static`` ignored): the model and the per-layer
    summary (see quantize_dynamic)."""
    return engine.quantize_dynamic(model, config)
