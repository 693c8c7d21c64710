"""Accuracy control in validate (``validation.accuracy_control``): when the gate fails on accuracy or fidelity,
run ``ptqflow.accuracy_control.restore`` (the loop of ``quantize_with_accuracy_control``) on the validation split
with the gate's own figures, and publish the INT8 model it found when the gate then passes.

The loop quantizes again from the run's statistics artifact (its plan and values; the quantize-stage passes run
as in the quantize step, so its first model is the quantize step's), ranks the activation quantizers on
``ranking_samples`` validation samples by the output error each adds and reverts them in that order. Its target
is the gate: the drop it minimises is the worst shortfall of the gate's accuracy and fidelity thresholds
(``max_accuracy_drop``, ``min_cosine``, ``min_sqnr_db``, ``min_top1_agreement``), each as a fraction of
max(1, |threshold|), 0 when all of them hold; ``min_speedup`` is checked on the final model only (a revert costs
speed, the report says how much). The model is published as ``<validate output>/quantized`` (model.onnx and
summary.json, listed with their digests in validate's manifest, which is the artifact's one manifest: staging
copies what a manifest lists) only when the whole gate passes with it; export-ir and publish read it from there
(``int8_artifact``).
"""

from __future__ import annotations

import math
from itertools import islice
from pathlib import Path

import onnx

from ptqflow.config import PipelineConfig
from ptqflow.errors import ConfigError, InputError
from ptqflow.logs import get_logger

log = get_logger("validate")

CONTROLLED = "quantized"  # the validate artifact's subdirectory holding the accuracy-controlled INT8 model
CONTROLLED_MODEL = f"{CONTROLLED}/model.onnx"  # its model, as validate's manifest lists it


def int8_artifact(quantized: Path, report: Path | None) -> Path:
    """The directory of the run's INT8 model: validate's accuracy-controlled model (``report/quantized``) when
    validate published one, else the quantize step's artifact."""
    if report is not None and (Path(report) / CONTROLLED_MODEL).is_file():
        return Path(report) / CONTROLLED
    return Path(quantized)


def check_config(cfg: PipelineConfig, model_path: Path) -> None:
    """ConfigError when accuracy control is enabled for a run it cannot serve: dynamic quantization (no statistics
    to quantize again from) or an OpenVINO IR model (the loop quantizes ONNX graphs)."""
    if not cfg.quantization.static:
        raise ConfigError("validation.accuracy_control.enabled needs static quantization (quantization.static: "
                          "true): it quantizes again from the run's statistics; disable one of them")
    if model_path.suffix != ".onnx":
        raise ConfigError(f"validation.accuracy_control.enabled: the model is {model_path.name}, accuracy control "
                          "quantizes ONNX models only; disable it for an OpenVINO IR")


def failed_on_accuracy(checks: list[dict]) -> bool:
    """Whether a gate threshold other than min_speedup failed (what accuracy control can restore)."""
    return any(not c["passed"] for c in checks if not c["name"].startswith("min_speedup"))


def shortfall(checks: list[dict]) -> float:
    """The loop's drop: 0 when every check holds, else the worst failed check's margin as a fraction of
    max(1, |threshold|) (positive)."""
    failed = [-c["margin"] / max(1.0, abs(c["threshold"])) for c in checks if not c["passed"]]
    return max(failed) if failed else 0.0


def restore(inputs: dict[str, Path], fp32_path: Path, cfg: PipelineConfig, checks: list[dict], gate_checks):
    """Run the accuracy-control loop for a validation whose gate ``checks`` failed on accuracy. ``gate_checks(model)``
    evaluates a candidate INT8 ModelProto on the validation split and returns its gate checks without min_speedup.
    Returns (AccuracyControlResult, the checks of its model)."""
    from ptqflow.accuracy_control import Target, restore as restore_loop
    from ptqflow.config import DropType
    from ptqflow.data import iter_samples
    from ptqflow.pipeline.steps.validate import iter_validation
    from ptqflow.quantization import engine
    from ptqflow.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, RestoreMode
    from ptqflow.quantization.statistics import Statistics

    ac = cfg.validation.accuracy_control
    if "statistics" not in inputs:
        raise InputError("validate: validation.accuracy_control.enabled needs the statistics artifact "
                         "(--in-statistics, collect-stats' output)")
    stats = Statistics.load(Path(inputs["statistics"]))
    calibration = Path(inputs["calibration"])
    prepared = engine.prepare_for(fp32_path, stats, cfg.quantization)
    watched = next(c for c in checks if not c["passed"] and not c["name"].startswith("min_speedup"))
    measured: dict[int, list[dict]] = {}

    def measure(model: onnx.ModelProto, what: str) -> tuple[float, float]:
        found = gate_checks(model)
        measured[id(model)] = found
        value = next((c["value"] for c in found if c["name"] == watched["name"]), math.nan)
        log.info("accuracy control: %s: %s", what, ", ".join(f"{c['name']} {c['value']:.6g}" for c in found))
        return value, shortfall(found)

    params = AdvancedAccuracyRestorerParameters(max_num_iterations=ac.max_iterations,
                                                restore_mode=RestoreMode(ac.restore_mode))
    result = restore_loop(
        prepared, stats, cfg.quantization, lambda n: list(islice(iter_samples(calibration, "calibration"), n)),
        cfg.device.value, measure,
        lambda _: [s for s, _ in islice(iter_validation(calibration), ac.ranking_samples)],
        Target(math.nan, 0.0, DropType.ABSOLUTE), params, max_time_s=ac.max_time_s)
    return result, measured[id(result.model)]


def summary(result, checks_before: list[dict], checks_after: list[dict], speed_before: dict, speed_after: dict,
            seconds: float, published: bool) -> dict:
    """report.json's ``accuracy_control`` section: the gate figures before and after, what was reverted (with
    the layers that went to float with it), each revert tried, the speed cost and whether the model was
    published."""
    def speedups(speed: dict) -> dict:
        return {k: v.get("speedup") for k, v in speed.items() if isinstance(v, dict) and "speedup" in v}

    before, after = speedups(speed_before), speedups(speed_after)
    return {
        "met": result.met, "published": published, "stopped": result.stopped, "seconds": round(seconds, 3),
        "gate_before": checks_before, "gate_after": checks_after,
        "reverted": [{"tensor": s.tensor, "harm": s.harm, "layers": s.layers} for s in result.reverted],
        "steps": [{"tensor": s.tensor, "harm": s.harm, "layers": s.layers, "value": s.metric, "shortfall": s.drop,
                   "kept": s.kept, "iteration": s.iteration} for s in result.steps],
        "ranked": len(result.ranking),
        "speedup_before": before, "speedup_after": after,
        "speed_cost": {k: before[k] - after[k] for k in before if after.get(k) is not None and before[k] is not None},
    }


def publish_model(out: Path, result) -> dict:
    """Write the accuracy-controlled model as ``out/quantized`` (model.onnx, and summary.json as the quantize step
    writes it), before validate's manifest, which then lists both; returns the summary's counts (quantize's
    manifest metrics)."""
    import json

    from ptqflow.pipeline.steps.quantize import summary_metrics, with_readers
    from ptqflow.runtime.model_files import save_model

    dest = Path(out) / CONTROLLED
    dest.mkdir(parents=True, exist_ok=True)
    save_model(result.model, dest / "model.onnx")
    layers = with_readers(list(result.layers), result.model)
    (dest / "summary.json").write_text(json.dumps({"layers": layers}, indent=2, default=str), encoding="utf-8")
    return summary_metrics(layers)
