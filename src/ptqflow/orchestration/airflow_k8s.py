"""The kubernetes mode of ptqflow's DAG: one KubernetesPodOperator per step.

Placement (image, node selector, tolerations, affinity, requests/limits) and the S3 and registry Secrets come
from ``ptqflow.orchestration.pod_placement``: the placement file named by PTQFLOW_PLACEMENT_FILE when set (the Helm chart's
ConfigMap), else the built-in table; S3 credentials reach every pod as env vars from the S3 Secret, MLflow's
address and credentials reach the fetch-model and publish pods from the registry Secret (each key optional).
``PtqflowPodOperator`` reads the failed container's exit code and turns ptqflow's do-not-retry codes
(2 config, 3 input, 4 gate, 6 device) into AirflowFailException, so only storage errors (5) and crashes use
the task's retries.

The fan-outs (collect-stats over ``statistics_shards``, validate over ``validation_shards``): ``ShardPodOperator`` is
the step's pod with ``--shard I/N`` and its own output (``<output>/<step>-shards/<i>-of-<N>``), mapped over the run's
shards with the step's placement; ``MergePodOperator`` runs ``ptqflow merge-stats`` or ``ptqflow merge-validation`` on
a CPU node, its ``--in-partials`` filled in when it runs (the number of shards is a run parameter).
"""

from __future__ import annotations

import os

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import models as k8s

from ptqflow.config import PipelineConfig
from ptqflow.orchestration import (FAN_OUTS, MERGES, STEP_INPUTS, earlier_steps, parse_shard, shard_name,
                                   shard_output_uri, shards_uri, step_input_uris)
from ptqflow.orchestration.commands import NO_RETRY_EXIT_CODES, should_retry, step_arguments
from ptqflow.orchestration.images import step_image
from ptqflow.orchestration.params import param_specs
from ptqflow.orchestration.pod_placement import PlacementTable, active_table, toleration_kwargs

OUTPUT = "{{ params.output }}"
CONTAINER = "base"  # KubernetesPodOperator's main container name
# The config's sections that always exist (a missing one renders as {}, not None): the fields with a default
# section object, so a section added to PipelineConfig renders without a change here.
SECTIONS = tuple(name for name, field in PipelineConfig.model_fields.items() if field.default_factory is not None)


def exit_code(pod: k8s.V1Pod | None, container: str = CONTAINER) -> int | None:
    """The terminated exit code of ``container`` in ``pod``, or None when it did not terminate."""
    statuses = (pod.status.container_statuses or []) if pod is not None and pod.status else []
    for status in statuses:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


class PtqflowPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator that fails without retries when ptqflow exits with a do-not-retry code."""

    def cleanup(self, pod, remote_pod, *args, **kwargs):  # noqa: D102 (see class docstring)
        try:
            return super().cleanup(pod, remote_pod, *args, **kwargs)
        except Exception as err:
            code = exit_code(remote_pod, self.base_container_name)
            if should_retry(code):
                raise
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"ptqflow exited {code}: {NO_RETRY_EXIT_CODES[code]}") from err


def templated_sets() -> dict[str, str]:
    """``--set`` values rendered from the run's params (tojson: YAML-readable, null for None): first every
    top-level config field from the ``config`` param (absent sections become {} = defaults), then the typed
    params on top. Keys repeat on purpose: the CLI applies ``--set`` in order."""
    from ptqflow.config import PipelineConfig

    base = {f"{field}": f"{{{{ params.config.get('{field}', {{}} if '{field}' in {SECTIONS!r} else none) | tojson }}}}"
            for field in PipelineConfig.model_fields}
    typed = {}
    for name, spec in param_specs().items():
        default = _jinja_literal(spec["default"])
        lookup = "params.config" + "".join(f".get('{p}', {{}})" for p in spec["key"].split(".")[:-1])
        lookup += f".get('{spec['key'].split('.')[-1]}', {default})"
        # A param left at its default does not override the config param's value (as in local mode).
        typed[spec["key"]] = f"{{{{ ({lookup} if params.{name} == {default} else params.{name}) | tojson }}}}"
    return base, typed


def _jinja_literal(value) -> str:
    """A Python value as a Jinja literal (none/true/false, JSON numbers and strings)."""
    import json

    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


class ShardPodOperator(PtqflowPodOperator):
    """A fan-out step's pod for one shard ``"I/N"`` of its split: the step's arguments with its own output
    (``<output>/<step>-shards/<i>-of-<N>``) and ``--shard I/N``; mapped over the run's shards."""

    def __init__(self, *, shard: str, **kwargs):
        part = parse_shard(shard)
        args = list(kwargs.pop("arguments"))
        labels = kwargs.pop("labels", {})
        args[args.index("--out") + 1] = shard_output_uri(OUTPUT, labels["ptqflow.io/step"], part)
        super().__init__(arguments=[*args, "--shard", shard], labels={**labels, "ptqflow.io/shard": shard_name(part)},
                         **kwargs)
        self.shard = shard


class MergePodOperator(PtqflowPodOperator):
    """A merge pod (merge-stats, merge-validation). Its rendered arguments hold ``--in-partials
    <output>/<step>-shards``; when it runs, that one value becomes the run's N shard outputs (``with_partials``, N
    from the fan-out's param)."""

    def execute(self, context):  # noqa: D102 (see class docstring)
        param = MERGES[self.labels["ptqflow.io/step"]].param
        self.arguments = with_partials(self.arguments, int(context["params"][param]))
        return super().execute(context)


def with_partials(arguments: list[str], shards: int) -> list[str]:
    """``arguments`` with the value after ``--in-partials`` (the shards' directory) replaced by the N shard outputs
    under it, ``<dir>/0-of-N`` ... ``<dir>/N-1-of-N`` (``ptqflow.orchestration.shard_output_uri``)."""
    i = arguments.index("--in-partials")
    parts = [f"{arguments[i + 1].rstrip('/')}/{shard_name((k, shards))}" for k in range(shards)]
    return [*arguments[:i + 1], *parts, *arguments[i + 2:]]


def pod_operator(step: str, device: str, namespace: str | None = None,
                 table: PlacementTable | None = None, task_id: str | None = None) -> PtqflowPodOperator:
    """The pod task of one step, placed for ``device`` by ``table`` (default: ``active_table()``); its task id
    is the step's name with underscores unless ``task_id`` is given."""
    return PtqflowPodOperator(**pod_kwargs(step, device, namespace, table, task_id))


def pod_kwargs(step: str, device: str, namespace: str | None = None, table: PlacementTable | None = None,
               task_id: str | None = None) -> dict:
    """The operator arguments of ``step``'s pod (see ``pod_operator``); a merge's ``--in-partials`` is the
    shards' directory until ``MergePodOperator`` runs."""
    table = table or active_table()
    place = table.placement(step, device)
    if step in MERGES:
        sharded = MERGES[step].step
        inputs = {"partials": shards_uri(OUTPUT, sharded)}
        out = f"{OUTPUT}/{sharded}"  # what later steps read, as if the one step had written it
    else:
        inputs, out = step_input_uris(OUTPUT, step), f"{OUTPUT}/{step}"
    base, typed = templated_sets()
    args = step_arguments(step, inputs, out, base)
    for key, value in typed.items():
        args += ["--set", f"{key}={value}"]
    return dict(
        task_id=task_id or step.replace("-", "_"),
        name=f"ptqflow-{step}",
        namespace=namespace or os.environ.get("PTQFLOW_K8S_NAMESPACE", "ptqflow"),
        image=place.image or step_image(step, device),
        cmds=["ptqflow"],
        arguments=["--log-format", "json", *args],
        node_selector=dict(place.node_selector),
        tolerations=[k8s.V1Toleration(**toleration_kwargs(t)) for t in place.tolerations],
        affinity=dict(place.affinity) or None,  # the operator converts the camelCase dict to V1Affinity
        container_resources=k8s.V1ResourceRequirements(requests=dict(place.requests), limits=dict(place.limits)),
        secrets=[Secret("env", env, table.s3_secret_name, key) for env, key in table.s3_secret_env.items()],
        env_vars=[k8s.V1EnvVar(name="PTQFLOW_STEP", value=step), *registry_env_vars(table, step)],
        labels={"app.kubernetes.io/name": "ptqflow", "ptqflow.io/step": step},
        on_finish_action="delete_succeeded_pod",
        get_logs=True,
        do_xcom_push=False,
    )


def registry_env_vars(table: PlacementTable, step: str) -> list[k8s.V1EnvVar]:
    """MLflow's env vars of ``step``'s pod from the registry Secret, each key optional (the provider's Secret
    has no optional flag), so a Secret holding only some keys, or none, still lets the pod start."""
    return [k8s.V1EnvVar(name=env, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(
        name=table.registry_secret_name, key=key, optional=True)))
        for env, key in table.registry_env(step).items()]


def pod_tasks(device: str, gates):
    """Six chained pod tasks (data dependencies as in the artifact contract) and each fan-out: the one-pod step
    after its gate, the shard pods mapped over the shard list and the merge pod (``gates(fan)``: the gate and the
    list task); a later step waits for whichever of the step and its merge ran. Returns export-ir's task."""
    from airflow.sdk import TriggerRule

    from ptqflow.orchestration.airflow_face import shard_task_id

    table = active_table()
    ops = {step: pod_operator(step, device, table=table) for step in STEP_INPUTS}
    shard_pods, merged = {}, {}
    for step, fan in FAN_OUTS.items():
        unsharded, shards = gates(fan)
        rule = {"trigger_rule": TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS} if earlier_steps(step) & set(FAN_OUTS) else {}
        shard_pods[step] = ShardPodOperator.partial(
            **pod_kwargs(step, device, table=table, task_id=shard_task_id(fan)), **rule,
            map_index_template="{{ task.shard }}").expand(shard=shards)
        merged[step] = MergePodOperator(**pod_kwargs(fan.merge, device, table=table))
        unsharded >> ops[step]
        shard_pods[step] >> merged[step]
    for step in STEP_INPUTS:
        runs = [ops[step], *([shard_pods[step]] if step in shard_pods else [])]  # the shards read what it reads
        for earlier in earlier_steps(step):
            ops[earlier] >> runs
            if earlier in merged:  # (the shard pods got this trigger rule from their partial above)
                merged[earlier] >> runs
                ops[step].trigger_rule = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    return ops["export-ir"]
