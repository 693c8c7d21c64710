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

from ptqflow.config import QuantizationConfig, TargetDevice, TargetRuntime
from ptqflow.errors import ConfigError, InputError
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms import adaround, fast_bias_correction, minmax, smooth_quant
from ptqflow.quantization.algorithms import quantizer_placement as placement
from ptqflow.quantization.algorithms.bias_layers import find_bias_layers
from ptqflow.quantization.algorithms.output_error import declare_decisions, undeclare
from ptqflow.quantization.algorithms.bias_step import (Samples, correct_and_guard, fallback_config, guard_samples,
                                                       reapply, statistics_request)
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
from ptqflow.quantization.writers import dynamic_contrib, integer_ops, write
from ptqflow.runtime.model_files import SetAside, copy_without
from ptqflow.runtime.sessions import OutputCache, make_session

log = get_logger("engine")

StreamFor = Callable[[onnx.ModelProto, int | None], Iterator[dict]]  # (prepared model, limit) -> checked samples


@dataclass
class QuantizationResult:
    """The INT8 model and the per-layer summary (what was quantized, kept in float and why, bias shifts)."""

    model: onnx.ModelProto
    layers: list[dict] = field(default_factory=list)
    plan: QuantizationPlan | None = None  # the plan written, with the quantize-stage passes' decisions


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


def _declare(model, stream_for: StreamFor, config: QuantizationConfig, device: str, limit: int | None,
             sharded: bool = False) -> _Declared:
    """Prepare the graph, smooth it (SmoothQuant, on the first samples), place the quantizers and gather the
    statistic points of MinMax, FastBiasCorrection and the enabled plan passes. ``sharded``: one shard's
    collection, which does not smooth (SmoothQuant's default passes over it; another alpha is refused there)."""
    adv = config.advanced
    prepared, warnings = prepare_model(model, adv)
    declare_decisions(prepared, adv.decision_outputs)
    stream = stream_for(prepared, limit)
    smoothing = {}
    region = placement.transformer_nodes(prepared, config) if adv.smooth_quant_alpha is not None else set()
    if region:
        region -= placement.ignored_nodes(prepared, config.ignored_scope)
    # SmoothQuant's default passes over what it cannot smooth, where a number asked for is refused: a model over
    # 2 GB (its passes run copies of the model with added outputs, which such a model can neither be handed as,
    # protobuf's limit, nor afford: its weights twice) and one shard's collection (the factors come from the first
    # samples before the statistics pass, which shards cannot share; each shard and the merge see it unsmoothed).
    cannot = None if not region else (
        ("the model is over 2 GB", "is not available for a model over 2 GB") if is_large(prepared) else
        ("statistics collected in shards", "cannot be collected in shards (it measures the first samples before "
                                            "the statistics pass; collect in one process)") if sharded else None)
    if cannot:
        if adv.smooth_quant_alpha != smooth_quant.AUTO:
            raise ConfigError(f"quantization.advanced.smooth_quant_alpha ({adv.smooth_quant_alpha}): SmoothQuant "
                              f"{cannot[1]}; leave it at its default (auto), which passes over it, or set it to null")
        log.warning("SmoothQuant not applied: %s (smooth_quant_alpha auto passes over it)", cannot[0])
        region = set()
    if region:
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


def run_passes(passes: list[PlanPass], ctx: PlanContext) -> None:
    for p in passes:
        for change in p.run(ctx).changes:
            log.info("%s: %s", p.name, change)


def collect(model, stream_for: StreamFor, config: QuantizationConfig, device: str, keep_samples: int) -> Collected:
    """The whole collection on at most ``config.subset_size`` samples."""
    d = _declare(model, stream_for, config, device, config.subset_size)
    keep = max([keep_samples] + [p.samples(config) for p in d.passes])
    seen = observe(d.prepared, d.plan, d.points, d.stream, device=device, runtime=config.advanced.statistics_runtime,
                   keep=keep)
    run_passes(d.passes, PlanContext(d.prepared, d.plan, seen.statistics, config, seen.kept,
                                      lambda m: make_session(m, device)))
    return Collected(seen.statistics, d.prepared, seen.kept)


def check_shardable(config: QuantizationConfig) -> None:
    """ConfigError naming what cannot run on shards: a plan pass that keeps samples runs the model on them after
    the statistics pass. (SmoothQuant, which measures the first samples before it, is passed over or refused by
    ``_declare``.)"""
    adv = config.advanced
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
    d = _declare(model, stream_for, config, device, stop, sharded=True)
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
    run_passes(passes, PlanContext(None, plan, statistics, config, [], lambda m: make_session(m, device)))
    return statistics


def prepare_for(model, statistics: Statistics, config: QuantizationConfig) -> onnx.ModelProto:
    """The model prepared as the collection prepared it, with its SmoothQuant factors: the plan's names match."""
    prepared = prepare_model(model, config.advanced)[0]
    declare_decisions(prepared, config.advanced.decision_outputs)
    if statistics.plan.smooth_quant:  # the factors collect-stats chose, re-applied exactly
        smooth_quant.apply(prepared, statistics.plan.smooth_quant.tensors)
    return prepared


def _write(prepared: onnx.ModelProto, plan: QuantizationPlan, statistics: Statistics,
           config: QuantizationConfig, ranges: dict | None = None,
           codes: dict | None = None) -> tuple[onnx.ModelProto, list[dict]]:
    """The QDQ model of ``plan`` (in config's number formats) and insert_qdq's records; ``ranges`` (scale group ->
    (min, max)) instead of the statistics' where given; ``codes``: AdaRound's weight codes by tensor."""
    # q starts without the float weights' bytes: insert_qdq reads them from prepared, so the INT8 model never
    # holds a second copy of them (protobuf frees a message's memory only as a whole; for a model over 2 GB,
    # gigabytes).
    q = copy_without(prepared, {w.tensor for w in plan.weights})
    if ranges is None:
        ranges = statistics.ranges(config.advanced.mean_minmax)
    records = minmax.insert_qdq(q, plan, ranges, number_formats(prepared, plan, config), float_weights=prepared,
                                codes=codes)
    return q, records


def samples_needed(config: QuantizationConfig) -> int:
    """How many calibration samples ``quantize`` reads (a collection in the same process keeps them): full
    BiasCorrection's fitting samples followed by the guard's held-out ones, the quantize-stage plan passes' and
    AdaRound's."""
    adv = config.advanced
    full = fallback_config(config)  # FastBiasCorrection's fallback fits on its own few samples
    if full is not None:
        n = full.bias_correction_samples()
    else:
        n = 0 if config.fast_bias_correction else config.bias_correction_samples()
    if not adv.disable_bias_correction:
        n += max(adv.bias_correction_guard_samples, adv.bias_correction_guard_samples_no_softmax)
    n = max(n, adv.adaround_samples if adv.adaround else 0)
    return max([n] + [p.samples(config) for p in plan_passes("quantize") if p.enabled(adv)])


def quantize(prepared: onnx.ModelProto, statistics: Statistics, config: QuantizationConfig, samples: Samples,
             device: str, *, plan_passes_on: bool = True) -> QuantizationResult:
    """The INT8 model of ``prepared`` in ``config.quant_format`` per the statistics' plan (refined in place by the
    quantize-stage plan passes unless ``plan_passes_on`` is False: a plan they already refined), biases
    corrected, and the per-layer summary. ``samples(n)`` is called once.

    Bias correction and its guard run on the model of the plan as collected; the quantize-stage passes (mixed
    precision) then refine the plan, and a changed plan is written again with the guard's verdict standing
    (corrected again when it kept the correction): the verdict is on the quantization the statistics planned,
    not on one the search's few samples shaped (on PP-OCR rec a float decision made a correction look helpful
    on calibration frames that cost exact match on held-out lines; evidence: docs/algorithms.md#mixed-precision)."""
    plan = statistics.plan
    plan.check_matches(prepared)
    pool = samples(samples_needed(config))
    codes = adaround.round_weights(prepared, plan, statistics, config, pool, lambda m: make_session(m, device)) \
        if config.advanced.adaround else {}
    passes = [p for p in plan_passes("quantize") if p.enabled(config.advanced)] if plan_passes_on else []
    # The FP32 outputs the guard and the quantize-stage passes (mixed precision) judge against, each sample's once
    # (they share the first calibration samples) and all before the INT8 model exists: never an FP32 session beside
    # the INT8 model and its uncorrected copy (for a model over 2 GB the step's peak; bench/README.md, "Models over
    # 2 GB"; on PP-OCR det a session running two samples at once there raised the peak by 150 MB).
    fp32 = OutputCache(prepared, device)
    judged, _, fitted = guard_samples(prepared, config, pool)
    ahead = pool[:max([p.samples(config) for p in passes] + [0])]
    fp32(judged + fitted + ahead)
    references = (fp32(judged) if judged else None, fp32(fitted) if fitted else None)  # the cache's, not run again
    q, records = _write(prepared, plan, statistics, config, codes=codes)
    means: dict = {}  # full BiasCorrection's FP32 output means, for the plan written again
    bc = correct_and_guard(prepared, q, statistics, config, pool, device, references, fp32, fp32_means=means)
    del references
    fp32.keep(ahead)  # the guard's other outputs are done with (PP-OCR rec: 32 of 1 MB)
    decided = plan.refinements()

    def shipped(ranges: dict | None = None) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
        """The plan written again (with ``ranges`` where given) and corrected as the guard decided; its records."""
        w, written_records = _write(prepared, plan, statistics, config, ranges, codes)
        return w, written_records, reapply(prepared, w, statistics, config, pool, device, bc, means)

    # The passes never read the INT8 model: a large one waits in a file meanwhile, so their FP32 sessions and
    # gated model do not sit beside it.
    with SetAside(q, to_file=bool(passes) and is_large(prepared)) as aside:
        del q
        run_passes(passes, PlanContext(prepared, plan, statistics, config, pool, lambda m: make_session(m, device),
                                        device, fp32, lambda ranges: shipped(ranges)[0]))
        del fp32
        if plan.refinements() != decided:
            q, records, bc = shipped()
        else:
            q = aside.back()
    # onnxruntime computes biases in int32: so does the model; QOperator / IntegerOps re-express the QDQ units
    q = write(q, config.quant_format, int32_bias=config.effective_target_runtime() == TargetRuntime.ONNXRUNTIME)
    q.ir_version = min(q.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    undeclare(q)
    if not is_large(q):
        onnx.checker.check_model(q)
    return QuantizationResult(model=q, layers=layer_summary(prepared, plan, records, bc), plan=plan)


def number_formats(prepared: onnx.ModelProto, plan: QuantizationPlan, config: QuantizationConfig) -> minmax.NumberFormats:
    """The integer types and given parameters of ``config`` for the QDQ writer. Activations take
    config.effective_activation_type() (uint8 for onnxruntime, else OpenVINO's per-tensor choice).
    InputError naming a given tensor that is not in the model; a given tensor without a quantizer is a plan
    warning (it stays float)."""
    given: dict[str, tuple[int, float]] = {}
    tensors = {o for n in prepared.graph.node for o in n.output} | {i.name for i in prepared.graph.input}
    quantized = {p.tensor for p in plan.activations}
    for field_name in ("input_quantization_params", "output_quantization_params"):
        for tensor, params in getattr(config, field_name).items():
            if tensor not in tensors:
                raise InputError(f"quantization.{field_name}: tensor {tensor!r} is not in the model")
            if tensor not in quantized and not any(repr(tensor) in w and field_name in w for w in plan.warnings):
                plan.warnings.append(f"quantization.{field_name}: tensor {tensor!r} has no quantizer (kept in float "
                                     "or its quantizer sits on another tensor); its parameters are unused")
            given[tensor] = params
    return minmax.NumberFormats(config.effective_activation_type(), config.weight_type.value, given)


def quantize_dynamic(model, config: QuantizationConfig) -> QuantizationResult:
    """Dynamic quantization of ``model`` (no calibration data): the weights placement chooses, as integers, and
    each MatMul/Gemm/Conv reading them as DynamicQuantizeLinear + MatMulInteger/ConvInteger (onnxruntime), its
    activation quantized at run time; other weights stay DequantizeLinear of integers. LSTM and com.microsoft
    Attention become onnxruntime's DynamicQuantizeLSTM / QAttention; GRU stays float (writers.dynamic_contrib).
    Returns the model and the per-layer summary."""
    prepared, warnings = prepare_model(model, config.advanced)
    contrib = {n.op_type for n in prepared.graph.node} & {"LSTM", "Attention"}
    try:
        plan = placement.build_plan(prepared, config, warnings)
    except InputError:
        if not contrib:
            raise
        plan = QuantizationPlan(preset=config.effective_preset().value, target_device=TargetDevice(config.target_device).value,
                                transformer=False, per_channel=config.advanced.per_channel, warnings=warnings)
    plan.activations = []  # quantized at run time, not from calibrated ranges
    q = onnx.ModelProto()
    q.CopyFrom(prepared)
    records = minmax.insert_qdq(q, plan, {}, minmax.NumberFormats(weight=config.weight_type.value))
    q = integer_ops.write_dynamic(q)
    contrib_rows = dynamic_contrib.write(q, config.advanced.per_channel,
                                         placement.ignored_nodes(prepared, config.ignored_scope))
    q.ir_version = min(q.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    if not is_large(q):
        onnx.checker.check_model(q)
    return QuantizationResult(model=q, layers=layer_summary(prepared, plan, records, []) + contrib_rows)
