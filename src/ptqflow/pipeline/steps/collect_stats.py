"""collect-stats: run the FP32 model on the calibration shards and save the quantization plan and statistics.

Only the quantization fields that change the statistics are in this step's cache key: switching the
bias-correction mode reruns quantize but reuses these statistics.
"""

from __future__ import annotations

import time
from pathlib import Path


from ptqflow.artifacts import input_digests, reproducible_zip
from ptqflow.artifacts.manifest import Manifest, write_manifest
from ptqflow.config import PipelineConfig, section_dump
from ptqflow.logs import progress
from ptqflow.pipeline.steps import spec
from ptqflow.pipeline.steps.fetch_model import model_file

_SPEC = spec("collect-stats")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs

# Fields read only when the statistics are applied (quantize), never while collecting them. What the
# bias-correction switches change in the collection itself is captured by api.statistics_request, which is in
# the key; tests/test_step_keys.py checks every other field: in the key, or the output stays byte-identical.
_APPLY_ONLY = {"fast_bias_correction"}
_APPLY_ONLY_ADVANCED = {"disable_bias_correction", "bias_correction_subset_size", "bias_correction_fallback",
                        "bias_correction_fallback_samples", "bias_correction_threshold",
                        "bias_correction_guard_samples", "bias_correction_guard_samples_no_softmax",
                        "bias_correction_guard_tie_weight", "safeguard_mixed_precision", "mixed_precision_samples",
                        "mixed_precision_max_float_share", "mixed_precision_min_share",
                        "mixed_precision_target_error", "mixed_precision_max_evals", "range_search",
                        "range_search_samples"}


def config_section(cfg: PipelineConfig) -> dict:
    """The quantization fields that affect statistics, what the collection gathers for them
    (``api.statistics_request``), the execution device, and the saved formats of statistics and plan (a cached
    artifact in an older format is collected again, not handed to a quantize that cannot read it)."""
    from ptqflow.api import statistics_request
    from ptqflow.quantization.plan import PLAN_VERSION
    from ptqflow.quantization.statistics.store import FORMAT

    q = section_dump(cfg.quantization)
    for key in _APPLY_ONLY:
        q.pop(key, None)
    q["advanced"] = {k: v for k, v in q.get("advanced", {}).items() if k not in _APPLY_ONLY_ADVANCED}
    return {"quantization": q, "collects": statistics_request(cfg.quantization), "device": cfg.device.value,
            "formats": {"statistics": FORMAT, "plan": PLAN_VERSION}}


def calibration_samples(calibration: Path, desc: str, limit: int | None = None):
    """The calibration split's samples (input-name -> array dicts) with progress reporting; at most
    ``limit`` of them are expected to be read (the progress total)."""
    from ptqflow.data import iter_samples, read_index

    try:
        total = int(read_index(calibration).get("counts", {}).get("calibration"))
    except Exception:  # the count only sizes the progress bar
        total = None
    if total is not None and limit is not None:
        total = min(total, limit)
    return progress(iter_samples(calibration, "calibration"), total=total, desc=desc)


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig, shard: tuple[int, int] | None = None) -> Manifest:
    """Collect statistics into ``out`` (statistics.npz + plan.json); with ``shard`` (i, n), only shard i of n of
    the calibration split, as partial statistics (partial.npz + partial.json) for merge-stats. Returns the
    manifest."""
    import ptqflow

    start = time.monotonic()
    model = model_file(Path(inputs["model"]))  # a path: preparation loads it once, without a second copy
    if shard is not None:
        return _run_shard(inputs, out, cfg, model, shard, start)
    samples = calibration_samples(Path(inputs["calibration"]), "collect-stats", cfg.quantization.subset_size)
    stats = ptqflow.collect_statistics(model, samples, cfg.quantization, device=cfg.device.value)
    stats.save(out)
    for npz in sorted(Path(out).glob("*.npz")):
        reproducible_zip(npz)  # equal statistics must give equal bytes, so a rerun has the same digest
    metrics = {}
    for attr in ("num_samples", "num_points"):
        if hasattr(stats, attr):
            metrics[attr] = getattr(stats, attr)
    return write_manifest(out, step=NAME, config=config_section(cfg), inputs=input_digests(inputs),
                          metrics=metrics, timings={"total_s": round(time.monotonic() - start, 3)})


def _run_shard(inputs: dict[str, Path], out: Path, cfg: PipelineConfig, model, shard: tuple[int, int],
               start: float) -> Manifest:
    from ptqflow.api import collect_partial_statistics
    from ptqflow.data import read_index

    calibration = Path(inputs["calibration"])
    count = int(read_index(calibration)["counts"]["calibration"])
    samples = calibration_samples(calibration, f"collect-stats {shard[0]}/{shard[1]}", cfg.quantization.subset_size)
    part = collect_partial_statistics(model, samples, cfg.quantization, shard=shard[0], shards=shard[1],
                                      num_samples=count, device=cfg.device.value)
    part.save(out)
    for npz in sorted(Path(out).glob("*.npz")):
        reproducible_zip(npz)
    return write_manifest(out, step=NAME, config=config_section(cfg) | {"shard": f"{shard[0]}/{shard[1]}"},
                          inputs=input_digests(inputs),
                          metrics={"shard": shard[0], "shards": shard[1], "num_samples": part.accumulator.count,
                                   "first_sample": part.start},
                          timings={"total_s": round(time.monotonic() - start, 3)})
