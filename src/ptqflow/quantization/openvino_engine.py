"""The engine's two halves for an OpenVINO model (``ov.Model``): the second backend beside engine.py's ONNX one.

Placement, the plan, the statistic points and the plan passes are the ONNX path's, read from the model's view
(graph.openvino_view); what differs is where the graph lives: the statistics are observed by OpenVINO on the model
itself (statistics.openvino_collector), the plan is written as FakeQuantize nodes (algorithms.fake_quantize) and
FastBiasCorrection and full BiasCorrection run on OpenVINO (algorithms.openvino_bias, openvino_bias_correction).
The plan passes that run the model on kept samples run on OpenVINO where ``ON_OPENVINO`` has their form (the
sensitivity search at collection, the error-driven mixed-precision search and the range search at quantization, on
algorithms.openvino_sensitivity's models) and are left out with a plan warning otherwise; SmoothQuant,
which needs the ONNX graph, is refused by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from ptqflow.config import QuantizationConfig
from ptqflow.errors import ConfigError, InputError
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms import (fast_bias_correction, minmax, openvino_bias, openvino_bias_correction,
                                            openvino_sensitivity)
from ptqflow.quantization.algorithms import quantizer_placement as placement
from ptqflow.quantization.algorithms import smooth_quant
from ptqflow.quantization.algorithms.bias_layers import find_bias_layers
from ptqflow.quantization.algorithms.bias_step import (FAST, FULL, fallback_config, fallback_reverted, guard_samples,
                                                      guard_verdict, planned_bias_layers, require_collected,
                                                      statistics_request, verdict_config, with_verdict)
from ptqflow.quantization.algorithms.error_search import SearchResult
from ptqflow.quantization.algorithms.fake_quantize import insert_fake_quantize
from ptqflow.quantization.algorithms.output_error import declare_decisions
from ptqflow.quantization.algorithms.summary import layer_summary
from ptqflow.quantization.engine import Collected, QuantizationResult, StreamFor, run_passes, samples_needed
from ptqflow.quantization.graph.openvino_view import OVView, build_view, is_openvino, mark_batch  # noqa: F401
from ptqflow.quantization.passes.context import PlanContext
from ptqflow.quantization.passes.mixed_precision import MixedPrecision
from ptqflow.quantization.passes.range_search import RangeSearch
from ptqflow.quantization.passes.registry import plan_passes
from ptqflow.quantization.passes.sensitivity import SensitivitySafeguard
from ptqflow.quantization.statistics import Statistics, openvino_collector
from ptqflow.runtime.openvino import read_ir

log = get_logger("engine")


@dataclass
class Prepared:
    """The caller's model cloned (never changed by the engine) and its view, which the plan's names refer to."""

    model: object  # ov.Model
    view: OVView


def prepare(model) -> Prepared:
    """The Prepared form of ``model`` (an ov.Model, or an IR's ``.xml`` path with its ``.bin`` beside it); the same
    model gives the same view names every time."""
    clone = read_ir(model) if isinstance(model, (str, os.PathLike)) else model.clone()
    return Prepared(clone, build_view(clone, mark_batch(clone)))


def prepare_for(model, statistics: Statistics, config: QuantizationConfig) -> Prepared:
    """``model`` prepared as the collection prepared it (the view's names are the plan's), its declared decision
    outputs recorded on the view, where every measure reads them."""
    prepared = prepare(model)
    declare_decisions(prepared.view.view, config.advanced.decision_outputs)
    return prepared


def check_supported(config: QuantizationConfig, device: str) -> None:
    """ConfigError naming what an OpenVINO model cannot get."""
    if str(getattr(device, "value", device)).lower() != "cpu":
        raise ConfigError(f"device {device!r}: an OpenVINO model's statistics are observed on OpenVINO CPU; "
                          "use device 'cpu' (the INT8 IR runs on any OpenVINO device afterwards)")
    if config.quant_format.value != "qdq" or not config.static:
        raise ConfigError(f"quantization.{'quant_format' if config.static else 'static'}: an OpenVINO model is "
                          "written with FakeQuantize nodes from static ranges only; keep quant_format qdq and "
                          "static true, or quantize the ONNX model for onnxruntime's formats")
    if config.effective_target_runtime().value != "openvino":
        raise ConfigError("quantization.target_runtime: an OpenVINO model runs on OpenVINO; leave target_runtime "
                          "unset or 'openvino'")
    if config.activation_type is not None or config.weight_type.value != "int8":
        raise ConfigError("quantization.activation_type / weight_type: an OpenVINO model's FakeQuantize nodes use "
                          "ptqflow's own types (preset decides activation signedness); leave them at their defaults")
    for name in ("input_quantization_params", "output_quantization_params"):
        if getattr(config, name):
            raise ConfigError(f"quantization.{name}: given quantization parameters are not available for an "
                              "OpenVINO model; quantize the ONNX model, or leave it empty")
    # SmoothQuant (on by default for transformers: "auto") is not available for an OpenVINO model: the default is
    # passed over, another alpha asked for is refused.
    alpha = config.advanced.smooth_quant_alpha
    if alpha is not None and alpha != smooth_quant.AUTO:
        raise ConfigError(f"quantization.advanced.smooth_quant_alpha ({alpha}): SmoothQuant is not available for an "
                          "OpenVINO model; leave it at its default, or quantize the ONNX model")


class SensitivityOnOpenVINO(SensitivitySafeguard):
    """The sensitivity plan pass (same switch, samples and decisions) measured on the prepared ov.Model:
    algorithms.openvino_sensitivity's gated model instead of onnxruntime sessions."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared

    def measure(self, ctx: PlanContext, ranges: dict, samples: list[dict]) -> list[tuple[str, float, float]]:
        adv = ctx.config.advanced
        return openvino_sensitivity.find_sensitive(
            self.prepared.model, self.prepared.view, ctx.plan, ranges, samples, max_points=adv.sensitivity_max_points,
            min_gain=adv.sensitivity_min_gain, min_error=adv.sensitivity_min_error)


class MixedPrecisionOnOpenVINO(MixedPrecision):
    """The error-driven mixed-precision pass (same switch, samples, bounds and decisions) measured on the prepared
    ov.Model: error_search's search on algorithms.openvino_sensitivity's gated model, weight gates included."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared

    def search(self, ctx: PlanContext, ranges: dict, samples: list[dict], **bounds) -> SearchResult:
        return openvino_sensitivity.mixed_precision_search(self.prepared.model, self.prepared.view, ctx.plan, ranges,
                                                           samples, **bounds)


class RangeSearchOnOpenVINO(RangeSearch):
    """Activation ranges by measured error (same switch, samples, candidates and verdict) with the values, the FP32
    references and the written models' outputs (FakeQuantize nodes, as the quantized IR computes) from OpenVINO."""

    def __init__(self, prepared: Prepared):
        self.prepared = prepared

    def values(self, ctx: PlanContext, tensors: list[str], samples: list[dict]):
        return openvino_sensitivity.activation_values(self.prepared.model, self.prepared.view, tensors, samples)

    def references(self, ctx: PlanContext, samples: list[dict]) -> list[list]:
        return openvino_sensitivity.fp32_outputs(self.prepared.model, self.prepared.view, samples)

    def outputs(self, ctx: PlanContext, ranges: dict, samples: list[dict]) -> list[list]:
        return openvino_sensitivity.outputs_of(ctx.write(ranges), self.prepared.view, samples)


# The plan passes that run the model, by name -> their OpenVINO form (made for the prepared model); the others are
# left out with a plan warning.
ON_OPENVINO = {SensitivitySafeguard.name: SensitivityOnOpenVINO, MixedPrecision.name: MixedPrecisionOnOpenVINO,
               RangeSearch.name: RangeSearchOnOpenVINO}


def _on_openvino(stage: str, prepared: Prepared, plan, config: QuantizationConfig) -> list:
    """The enabled plan passes of ``stage`` as they run on ``prepared``: a pass that runs the model (it keeps
    samples) in its OpenVINO form, one without that form left out with a plan warning."""
    found = []
    for p in (p for p in plan_passes(stage) if p.enabled(config.advanced)):
        if p.samples(config):
            if p.name not in ON_OPENVINO:
                plan.warnings.append(f"{p.name}: not run on an OpenVINO model (it runs the model on onnxruntime)")
                continue
            p = ON_OPENVINO[p.name](prepared)
        found.append(p)
    return found


def _no_session(model):
    raise ConfigError("this plan pass runs the model on onnxruntime, which an OpenVINO model cannot")


def collect(model, stream_for: StreamFor, config: QuantizationConfig, device: str, keep_samples: int) -> Collected:
    """Plan and observe ``model`` (an ov.Model) on at most ``config.subset_size`` samples; the Collected."""
    check_supported(config, device)
    prepared = prepare(model)
    view = prepared.view.view
    declare_decisions(view, config.advanced.decision_outputs)
    plan = placement.build_plan(view, config, [])
    layers = find_bias_layers(view)
    plan.bias_layers = [layer.name for layer in layers]
    plan.collected = statistics_request(config)
    passes = _on_openvino("collect", prepared, plan, config)
    keep_samples = max([keep_samples] + [p.samples(config) for p in passes])
    points = minmax.statistic_points(plan)
    points += fast_bias_correction.statistic_points(layers) if plan.collected["bias_input_means"] else []
    for p in passes:
        points += p.statistic_points(view, plan, config)
    seen = openvino_collector.observe(prepared.model, prepared.view, plan, points,
                                      stream_for(view, config.subset_size), keep=keep_samples)
    run_passes(passes, PlanContext(view, plan, seen.statistics, config, seen.kept, _no_session))
    return Collected(seen.statistics, prepared, seen.kept)


def quantize(prepared: Prepared, statistics: Statistics, config: QuantizationConfig, samples, device: str, *,
             plan_passes_on: bool = True) -> QuantizationResult:
    """The INT8 ov.Model (FakeQuantize nodes) of ``prepared`` per the statistics' plan, and the per-layer summary;
    engine.quantize's order: bias correction and its guard on the plan as collected, then the quantize-stage plan
    passes (unless ``plan_passes_on`` is False) in their OpenVINO form, and a changed plan written again with the
    guard's verdict standing (corrected again when it kept the correction). ``samples(n)`` is called once."""
    check_supported(config, device)
    plan = statistics.plan
    plan.check_matches(prepared.view.view)
    pool = samples(samples_needed(config))
    if config.advanced.adaround:
        plan.warnings.append("adaround: not run on an OpenVINO model (its weights keep nearest rounding)")
    q, bound, records = _write(prepared, statistics, config)
    q, bc = _correct_and_guard(prepared, q, bound, statistics, config, pool)
    passes = _on_openvino("quantize", prepared, plan, config) if plan_passes_on else []
    decided = plan.refinements()

    def shipped(ranges: dict | None = None) -> tuple[object, object, list, list]:
        """The plan written again (with ``ranges`` where given), corrected where the guard kept the correction (its
        figures kept); the view bound to it and the records."""
        w, bound, written_records = _write(prepared, statistics, config, ranges)
        if any(r.get("applied") for r in bc):
            kept = verdict_config(config, bc)
            return w, bound, written_records, with_verdict(_correct(prepared, w, bound, statistics, kept, pool), bc)
        return w, bound, written_records, bc

    def written(ranges: dict):  # the plan as it would ship with ``ranges``, its outputs named as the view's
        w, bound, _, _ = shipped(ranges)
        openvino_sensitivity.name_outputs(bound)
        return w

    run_passes(passes, PlanContext(prepared.view.view, plan, statistics, config, pool, _no_session, device,
                                   write=written))
    if plan.refinements() != decided:
        q, _, records, bc = shipped()
    return QuantizationResult(model=q, layers=layer_summary(prepared.view.view, plan, records, bc), plan=plan)


def _write(prepared: Prepared, statistics: Statistics, config: QuantizationConfig,
           ranges: dict | None = None) -> tuple[object, object, list]:
    """A clone of the prepared model with the statistics' plan written as FakeQuantize nodes (``ranges``, scale
    group -> (min, max), instead of the statistics' where given), the view bound to it and the writer's records."""
    q = prepared.model.clone()
    if ranges is None:
        ranges = statistics.ranges(config.advanced.mean_minmax)
    bound = prepared.view.bind(q)  # before the writer changes q: its nodes stay q's nodes afterwards
    return q, bound, insert_fake_quantize(q, bound, statistics.plan, ranges)


def _correct(prepared: Prepared, q, bound, statistics: Statistics, config: QuantizationConfig,
             pool: list[dict]) -> list[dict]:
    """The configured bias correction on ``q`` in place (``bound``: the view bound to it), FastBiasCorrection from
    the input means or full BiasCorrection on the first calibration samples of ``pool``; its records."""
    adv = config.advanced
    view = prepared.view.view
    layers = planned_bias_layers(view, statistics.plan)
    if adv.disable_bias_correction or not layers:
        return []
    inits = {t.name: t for t in view.graph.initializer}
    biases = {layer.name: numpy_helper.to_array(inits[layer.bias]).astype(np.float64).reshape(-1) for layer in layers}
    fp32 = prepared.view.bind(prepared.model)
    if config.fast_bias_correction:
        require_collected(statistics, fast_bias_correction.statistic_points(layers),
                          "FastBiasCorrection's per-channel input means")
        records = openvino_bias.fast_bias_correction(
            fp32, bound, layers, statistics.of(fast_bias_correction.FAST_BIAS_CORRECTION), biases,
            adv.bias_correction_threshold)
        return [{**r, "method": FAST} for r in records]
    fit = pool[:config.bias_correction_samples()]
    if not fit:
        raise InputError("full bias correction (fast_bias_correction=False) needs the calibration dataset")
    records = openvino_bias_correction.apply_bias_correction(fp32, prepared.model, bound, q, layers, fit, biases,
                                                             adv.bias_correction_threshold)
    return [{**r, "method": FULL} for r in records]


def _correct_and_guard(prepared: Prepared, q, bound, statistics: Statistics, config: QuantizationConfig,
                       pool: list[dict]) -> tuple[object, list[dict]]:
    """_correct on ``q``, then the guard (bias_step's split of the samples and verdict, judged on OpenVINO): the
    model to return (``q`` corrected, or uncorrected when the correction raised the output error) and the
    records. Where it reverts FastBiasCorrection, full BiasCorrection on the plan written again, judged the same
    way (bias_step.fallback_config), as on an ONNX model."""
    adv = config.advanced
    view = prepared.view.view
    if adv.disable_bias_correction or not planned_bias_layers(view, statistics.plan):
        return q, []
    uncorrected = q.clone() if adv.bias_correction_guard_samples else None
    records = _correct(prepared, q, bound, statistics, config, pool)
    guard, held_out, fitted = guard_samples(view, config, pool) if uncorrected is not None else ([], 0, [])
    if not guard or not any(r.get("applied") for r in records):
        return q, records
    judge = openvino_bias.Judge(prepared.model, uncorrected, q, view, tie_weight=adv.bias_correction_guard_tie_weight)
    if guard_verdict(lambda judged, _: judge(judged), records, guard, held_out, fitted):
        return q, records
    del judge
    full = fallback_config(config)  # FastBiasCorrection reverted: full BiasCorrection, judged the same way
    if full is None or not pool[:full.bias_correction_samples()] or not guard_samples(view, full, pool)[0]:
        return uncorrected, records  # no fallback, or no samples to fit it on and to judge it on
    q_full, bound_full, _ = _write(prepared, statistics, config)
    q_full, records_full = _correct_and_guard(prepared, q_full, bound_full, statistics, full, pool)
    if any(r.get("applied") for r in records_full):
        return q_full, records_full
    return uncorrected, fallback_reverted(records)
