"""The bias-correction step of quantization: what it needs collected (``statistics_request``), the configured
correction (FastBiasCorrection from the collected input means, or full BiasCorrection on calibration samples) and
its guard (ptqflow.quantization.algorithms.bc_guard), which reverts a correction that raised the model's output error."""

from __future__ import annotations

import logging
from typing import Callable

import onnx

from ptqflow.quantization.algorithms import bc_guard, bias_correction, fast_bias_correction
from ptqflow.quantization.algorithms.bias_layers import find_bias_layers
from ptqflow.config import QuantizationConfig
from ptqflow.errors import InputError
from ptqflow.quantization.statistics import Statistics
from ptqflow.runtime.model_files import copy_without, fill_from
from ptqflow.runtime.sessions import run_each

log = logging.getLogger(__name__)

Samples = Callable[[int], list]  # n -> at most n calibration sample dicts (empty when none are at hand)


def statistics_request(config: QuantizationConfig) -> dict:
    """What ``collect_statistics`` observes for ``config`` beyond the planned ranges, as a JSON-ready dict.

    The one place that decides it: collect_statistics gathers exactly this and records it in the plan
    (``plan.collected``), the collect-stats step puts it in its cache key; quantize checks the statistic points
    themselves (``require_collected``)."""
    return {"bias_input_means": bool(config.fast_bias_correction and not config.advanced.disable_bias_correction)}


def correct_and_guard(prepared: onnx.ModelProto, q: onnx.ModelProto, statistics: Statistics,
                      config: QuantizationConfig, samples: Samples, device: str) -> list[dict]:
    """Run the configured bias correction on ``q`` in place, then the guard (ptqflow.quantization.algorithms.bc_guard): when
    the corrected model's output error against FP32 on a few calibration samples is higher than without the
    correction, ``q`` goes back to its uncorrected biases and every record says why. Returns the records.
    Samples: ``advanced.bias_correction_guard_samples``, or ``..._no_softmax`` for models without a decision
    (Softmax/LogSoftmax) output, whose squared error alone is continuous and settles on fewer samples.

    The uncorrected model is run on the guard's samples before the correction, and kept only without its
    quantized weights (which the correction does not touch), for a revert: no full copy of the INT8 model
    is held while the guard's sessions run. Samples are drawn in the same order as ever (the correction's, then
    the guard's), so a one-shot dataset gives each the same samples."""
    adv = config.advanced
    n_guard = 0
    if adv.bias_correction_guard_samples and not adv.disable_bias_correction:
        n_guard = (adv.bias_correction_guard_samples if bc_guard.decision_outputs(prepared)
                   else adv.bias_correction_guard_samples_no_softmax)
    layers = _layers(prepared, statistics, config)
    calibration = samples(config.bias_correction_samples()) if layers and not config.fast_bias_correction else []
    guard_samples = samples(n_guard) if layers and n_guard else []
    before = run_each(q, guard_samples, device) if guard_samples else None
    uncorrected = copy_without(q, _unchanged(q)) if guard_samples else None
    records = correct_biases(prepared, q, layers, statistics, config, calibration, device)
    if not any(r.get("applied") for r in records):
        return records
    if not guard_samples:
        if n_guard:
            log.info("bias correction guard skipped: no calibration samples at hand")
        return records
    keep, err_before, err_after = bc_guard.judge(prepared, before, q, guard_samples, device,
                                                 tie_weight=adv.bias_correction_guard_tie_weight)
    verdict = "kept" if keep else "reverted"
    log.info("bias correction %s: model output error on %d calibration samples %.4g without, %.4g with it",
             verdict, len(guard_samples), err_before, err_after)
    if not keep:
        fill_from(uncorrected, q)
        q.CopyFrom(uncorrected)
        for r in records:
            if r.get("applied"):
                r["applied"] = False
                r["reason"] = (f"reverted: bias correction raised the model's output error on {len(guard_samples)} "
                               f"calibration samples ({err_before:.4g} -> {err_after:.4g})")
    return records


def _unchanged(q: onnx.ModelProto) -> set[str]:
    """Names of ``q``'s initializers that bias correction never writes: those not of a float type (the quantized
    weights, zero points; write_bias keeps a bias's float type)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return {t.name for t in q.graph.initializer if t.data_type not in floats}


def _layers(prepared: onnx.ModelProto, statistics: Statistics, config: QuantizationConfig) -> list:
    """The bias layers of the plan that the configured correction works on ([] when it is disabled)."""
    if config.advanced.disable_bias_correction:
        return []
    wanted = set(statistics.plan.bias_layers)
    return [layer for layer in find_bias_layers(prepared) if layer.name in wanted]


def correct_biases(prepared: onnx.ModelProto, q: onnx.ModelProto, layers: list, statistics: Statistics,
                   config: QuantizationConfig, calibration: list, device: str) -> list[dict]:
    """Run the configured bias correction of ``layers`` on ``q`` in place (full correction on ``calibration``);
    returns its per-layer records."""
    if not layers:
        return []
    threshold = config.advanced.bias_correction_threshold
    if config.fast_bias_correction:
        require_collected(statistics, fast_bias_correction.statistic_points(layers),
                          "FastBiasCorrection's per-channel input means")
        return fast_bias_correction.apply_fast_bias_correction(
            q, layers, statistics.of(fast_bias_correction.FAST_BIAS_CORRECTION), {}, threshold=threshold,
            fp32_model=prepared, device=device)
    if not calibration:
        raise InputError("full bias correction (fast_bias_correction=False) needs the calibration dataset")
    return bias_correction.apply_bias_correction(prepared, q, layers, calibration, threshold=threshold,
                                                 device=device, runtime=config.advanced.statistics_runtime)


def require_collected(statistics: Statistics, points: list, what: str) -> None:
    """InputError when ``statistics`` were collected without ``points`` (they came from a run with other
    settings) instead of quietly skipping the layers that would use them."""
    missing = statistics.missing(points)
    if missing:
        collected = statistics.plan.collected
        raise InputError(f"the statistics lack {what} ({len(missing)} of {len(points)} statistic points, e.g. "
                         f"{missing[0].key!r}): they were collected with other settings "
                         f"({', '.join(f'{k}={v}' for k, v in collected.items()) or 'none recorded'}); "
                         "collect statistics again with this quantization config")
