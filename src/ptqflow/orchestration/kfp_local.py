"""Lightweight (Python-function) versions of ptqflow's KFP components, for ``kfp.local`` and clusters that
run them in ptqflow's image. Each calls ``ptqflow.orchestration.kfp_runtime`` on the artifacts' ``.path``.

KFP ships each function's source into the container, so every import happens inside the body.
``resolve_config``'s parameters must match ``kfp_face.pipeline_params()`` (a test checks it).
"""


from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from ptqflow.orchestration.images import image

BASE = image("cpu")


@dsl.component(base_image=BASE)
def resolve_config(model: str, data: str, output: str, preset: str, target_device: str, subset_size: int,
                   fast_bias_correction: bool, quant_format: str, target_runtime: str, static: bool,
                   max_accuracy_drop: str, min_cosine: str, min_sqnr_db: str,
                   min_speedup: str, accuracy_control: bool, accuracy_control_max_iterations: int, device: str,
                   base_config: str, config: Output[Artifact],
                   collect_stats_needed: dsl.OutputPath(str)):
    """Validate the run parameters and write the config JSON every step reads, and whether collect-stats runs for
    it ("true"/"false": not for dynamic quantization)."""
    from ptqflow.orchestration.kfp_runtime import resolve_config as resolve
    from ptqflow.orchestration.params import EXPOSED

    values = dict(locals())
    resolve(config.path, {EXPOSED[k]: v for k, v in values.items() if k in EXPOSED}, base_config,
            {"collect-stats": collect_stats_needed})


@dsl.component(base_image=BASE)
def fetch_model_local(config: Input[Artifact], model: Output[Model]) -> str:
    """fetch-model; returns the artifact digest."""
    from ptqflow.orchestration.kfp_runtime import run_step_on_paths

    return run_step_on_paths("fetch-model", {}, model.path, config.path)["digest"]


@dsl.component(base_image=BASE)
def build_calibration_local(config: Input[Artifact], model: Input[Model], calibration: Output[Dataset]) -> str:
    """build-calibration; returns the artifact digest."""
    from ptqflow.orchestration.kfp_runtime import run_step_on_paths

    return run_step_on_paths("build-calibration", {"model": model.path}, calibration.path, config.path)["digest"]


@dsl.component(base_image=BASE)
def shard_items_local(shards: int, param: str) -> list:
    """A fan-out loop's items (``param``: statistics_shards, validation_shards): "I/N" per shard, or [""] (the
    whole split) for 1."""
    from ptqflow.orchestration.kfp_runtime import shard_items

    return shard_items(shards, param)


@dsl.component(base_image=BASE)
def collect_stats_local(config: Input[Artifact], model: Input[Model], calibration: Input[Dataset], shard: str,
                        statistics: Output[Artifact]) -> str:
    """collect-stats on ``shard`` "I/N" of the calibration split ("": all of it); returns the artifact digest."""
    from ptqflow.orchestration.kfp_runtime import run_step_on_paths

    inputs = {"model": model.path, "calibration": calibration.path}
    return run_step_on_paths("collect-stats", inputs, statistics.path, config.path, shard)["digest"]


@dsl.component(base_image=BASE)
def merge_stats_local(config: Input[Artifact], partials: Input[List[Artifact]], statistics: Output[Artifact]) -> str:
    """merge-stats of the loop's collect-stats outputs (one whole-split artifact is passed on); returns the
    digest."""
    from ptqflow.orchestration.kfp_runtime import merge_on_paths

    return merge_on_paths("merge-stats", [p.path for p in partials], statistics.path, config.path)["digest"]


@dsl.component(base_image=BASE)
def quantize_local(config: Input[Artifact], model: Input[Model], calibration: Input[Dataset],
                   quantized: Output[Model], statistics: Input[Artifact] = None) -> str:
    """quantize (without ``statistics`` for dynamic quantization, whose branch skips collect-stats); returns the
    artifact digest."""
    from ptqflow.orchestration.kfp_runtime import run_step_on_paths

    inputs = {"model": model.path, "calibration": calibration.path}
    if statistics is not None:
        inputs["statistics"] = statistics.path
    return run_step_on_paths("quantize", inputs, quantized.path, config.path)["digest"]


@dsl.component(base_image=BASE)
def validate_local(config: Input[Artifact], model: Input[Model], quantized: Input[Model],
                   calibration: Input[Dataset], report: Output[Artifact], statistics: Input[Artifact] = None,
                   shard: str = "") -> str:
    """validate on ``shard`` "I/N" of the validation split (partial results; "": the whole split, the report and
    its gate; ``statistics``: what accuracy control quantizes again from, absent for dynamic quantization); returns
    the artifact digest."""
    from ptqflow.orchestration.kfp_runtime import run_step_on_paths

    inputs = {"model": model.path, "quantized": quantized.path, "calibration": calibration.path}
    if statistics is not None:
        inputs["statistics"] = statistics.path
    return run_step_on_paths("validate", inputs, report.path, config.path, shard)["digest"]


@dsl.component(base_image=BASE)
def merge_validation_local(config: Input[Artifact], partials: Input[List[Artifact]], report: Output[Artifact],
                           metrics: Output[Metrics], html: Output[HTML]) -> str:
    """merge-validation of the loop's validate outputs (one whole-split report is passed on): the report artifact,
    its numbers as KFP Metrics, report.html as HTML; fails when the gate fails. Returns the digest."""
    from ptqflow.orchestration.kfp_runtime import copy_report_html, merge_on_paths, numeric_metrics

    result = merge_on_paths("merge-validation", [p.path for p in partials], report.path, config.path)
    for name, value in numeric_metrics(result["metrics"]).items():
        metrics.log_metric(name, value)
    copy_report_html(report.path, html.path)
    return result["digest"]


@dsl.component(base_image=BASE)
def export_ir_local(config: Input[Artifact], quantized: Input[Model], model: Input[Model],
                    calibration: Input[Dataset], report: Input[Artifact], ir: Output[Model]) -> str:
    """export-ir of the run's INT8 model (validate's accuracy-controlled one in ``report`` when it published one);
    returns the artifact digest."""
    from ptqflow.orchestration.kfp_runtime import run_step_on_paths

    inputs = {"quantized": quantized.path, "model": model.path, "calibration": calibration.path,
              "report": report.path}
    return run_step_on_paths("export-ir", inputs, ir.path, config.path)["digest"]


@dsl.component(base_image=BASE)
def publish_local(config: Input[Artifact], model: Input[Model], quantized: Input[Model], report: Input[Artifact],
                  ir: Input[Model], registration: Output[Artifact]) -> str:
    """publish (when the config has a registry section, else skipped); returns the outcome as JSON."""
    import json

    from ptqflow.orchestration.kfp_runtime import publish_if_configured

    inputs = {"model": model.path, "quantized": quantized.path, "report": report.path, "ir": ir.path}
    return json.dumps(publish_if_configured(inputs, registration.path, config.path), default=str)


STEP_COMPONENTS = {"fetch-model": fetch_model_local, "build-calibration": build_calibration_local,
                   "collect-stats": collect_stats_local, "quantize": quantize_local,
                   "validate": validate_local, "export-ir": export_ir_local}
# The merge of each fan-out step (ptqflow.orchestration.FAN_OUTS).
MERGE_COMPONENTS = {"collect-stats": merge_stats_local, "validate": merge_validation_local}
