"""The engine's two halves in order, for the Python API (ptqflow.api) to call: collection (prepare the graph,
SmoothQuant, placement, the statistic points declared by MinMax, FastBiasCorrection and the enabled plan passes,
one statistics pass, the plan passes) and quantization (the plan written as QDQ, bias correction and its guard,
the per-layer summary). A collection may also run as shards (``collect_partial``) whose partial statistics
``merge`` into exactly what one collection gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Callable, Iterator

import onnx

from ptqflow.config import QuantizationConfig, RangeEstimator
from ptqflow.errors import ConfigError, InputError
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms import fast_bias_correction, minmax, smooth_quant
from ptqflow.quantization.algorithms import quantizer_placement as placement
from ptqflow.quantization.algorithms.bias_layers import find_bias_layers
from ptqflow.quantization.algorithms.bias_step import Samples, correct_and_guard, statistics_request
from ptqflow.quantization.algorithms.summary import layer_summary
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION, is_large, prepare_model
from ptqflow.quantization.passes.context import PlanContext, PlanPass
from ptqflow.quantization.passes.registry import plan_passes
from ptqflow.quantization.plan import QuantizationPlan, SmoothQuantFactors
from ptqflow.quantization.statistics import Statistics
from ptqflow.quantization.statistics.accumulate import accumulate, finalize, observe
from ptqflow.quantization.statistics.partial import PartialStatistics, merge, shard_range
from ptqflow.quantization.statistics.points import StatisticPoint
from ptqflow.quantization.statistics.runner import make_runner
from ptqflow.runtime.model_files import copy_without
from ptqflow.runtime.sessions import make_session

log = get_logger("engine")

StreamFor = Callable[[onnx.ModelProto, int | None], Iterator[dict]]  # (prepared model, limit) -> checked samples


@dataclass
class QuantizationResult:
    """The INT8 model and the per-layer summary (what was quantized, kept in float and why, bias shifts)."""

    model: onnx.ModelProto
    layers: list[dict] = field(default_factory=list)


@dataclass
class Collected:
    """A collection's Statistics with what a quantization in the same process reuses (never saved)."""

    statistics: Statistics
    prepared: onnx.ModelProto  # the prepared (and smoothed) model the plan refers to
    kept: list[dict]  # the first samples, for the algorithms that run the model again


@dataclass
class _Declared:
    prepared: onnx.ModelProto
    plan: QuantizationPlan
    points: list[StatisticPoint]
    passes: list[PlanPass]
    stream: Iterator[dict]


def _declare(model, stream_for: StreamFor, config: QuantizationConfig, device: str, limit: int | None) -> _Declared:
    """Prepare the graph, smooth it (SmoothQuant, on the first samples), place the quantizers and gather the
    statistic points of MinMax, FastBiasCorrection and the enabled plan passes."""
    adv = config.advanced
    prepared, warnings = prepare_model(model, adv)
    stream = stream_for(prepared, limit)
    smoothing = {}
    region = placement.transformer_nodes(prepared, config) if adv.smooth_quant_alpha is not None else set()
    if region:
        region -= placement.ignored_nodes(prepared, config.ignored_scope)
        head = list(islice(stream, adv.smooth_quant_samples))  # replayed below: the dataset may be a one-shot iterator
        smoothing = smooth_quant.smooth(prepared, region, head, adv.smooth_quant_alpha, lambda m, outs: make_runner(
            m, outs, device, adv.statistics_runtime, make_session))
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
    return _Declared(prepared, plan, points, passes, stream)


def _run_passes(passes: list[PlanPass], ctx: PlanContext) -> None:
    for p in passes:
        for change in p.run(ctx).changes:
            log.info("%s: %s", p.name, change)


def collect(model, stream_for: StreamFor, config: QuantizationConfig, device: str, keep_samples: int) -> Collected:
    """The whole collection on at most ``config.subset_size`` samples."""
    d = _declare(model, stream_for, config, device, config.subset_size)
    keep = max([keep_samples] + [p.samples(config) for p in d.passes])
    seen = observe(d.prepared, d.plan, d.points, d.stream, device=device, runtime=config.advanced.statistics_runtime,
                   keep=keep)
    _run_passes(d.passes, PlanContext(d.prepared, d.plan, seen.statistics, config, seen.kept,
                                      lambda m: make_session(m, device)))
    return Collected(seen.statistics, d.prepared, seen.kept)


def check_shardable(config: QuantizationConfig) -> None:
    """ConfigError naming what cannot run on shards: SmoothQuant measures the first samples before the statistics
    pass changes the graph, and a plan pass that keeps samples runs the model on them after it."""
    adv = config.advanced
    if adv.smooth_quant_alpha is not None:
        raise ConfigError("quantization.advanced.smooth_quant_alpha: SmoothQuant cannot be collected in shards (it "
                          "measures the first samples before the statistics pass); collect in one process")
    needs = [p.name for p in plan_passes() if p.enabled(adv) and p.samples(config)]
    if needs:
        raise ConfigError(f"quantization.advanced: {', '.join(needs)} cannot be collected in shards (it runs the "
                          "model on kept calibration samples after the statistics pass); collect in one process")


def collect_partial(model, stream_for: StreamFor, config: QuantizationConfig, device: str, shard: int, shards: int,
                    num_samples: int) -> PartialStatistics:
    """Shard ``shard`` of ``shards`` of the collection over the first ``num_samples`` samples (capped at
    ``config.subset_size``): the statistics pass on that shard's samples only, no plan passes yet."""
    check_shardable(config)
    num_samples = min(num_samples, config.subset_size) if config.subset_size else num_samples
    start, stop = shard_range(num_samples, shard, shards)
    d = _declare(model, stream_for, config, device, stop)
    acc = accumulate(d.prepared, d.points, islice(d.stream, start, None), device=device,
                     runtime=config.advanced.statistics_runtime, first=start)
    if acc.count != stop - start:
        raise ConfigError(f"shard {shard} of {shards}: expected samples {start}..{stop - 1} of {num_samples}, the "
                          f"data held {start + acc.count if acc.count else 'fewer'}; give the calibration split's "
                          "sample count")
    return PartialStatistics(d.plan, d.points, acc, shard, shards, start)


def merge_partials(partials: list[PartialStatistics], config: QuantizationConfig, device: str) -> Statistics:
    """The Statistics of all shards together, plan passes run: what ``collect`` gives on all their samples."""
    check_shardable(config)
    plan, points, acc = merge(partials)
    if acc.count == 0:
        raise InputError("calibration dataset is empty: at least one sample is needed")
    statistics = finalize(plan, points, acc)
    passes = [p for p in plan_passes() if p.enabled(config.advanced)]
    _run_passes(passes, PlanContext(None, plan, statistics, config, [], lambda m: make_session(m, device)))
    return statistics


def prepare_for(model, statistics: Statistics, config: QuantizationConfig) -> onnx.ModelProto:
    """The model prepared as the collection prepared it, with its SmoothQuant factors: the plan's names match."""
    prepared = prepare_model(model, config.advanced)[0]
    if statistics.plan.smooth_quant:  # the factors collect-stats chose, re-applied exactly
        smooth_quant.apply(prepared, statistics.plan.smooth_quant.tensors)
    return prepared


def quantize(prepared: onnx.ModelProto, statistics: Statistics, config: QuantizationConfig, samples: Samples,
             device: str) -> QuantizationResult:
    """The INT8 QDQ model of ``prepared`` per the statistics' plan, biases corrected, and the per-layer summary."""
    plan = statistics.plan
    plan.check_matches(prepared)
    # q starts without the float weights' bytes: insert_qdq reads them from prepared, so the INT8 model never
    # holds a second copy of them (protobuf frees a message's memory only as a whole; for a model over 2 GB,
    # gigabytes).
    q = copy_without(prepared, {w.tensor for w in plan.weights})
    mean_minmax = RangeEstimator(config.advanced.activations_range) == RangeEstimator.MEAN_MINMAX
    records = minmax.insert_qdq(q, plan, statistics.ranges(mean_minmax), float_weights=prepared)
    bc = correct_and_guard(prepared, q, statistics, config, samples, device)
    q.ir_version = min(q.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    if not is_large(q):
        onnx.checker.check_model(q)
    return QuantizationResult(model=q, layers=layer_summary(prepared, plan, records, bc))
