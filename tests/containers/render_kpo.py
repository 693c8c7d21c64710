"""Render the KubernetesPodOperator pods of ptqflow's DAG (kubernetes mode) for one run, as Airflow would start
them, and print each pod's main container as JSON. Needs Airflow, so the container test runs it with
.venv-airflow's Python:

    python render_kpo.py '{"device": "npu", "conf": {...run conf...}}' OUT.json

writes {pod: {"image", "command", "args", "env", "working_dir"}} for every pod the run starts, in order, to OUT.json
(not stdout: Airflow logs there), env as the pod spec's list of {"name", "value"} or {"name", "valueFrom"}. A pod
is named after its step; where the conf fans a step out (statistics_shards, validation_shards N > 1), the step's
pods are its shards, ``<step>[I/N]``, and its merge (``merge-stats``, ``merge-validation``, its partials filled in
as the operator does when it runs)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path



def run_tasks(dag, conf: dict):
    """(pod name, operator) of every pod a run with ``conf`` starts, in step order (see the module docstring)."""
    from ptqflow.orchestration import FAN_OUTS, STEP_INPUTS
    from ptqflow.orchestration.airflow_k8s import with_partials

    for step in STEP_INPUTS:
        fan = FAN_OUTS.get(step)
        n = int(conf.get(fan.param, 1)) if fan else 1
        if n == 1:
            yield step, dag.get_task(step.replace("-", "_"))
            continue
        for i in range(n):
            yield f"{step}[{i}/{n}]", dag.get_task(f"{step.replace('-', '_')}_shard").unmap({"shard": f"{i}/{n}"})
        merge = dag.get_task(fan.merge.replace("-", "_"))
        merge.arguments = with_partials(merge.arguments, n)  # what MergePodOperator.execute does
        yield fan.merge, merge


def main(argv: list[str]) -> int:
    request = json.loads(argv[1])
    home = Path(tempfile.mkdtemp(prefix="ptqflow-kpo-render-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # its kubeconfig and Airflow home go with the process
    os.environ["AIRFLOW_HOME"] = str(home)  # Airflow reads its home at import
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # Building the pod reads a kubeconfig; no API server is ever contacted.
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: dummy}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: ptqflow}}]
current-context: x
""")
    from airflow.sdk.definitions.param import ParamsDict
    from kubernetes.client import ApiClient

    from ptqflow.orchestration.airflow_face import build_dag

    dag = build_dag("ptqflow_container_test", mode="kubernetes", device=request["device"])
    params = ParamsDict(dag.params)
    params.update(request["conf"])
    params.validate()
    pods = {}
    for name, op in run_tasks(dag, request["conf"]):
        op.config_file = str(kubeconfig)
        # As the task runner does before execute(): the templated fields rendered with the run's params.
        op.arguments = op.render_template(op.arguments, {"params": params.dump()}, jinja_env=dag.get_template_env())
        pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context=None))
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == op.base_container_name]
        pods[name] = {"image": container["image"], "command": container.get("command", []),
                      "args": container.get("args", []), "env": container.get("env", []),
                      "working_dir": container.get("workingDir")}
    Path(argv[2]).write_text(json.dumps(pods, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
