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
from ptqflow.runtime.sessions import OutputCache

log = logging.getLogger(__name__)

FAST, FULL = "fast_bias_correction", "bias_correction"  # a record's "method"
Samples = Callable[[int], list]  # n -> at most n calibration sample dicts (empty when none are at hand)


def statistics_request(config: QuantizationConfig) -> dict:
    """What ``collect_statistics`` observes for ``config`` beyond the planned ranges, as a JSON-ready dict.

    The one place that decides it: collect_statistics gathers exactly this and records it in the plan
    (``plan.collected``), the collect-stats step puts it in its cache key; quantize checks the statistic points
    themselves (``require_collected``)."""
    return {"bias_input_means": bool(config.fast_bias_correction and not config.advanced.disable_bias_correction)}


def guard_samples(prepared: onnx.ModelProto, config: QuantizationConfig,
                  samples: list[dict]) -> tuple[list[dict], int, list[dict]]:
    """(the samples the guard judges on, how many of them are held out, the fitted samples it judges again on when
    the held-out verdict keeps the correction) for ``samples``, the calibration samples at hand; empty when no
    guard runs. Full BiasCorrection fits on the first ``config.bias_correction_samples()`` and the guard judges on
    the ones after them (held out); where too few are at hand, and for FastBiasCorrection, whose input means cover
    the whole calibration subset, it judges on the last ones. Guard samples:
    ``advanced.bias_correction_guard_samples``, or ``..._no_softmax`` for models without a decision
    (Softmax/LogSoftmax) output, whose continuous error settles on fewer samples."""
    adv = config.advanced
    if not adv.bias_correction_guard_samples or adv.disable_bias_correction:
        return [], 0, []
    n_guard = guard_sample_count(config, bool(bc_guard.decision_outputs(prepared)))
    if not n_guard:
        return [], 0, []
    n_fit = 0 if config.fast_bias_correction else config.bias_correction_samples()
    judged = samples[n_fit:n_fit + n_guard] or samples[-n_guard:]
    held_out = len(judged) if samples[n_fit:] and not config.fast_bias_correction else 0
    return judged, held_out, samples[:min(n_fit, n_guard)] if held_out else []


def fallback_config(config: QuantizationConfig) -> QuantizationConfig | None:
    """The full-BiasCorrection config that ``correct_and_guard`` falls back to where the guard reverts
    FastBiasCorrection (``advanced.bias_correction_fallback``; fitted on ``bias_correction_fallback_samples``), or
    None where there is no fallback: full BiasCorrection configured already, bias correction off, or no guard."""
    adv = config.advanced
    if (not config.fast_bias_correction or not adv.bias_correction_fallback or adv.disable_bias_correction
            or not adv.bias_correction_guard_samples):
        return None
    advanced = adv.model_copy(update={"bias_correction_subset_size": adv.bias_correction_fallback_samples})
    return config.model_copy(update={"fast_bias_correction": False, "advanced": advanced})


def correct_and_guard(prepared: onnx.ModelProto, q: onnx.ModelProto, statistics: Statistics,
                      config: QuantizationConfig, samples: list[dict], device: str,
                      references: tuple[list | None, list | None] = (None, None),
                      fp32_outputs: Callable[[list[dict]], list] | None = None,
                      uncorrected: OutputCache | None = None, fp32_means: dict | None = None) -> list[dict]:
    """Run the configured bias correction on ``q`` in place, then the guard (ptqflow.quantization.algorithms
    .bc_guard): when the corrected model's output error against FP32 is higher than without the correction on
    samples the correction was not fitted on (``guard_samples``), ``q`` goes back to its uncorrected biases and
    every record says why. Returns the records, each with the verdict's figures (error_before, error_after,
    held_out). A correction judged on held-out samples is kept only when it does not raise the error on as many
    fitted samples either. ``references``: the FP32 outputs on the guard's samples and on its fitted ones
    (``guard_samples``; None where there are none), taken by a caller before any INT8 model exists (else taken
    here): an FP32 session made beside the INT8 model and its uncorrected copy holds the weights once more than the
    prepared model does (for a model over 2 GB, the step's peak: bench/README.md, "Models over 2 GB").
    Where the guard reverts FastBiasCorrection, full BiasCorrection is fitted and judged the same way
    (``fallback_config``; its FP32 references from ``fp32_outputs(samples)`` where given); its records are
    returned where it stays, the fast correction's (reverted, saying why) otherwise. Each record names its
    ``method``. ``uncorrected``: the uncorrected model's outputs (runtime.sessions.OutputCache over a copy of ``q``
    as it came), which the fallback's verdicts share with the fast correction's: its fitted samples are among
    the ones the fast correction was judged on, and the uncorrected model is run on each sample once.
    ``fp32_means``: full BiasCorrection's FP32 output means, kept for a later ``reapply`` (a dict the caller
    holds; bias_correction.apply_bias_correction)."""
    adv = config.advanced
    if uncorrected is None and adv.bias_correction_guard_samples and not adv.disable_bias_correction:
        copy = onnx.ModelProto()
        copy.CopyFrom(q)
        uncorrected = OutputCache(copy, device)
    n_fit = 0 if config.fast_bias_correction else config.bias_correction_samples()
    records = correct_biases(prepared, q, statistics, config, samples[:n_fit], device, fp32_means)
    if uncorrected is None or not any(r.get("applied") for r in records):
        return records
    guard, held_out, fitted = guard_samples(prepared, config, samples)
    if not guard:
        if guard_sample_count(config, bool(bc_guard.decision_outputs(prepared))):
            log.info("bias correction guard skipped: no calibration samples at hand")
        return records
    def judge(judged: list[dict], k: int) -> tuple[bool, float, float]:
        return bc_guard.judge(prepared, uncorrected.model, q, judged, device,
                              tie_weight=adv.bias_correction_guard_tie_weight, fp32_outputs=references[k],
                              uncorrected_outputs=uncorrected(judged))

    if guard_verdict(judge, records, guard, held_out, fitted):
        return records
    q.CopyFrom(uncorrected.model)
    full = fallback_config(config)
    judged, _, fitted_full = guard_samples(prepared, full, samples) if full is not None else ([], 0, [])
    uncorrected.keep(fitted_full, one_at_a_time=False)  # of the outputs taken, the fallback judges on these again
    if not judged or not samples[:full.bias_correction_samples()]:
        return records
    refs = ((fp32_outputs(judged), fp32_outputs(fitted_full) if fitted_full else None) if fp32_outputs is not None
            else (None, None))
    log.info("FastBiasCorrection reverted: full BiasCorrection fitted on %d calibration samples and judged instead",
             full.bias_correction_samples())
    records_full = correct_and_guard(prepared, q, statistics, full, samples, device, refs, uncorrected=uncorrected,
                                     fp32_means=fp32_means)
    if any(r.get("applied") for r in records_full):
        return records_full
    return fallback_reverted(records)


def fallback_reverted(records: list[dict]) -> list[dict]:
    """The fast correction's reverted ``records``, each saying that the full one was tried and reverted too."""
    for r in records:
        if r.get("reason") and not r.get("applied"):
            r["fallback"] = "full BiasCorrection also raised the output error: reverted too"
    return records


def guard_verdict(judge: Callable[[list[dict], int], bc_guard.Verdict], records: list[dict],
                  guard: list[dict], held_out: int, fitted: list[dict]) -> bool:
    """Whether the correction stays, from ``judge(samples, k)`` (bc_guard.Verdict; ``k`` 0 for the guard's
    samples, 1 for the fitted ones) on ``guard_samples``' split; the verdict goes into ``records``
    (report_guard). Either backend's judge."""
    found = judge(guard, 0)
    if found.keep and held_out:
        # Never hurts: a correction kept on held-out samples must not raise the error on the ones it was fitted on
        # either (on a few dozen samples one verdict alone is noisy: PP-OCR cls, full BiasCorrection kept on 32
        # held-out samples, lost 1 point of validation accuracy; the fitted samples reverted it).
        fit = judge(fitted, 1)
        if not fit.keep:
            held_out, found, guard = 0, fit, fitted
    report_guard(records, found, len(guard), held_out)
    return found.keep


def report_guard(records: list[dict], found: bc_guard.Verdict, n: int, held_out: int = 0) -> None:
    """Log the guard's verdict ``found`` on ``n`` samples (``held_out`` of them not fitted on); every applied
    record gets the verdict's figures (error_before, error_after, held_out, and on how many samples the error fell
    and rose) and, when it reverts, says why."""
    where = f"{held_out} held-out" if held_out else f"{n} fitted"
    log.info("bias correction %s: model output error on %s calibration samples %.4g without, %.4g with it "
             "(lower on %d, higher on %d)", "kept" if found.keep else "reverted", where, found.before, found.after,
             found.lower, found.higher)
    for r in records:
        if r.get("applied"):
            r.update(error_before=found.before, error_after=found.after, held_out=held_out,
                     samples_lower=found.lower, samples_higher=found.higher)
            if not found.keep:
                r["applied"] = False
                r["reason"] = found.why(where)


def guard_sample_count(config: QuantizationConfig, has_decision_outputs: bool) -> int:
    """How many calibration samples the guard judges on: ``advanced.bias_correction_guard_samples`` for a model
    with a decision (Softmax/LogSoftmax) output, else ``..._no_softmax`` (0: no guard)."""
    adv = config.advanced
    return adv.bias_correction_guard_samples if has_decision_outputs else adv.bias_correction_guard_samples_no_softmax


def reapply(prepared: onnx.ModelProto, q: onnx.ModelProto, statistics: Statistics, config: QuantizationConfig,
            samples: list[dict], device: str, verdict: list[dict], fp32_means: dict | None = None) -> list[dict]:
    """Bias correction on ``q`` (the plan written again) as ``verdict`` (correct_and_guard's records) decided:
    corrected again where the guard kept the correction (with the guard's figures), left as it is where it
    reverted it or nothing was corrected. Returns the records. ``fp32_means``: as ``correct_and_guard`` kept them."""
    if not any(r.get("applied") for r in verdict):
        return verdict
    config = verdict_config(config, verdict)
    n_fit = 0 if config.fast_bias_correction else config.bias_correction_samples()
    return with_verdict(correct_biases(prepared, q, statistics, config, samples[:n_fit], device, fp32_means),
                        verdict)


def verdict_config(config: QuantizationConfig, verdict: list[dict]) -> QuantizationConfig:
    """The config of the correction the guard kept in ``verdict``: the fallback's full BiasCorrection where its
    applied records name it (``method``), else ``config``; what a plan written again is corrected with."""
    if config.fast_bias_correction and any(r.get("applied") and r.get("method") == FULL for r in verdict):
        return fallback_config(config) or config
    return config


def with_verdict(records: list[dict], verdict: list[dict]) -> list[dict]:
    """``records`` (a correction made again) with the guard's figures of ``verdict`` on each applied layer."""
    guard = next((r for r in verdict if "error_before" in r), {})
    for r in records:
        if r.get("applied") and guard:
            r.update({k: guard[k] for k in ("error_before", "error_after", "held_out")})
    return records


def correct_biases(prepared: onnx.ModelProto, q: onnx.ModelProto, statistics: Statistics,
                   config: QuantizationConfig, samples: list[dict], device: str,
                   fp32_means: dict | None = None) -> list[dict]:
    """Run the configured bias correction on ``q`` in place (full BiasCorrection fits on ``samples``, its FP32
    output means kept in ``fp32_means`` where given); returns its per-layer records."""
    if config.advanced.disable_bias_correction:
        return []
    layers = planned_bias_layers(prepared, statistics.plan)
    if not layers:
        return []
    threshold = config.advanced.bias_correction_threshold
    if config.fast_bias_correction:
        require_collected(statistics, fast_bias_correction.statistic_points(layers),
                          "FastBiasCorrection's per-channel input means")
        records = fast_bias_correction.apply_fast_bias_correction(
            q, layers, statistics.of(fast_bias_correction.FAST_BIAS_CORRECTION), {}, threshold=threshold,
            fp32_model=prepared, device=device)
        return [{**r, "method": FAST} for r in records]
    calibration = samples
    if not calibration:
        raise InputError("full bias correction (fast_bias_correction=False) needs the calibration dataset")
    records = bias_correction.apply_bias_correction(prepared, q, layers, calibration, threshold=threshold,
                                                    device=device, runtime=config.advanced.statistics_runtime,
                                                    fp32_means=fp32_means)
    return [{**r, "method": FULL} for r in records]


def planned_bias_layers(graph: onnx.ModelProto, plan) -> list:
    """The bias layers of ``graph`` (an ONNX model or an OpenVINO model's view) that ``plan`` corrects."""
    wanted = set(plan.bias_layers)
    return [layer for layer in find_bias_layers(graph) if layer.name in wanted]


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
