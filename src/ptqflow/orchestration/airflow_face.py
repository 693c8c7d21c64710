"""Builds ptqflow's Airflow 3 DAG (dags/ptqflow_quantize.py only calls ``build_dag``).

Two modes, picked at parse time by env var PTQFLOW_AIRFLOW_MODE or Airflow Variable ``ptqflow_mode``:

- ``local``: each step is a @task calling ``ptqflow.pipeline.runner.run_step`` in the worker. A ptqflow error that a
  retry cannot fix (bad config/input, failed gate, missing device) becomes AirflowFailException (no
  retries); StorageError and unexpected errors are retried.
- ``kubernetes``: each step is a pod running ``ptqflow <step> --in-... --out ... --set ...`` in ptqflow's
  image, placed per ``ptqflow.orchestration.pod_placement`` for the device in PTQFLOW_AIRFLOW_DEVICE / Variable
  ``ptqflow_device``. The container's exit code is mapped back: 2, 3, 4, 6 fail at once, others retry.

Fan-outs (``ptqflow.orchestration.FAN_OUTS``): collect-stats over DAG param ``statistics_shards`` and validate over
``validation_shards``, built by one helper. With N = 1 (the default) the step is one task as it always was; with
N > 1 the gate ``<prefix>_unsharded`` (statistics_unsharded, validation_unsharded) skips it, ``<step>_shard``
(collect_stats_shard, validate_shard) runs once per shard (dynamic task mapping over the list the task named after
the param computes from it, each writing ``<output>/<step>-shards/<i>-of-<N>``) and the merge task (merge_stats,
merge_validation) writes ``<output>/<step>``, where later steps read it either way: they run after whichever of the
step and its merge ran. merge_validation decides the gate, so a failed gate fails the run as validate's does.

Artifacts live at ``<output>/<step>`` (S3 or a shared path); XCom carries only URIs and digests. The final
INT8 ONNX model and OpenVINO IR are published as Assets by the ``publish`` task after export-ir. When the
run's config has a ``registry`` section, the ``publish_registry`` task runs ptqflow's publish step (the INT8
version registered in MLflow); without one it is skipped.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, Asset, Param, TriggerRule, task

from ptqflow.orchestration import (AFTER, CONDITIONAL, FAN_OUTS, MERGES, OPTIONAL_STEP_INPUTS, PRODUCERS, STEP_INPUTS, FanOut,
                                   earlier_steps, parse_shard, shard_labels, shard_output_uri, step_output_uri)
from ptqflow.orchestration.params import param_specs

INT8_ONNX = Asset(name="ptqflow_int8_onnx", uri="ptqflow://artifacts/int8-onnx")
INT8_IR = Asset(name="ptqflow_int8_openvino_ir", uri="ptqflow://artifacts/int8-openvino-ir")
MODES = ("local", "kubernetes")
REGISTRY_TASK = "publish_registry"  # the publish step's task (the Assets' task is "publish")
DEFAULT_RETRIES = 2

DOC_MD = """
### ptqflow: post-training INT8 quantization

Six steps, each writing `<output>/<step>/` with a `manifest.json`: fetch-model, build-calibration,
collect-stats, quantize, validate (gate), export-ir. Reruns skip steps whose identical result is already
at the output. Trigger with conf such as `{"model": "s3://b/m.onnx", "data": "s3://b/images/",
"output": "s3://b/runs/r1", "preset": "mixed"}`. Parameters come from ptqflow's config schema.

Retries: storage errors (exit 5) are retried; bad config (2), bad input (3), failed gate (4) and an
unavailable device (6) fail the task at once. On success the INT8 ONNX model and IR are published as the
Assets `ptqflow_int8_onnx` and `ptqflow_int8_openvino_ir` (event extra: uri, digest).

Accuracy control (`accuracy_control`, `accuracy_control_max_iterations`): a gate failing on accuracy or
fidelity makes validate revert quantizers to float until it passes; the model it found,
`<output>/validate/quantized/`, is then the one export-ir converts and the INT8 Asset names. It needs
`validation_shards` 1.

Shards: `statistics_shards` N > 1 runs collect-stats as N mapped tasks (`collect_stats_shard`, each on 1/N of the
calibration samples, writing `<output>/collect-stats-shards/<i>-of-<N>/`) and `merge_stats`, which writes
`<output>/collect-stats/` (the same statistics one task collects); `validation_shards` does the same for validate
(`validate_shard`, `merge_validation` writing `<output>/validate/` and deciding the gate). With 1, the step's one
task runs alone.

Model registry: with a `registry` section in `config` (`{"tracking_uri": ..., "target_name": ..., "alias": ...}`)
and a model such as `models:/resnet50/3`, `publish_registry` registers the gated INT8 model as a new version
(default name `<model>-int8`) with its lineage tags; without that section the task is skipped.
"""


def setting(name: str, default: str) -> str:
    """A face setting from env var PTQFLOW_AIRFLOW_<NAME>, else Airflow Variable ptqflow_<name>, else default."""
    value = os.environ.get(f"PTQFLOW_AIRFLOW_{name.upper()}")
    if value:
        return value
    try:
        from airflow.sdk import Variable

        return Variable.get(f"ptqflow_{name}", default=default)
    except Exception:  # no metadata DB / API while parsing: the default applies
        return default


def dag_params(device: str | None = None) -> dict[str, Param]:
    """Airflow Params for every exposed config field (types, enums, defaults from the schema) plus ``force``."""
    params = {}
    for name, spec in param_specs().items():
        default = device if name == "device" and device else spec["default"]
        kwargs = {"type": spec["type"], "description": spec["description"]}
        if spec["enum"]:
            kwargs["enum"] = spec["enum"] + ([None] if "null" in spec["type"] else [])
        params[name] = Param(default, **kwargs)
    params["config"] = Param({}, type="object", description="Base ptqflow config (nested, as the YAML file); "
                             "the parameters above override it.")
    params["force"] = Param(False, type="boolean", description="Rerun steps even if identical results exist.")
    for fan in FAN_OUTS.values():
        params[fan.param] = Param(1, type="integer", minimum=1, description=fan.description)
    return params


def task_id(step: str) -> str:
    """The task id of ``step``'s one task: its name with underscores (collect_stats)."""
    return step.replace("-", "_")


def shard_task_id(fan: FanOut) -> str:
    """The task id of ``fan``'s mapped shard task: collect_stats_shard, validate_shard."""
    return f"{task_id(fan.step)}_shard"


def gates(fan: FanOut):
    """``fan``'s gate of the one-task step and its shard-list task: (``<prefix>_unsharded``, ``<param>``). A
    CONDITIONAL step's both come after ``<prefix>_needed``, which skips them (and so the step, its shards and merge)
    when the run's config has ptqflow run skip the step."""
    pair = (unsharded.override(task_id=f"{fan.prefix}_unsharded")(fan.param),
            shard_list.override(task_id=fan.param)(fan.param))
    if fan.step in CONDITIONAL:
        needed.override(task_id=f"{fan.prefix}_needed")(fan.step) >> list(pair)
    return pair


def build_dag(dag_id: str = "ptqflow_quantize", mode: str | None = None, device: str | None = None) -> DAG:
    """The ptqflow DAG in ``mode`` (local or kubernetes; default from settings)."""
    mode = mode or setting("mode", "local")
    if mode not in MODES:
        raise ValueError(f"ptqflow DAG mode {mode!r}: expected one of {', '.join(MODES)}")
    device = device or setting("device", "cpu")
    with DAG(dag_id=dag_id, doc_md=DOC_MD, schedule=None, catchup=False, params=dag_params(device),
             tags=["ptqflow", mode], default_args={"retries": DEFAULT_RETRIES,
                                                   "retry_delay": timedelta(seconds=30)},
             render_template_as_native_obj=False) as dag:
        if mode == "local":
            done = _local_tasks()
            last = done["export-ir"]
            # Its inputs' XComs order it after export-ir (and so after the gate); the report comes from validate or
            # merge_validation, whichever ran.
            local_step.override(task_id=REGISTRY_TASK, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)(
                "publish", {name: done[PRODUCERS[name]] for name in OPTIONAL_STEP_INPUTS["publish"]})
        else:
            from ptqflow.orchestration.airflow_k8s import pod_operator, pod_tasks

            last = pod_tasks(device, gates)
            last >> registry_configured() >> pod_operator("publish", device, task_id=REGISTRY_TASK)
        last >> publish()
    return dag


def _local_tasks() -> dict:
    """Wire the six @task steps, the fan-out steps through ``_fan_out_local``; returns {step: task, or for a fan-out
    [one task, merge] (whichever ran: the other is skipped and its XCom resolves to None)}."""
    done = {}
    for step, inputs in STEP_INPUTS.items():
        upstream = {name: done[PRODUCERS[name]] for name in inputs}
        # After a fan-out: run after whichever of its one task and its merge ran (the other is skipped).
        after = {"trigger_rule": TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS} if earlier_steps(step) & set(FAN_OUTS) else {}
        if step in FAN_OUTS:
            done[step] = _fan_out_local(FAN_OUTS[step], upstream, after)
        else:
            done[step] = local_step.override(task_id=task_id(step), **after)(step, upstream)
        for earlier in AFTER.get(step, ()):
            done[earlier] >> done[step]
    return done


def _fan_out_local(fan: FanOut, upstream: dict, after: dict) -> list:
    """``fan``'s tasks: the one-task step behind its gate, the shard task mapped over the shard list, their merge;
    returns [one task, merge]."""
    unsharded_gate, shards = gates(fan)
    parts = local_step.override(task_id=shard_task_id(fan), map_index_template="{{ task.op_kwargs['shard'] }}",
                                **after).partial(step=fan.step, upstream=upstream).expand(shard=shards)
    merged = merge_local.override(task_id=task_id(fan.merge))(fan.merge, parts)
    whole = local_step.override(task_id=task_id(fan.step), **after)(fan.step, upstream)
    unsharded_gate >> whole
    return [whole, merged]


@task
def shard_list(param: str, **context) -> list[str]:
    """The shards of the run's ``param`` (statistics_shards, validation_shards), ``["0/N", ..., "N-1/N"]``, or [] for
    1 (then the mapped shard task has nothing to run and is skipped, and with it the merge)."""
    from airflow.sdk.exceptions import AirflowFailException

    from ptqflow.errors import ConfigError

    try:
        return shard_labels(context["params"].get(param, 1), param)
    except ConfigError as err:
        raise AirflowFailException(str(err)) from err


@task.short_circuit(ignore_downstream_trigger_rules=False)
def unsharded(param: str, **context) -> bool:
    """Whether the fan-out of run parameter ``param`` runs its step as one task (``param`` is 1); else the one task
    is skipped (only it: the later steps' trigger rule lets them run after the merge instead)."""
    return context["params"].get(param, 1) == 1


@task.short_circuit(ignore_downstream_trigger_rules=False)
def needed(step: str, **context) -> bool:
    """Whether ``step`` runs for the run's config (``pipeline.steps.skipped``: collect-stats is skipped for dynamic
    quantization, ``static: false``); else its gate and shard list are skipped, so the step, its shards and merge
    are, and later steps (trigger rule none_failed_min_one_success) run without its artifact."""
    from airflow.sdk.exceptions import AirflowFailException

    from ptqflow.errors import PtqflowError
    from ptqflow.orchestration.params import config_from_params
    from ptqflow.pipeline.steps import skipped

    params = context["params"]
    try:
        return not skipped(step, config_from_params(params, params.get("config") or {}))
    except PtqflowError as err:
        raise AirflowFailException(f"{step}: {type(err).__name__} (exit {err.exit_code}): {err}") from err


@task.short_circuit(task_id="registry_configured")
def registry_configured(**context) -> bool:
    """Whether the run's config has a ``registry`` section (else the publish pod is skipped)."""
    return bool((context["params"].get("config") or {}).get("registry"))


@task
def local_step(step: str, upstream: dict, shard: str = "", **context) -> dict:
    """Run one step in this worker (a fan-out step: only ``shard`` "I/N" of its split when given);
    returns {"uri", "digest"} of its output artifact. An upstream value may be a list of alternatives: the first
    that is not None (the one of its tasks that ran) is used."""
    from airflow.sdk.exceptions import AirflowFailException

    from ptqflow.errors import PtqflowError
    from ptqflow.orchestration.params import config_from_params
    from ptqflow.pipeline.runner import run_step
    from ptqflow.pipeline.steps import inputs_for

    params = context["params"]
    try:
        cfg = config_from_params(params, params.get("config") or {})
        if step == "publish" and cfg.registry is None:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException("no 'registry' section in the run's config: nothing to publish")
        if not cfg.output:
            raise AirflowFailException("parameter 'output' (output prefix URI) is required")
        part = parse_shard(shard)
        out = shard_output_uri(cfg.output, step, part) if part else step_output_uri(cfg.output, step)
        # dynamic quantization reads no statistics (their tasks were skipped)
        uris = {n: _ran(r)["uri"] for n, r in upstream.items() if n in inputs_for(step, cfg)}
        manifest = run_step(step, uris, out, cfg, force=bool(params.get("force")), shard=part)
    except PtqflowError as err:
        if err.retryable:
            raise
        raise AirflowFailException(f"{step}: {type(err).__name__} (exit {err.exit_code}): {err}") from err
    return {"uri": out, "digest": manifest.digest}


def _ran(result):
    """An upstream task's result, or of a list of alternatives the first that is not None."""
    if isinstance(result, dict):
        return result
    return next(r for r in result if r is not None)


@task
def merge_local(merge: str, partials, **context) -> dict:
    """Run ``merge`` (merge-stats, merge-validation) on the shards' partials into ``<output>/<step>``, the one
    step's artifact; returns its {"uri", "digest"}. merge-validation's failed gate fails the task without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from ptqflow.errors import PtqflowError
    from ptqflow.orchestration.params import config_from_params
    from ptqflow.pipeline import runner

    params = context["params"]
    run = {"merge-stats": runner.merge_stats, "merge-validation": runner.merge_validation}[merge]
    try:
        cfg = config_from_params(params, params.get("config") or {})
        out = step_output_uri(cfg.output, MERGES[merge].step)
        manifest = run([p["uri"] for p in partials], out, cfg, force=bool(params.get("force")))
    except PtqflowError as err:
        if err.retryable:
            raise
        raise AirflowFailException(f"{merge}: {type(err).__name__} (exit {err.exit_code}): {err}") from err
    return {"uri": out, "digest": manifest.digest}


@task(outlets=[INT8_ONNX, INT8_IR], retries=DEFAULT_RETRIES)
def publish(**context) -> dict:
    """Read the INT8 model's and export-ir's manifests at the output prefix and emit both Asset events with
    {uri, digest} extras; returns those extras. The INT8 model is validate's accuracy-controlled one
    (``<output>/validate/quantized``) when validate published one, else quantize's."""
    from ptqflow.artifacts import storage
    from ptqflow.pipeline.steps.accuracy_gate import CONTROLLED, CONTROLLED_MODEL

    output = context["params"]["output"]
    extras = {}
    # validate's manifest lists the accuracy-controlled model when it published one (its digest stands for it)
    validated = storage.read_remote_manifest(step_output_uri(output, "validate"))
    controlled = validated is not None and CONTROLLED_MODEL in validated.outputs
    int8 = step_output_uri(output, "validate") if controlled else step_output_uri(output, "quantize")
    for asset, uri in ((INT8_ONNX, int8), (INT8_IR, step_output_uri(output, "export-ir"))):
        manifest = storage.read_remote_manifest(uri)
        if manifest is None:
            raise RuntimeError(f"publish: no manifest at {uri}")
        extras[asset.name] = {"uri": f"{uri}/{CONTROLLED}" if controlled and asset is INT8_ONNX else uri,
                              "digest": manifest.digest}
        context["outlet_events"][asset].extra = extras[asset.name]
    return extras
