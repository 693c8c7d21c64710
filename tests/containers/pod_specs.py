"""The step containers as each orchestrator would start them on a cluster (image, command, args, env, working
directory), with artifact locations on a local directory instead of object storage:

- Kubeflow: read from the committed compiled pipeline (components/ptqflow_pipeline.yaml, kept fresh by
  tests/kfp), its placeholders filled in as KFP's launcher does (parameters as text, artifact paths).
- Airflow: the KubernetesPodOperator pods rendered by Airflow itself in .venv-airflow (render_kpo.py). Where
  that environment is missing (scripts/test_airflow.sh makes it), from ptqflow.orchestration.commands'
  step_arguments, the function the operator's arguments come from, with the run's config as --set values:
  the same command line less the operator's Jinja rendering, which needs Airflow.

Env vars a cluster fills from Secrets (S3 and MLflow credentials) are listed, not set: the steps here read and
write local paths only.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path

import yaml

from container_support import ROOT

KFP_PIPELINE = ROOT / "components" / "ptqflow_pipeline.yaml"
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
_PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(artifacts|parameters)\['([^']+)'\](\.path)?\}\}")


@dataclass
class Pod:
    """One step's container: what to run, in which image, with which environment."""

    task: str
    image: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secret_env: list[str] = field(default_factory=list)  # set from Secrets on a cluster; not set here
    workdir: str | None = None
    outputs: list[str] = field(default_factory=list)  # the artifact paths the step writes


def kfp_pods(values: dict, artifact_root: str, decided: dict[str, dict[str, str]] | None = None) -> list[Pod]:
    """Every task of the compiled pipeline in dependency order, run with pipeline parameters ``values`` (the
    rest at their defaults); output artifacts at ``artifact_root/<task>/<name>``. A ``dsl.ParallelFor`` task (the
    collect-stats loop over the statistics shards, the validate loop over the validation shards) becomes one pod per
    item, as the launcher runs it (``<loop>/<k>/<inner task>``): the items are what the loop's list task computes
    (``kfp_runtime.shard_items``, the function its container runs). A ``dsl.If``/``dsl.Else`` branch runs when its
    trigger condition holds for the output parameters it reads; those a container decides at run time are taken from
    ``decided`` (task -> parameter -> value as text; default: resolve-config says collect-stats is needed, the case
    of static quantization), and the caller checks them against what the container wrote."""
    from ptqflow.orchestration.kfp_runtime import SHARD_LISTS, shard_items

    docs = list(yaml.safe_load_all(KFP_PIPELINE.read_text()))
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    defined = spec["root"]["inputDefinitions"]["parameters"]
    unknown = set(values) - set(defined)
    assert not unknown, f"not parameters of the compiled pipeline: {sorted(unknown)}"
    params = {name: _kfp_text(values.get(name, d.get("defaultValue"))) for name, d in defined.items()}
    decided = {"resolve-config": {"collect_stats_needed": "true"}} if decided is None else decided
    pods: list[Pod] = []

    def container_pod(task, component, artifacts, parameters, out_dir):
        executor = component["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        outputs = {name: f"{out_dir}/{name}" for name in component.get("outputDefinitions", {}).get("artifacts", {})}
        param_files = {name: f"{out_dir}/{name}.json"
                       for name in component.get("outputDefinitions", {}).get("parameters", {})}

        def fill(text: str) -> str:
            if text == "{{$}}":  # the executor input: the artifact lists' URIs are what the launcher downloaded
                return json.dumps({"inputs": {"artifacts": {
                    name: {"artifacts": [{"uri": path} for path in paths]}
                    for name, paths in artifacts.items() if isinstance(paths, list)}}})

            def one(m: re.Match) -> str:
                io, kind, name, path = m.groups()
                if kind == "parameters":
                    return parameters[name]
                assert path, f"{task}: unsupported placeholder {m.group(0)}"
                return (artifacts if io == "inputs" else outputs)[name]
            for name, file in param_files.items():
                text = text.replace(f"{{{{$.outputs.parameters['{name}'].output_file}}}}", file)
            return _PLACEHOLDER.sub(one, text)

        argv = [fill(a) for a in container.get("command", [])] + [_kfp_arg(a, fill) for a in container.get("args", [])]
        leftover = [a for a in argv if "{{$" in a]
        assert not leftover, f"{task}: placeholders left unresolved: {leftover}"
        secret_env = [e["envVar"] for s in k8s.get(executor, {}).get("secretAsEnv", []) for e in s["keyToEnv"]]
        pods.append(Pod(task, container["image"], argv, {e["name"]: e["value"] for e in container.get("env", [])},
                        secret_env, container.get("workingDir"), list(outputs.values())))
        return outputs

    def walk(tasks: dict, scope_artifacts: dict, scope_params: dict, prefix: str) -> dict[str, dict]:
        """Run one DAG's tasks in order; ``scope_*`` are the DAG's own inputs. Returns task -> output artifacts."""
        produced: dict[str, dict] = {}  # task -> output artifact name -> path (a list of paths for a loop's output)
        out_params: dict[str, dict] = {}  # task -> output parameter name -> its value
        for task in TopologicalSorter({t: s.get("dependentTasks", []) for t, s in tasks.items()}).static_order():
            t = tasks[task]
            component = spec["components"][t["componentRef"]["name"]]
            artifacts = _task_inputs(t, "Artifact", scope_artifacts, produced)
            parameters = _task_inputs(t, "Parameter", scope_params, out_params)
            condition = t.get("triggerPolicy", {}).get("condition")
            if condition and not _holds(condition, parameters):
                continue
            if "dag" not in component:
                # The step's own name: a branch's copy of a task is compiled as <name>-2 and so on.
                name = t.get("taskInfo", {}).get("name", task)
                produced[task] = container_pod(prefix + name, component, artifacts, parameters,
                                               f"{artifact_root}/{prefix}{name}")
                if name in SHARD_LISTS:  # statistics-shards, validation-shards
                    out_params[task] = {"items": shard_items(int(parameters["shards"]), SHARD_LISTS[name].param)}
                else:
                    out_params[task] = dict(decided.get(name, {}))
                continue
            if "parameterIterator" not in t:  # a dsl.If/dsl.Else branch (or the group of branches): its own DAG
                walk(component["dag"]["tasks"], artifacts, parameters, prefix)
                continue
            # A ParallelFor: its inner tasks once per item of the list it iterates over.
            loop = t["parameterIterator"]
            items = parameters[loop["items"]["inputParameter"]]  # the list a shard-list task produced
            collected: dict[str, list] = {name: [] for name in component["dag"].get("outputs", {}).get("artifacts", {})}
            for k, item in enumerate(items):
                inner = walk(component["dag"]["tasks"], artifacts,
                             {**parameters, loop["itemInput"]: item}, f"{prefix}{task}/{k}/")
                for name, selector in component["dag"].get("outputs", {}).get("artifacts", {}).items():
                    for sel in selector["artifactSelectors"]:
                        collected[name].append(inner[sel["producerSubtask"]][sel["outputArtifactKey"]])
            produced[task] = collected
        return produced

    walk(spec["root"]["dag"]["tasks"], {}, params, "")
    return pods


def _task_inputs(task: dict, kind: str, scope: dict, outputs: dict[str, dict]) -> dict:
    """A task's input artifacts or parameters (``kind`` "Artifact" or "Parameter"), as the compiled pipeline wires
    them: from the enclosing DAG's own inputs (``componentInput<kind>``, looked up in ``scope``) or from an upstream
    task of the same DAG (``taskOutput<kind>``, looked up in ``outputs``: task -> output name -> value)."""
    resolved = {}
    for name, src in task.get("inputs", {}).get(kind.lower() + "s", {}).items():
        if f"componentInput{kind}" in src:
            resolved[name] = scope[src[f"componentInput{kind}"]]
        else:
            ref = src[f"taskOutput{kind}"]
            resolved[name] = outputs[ref["producerTask"]][ref[f"output{kind}Key"]]
    return resolved


def _holds(condition: str, parameters: dict) -> bool:
    """A branch's trigger condition as the compiler writes dsl.If/dsl.Else on one output parameter:
    ``inputs.parameter_values['X'] == 'V'`` or its negation ``!(...)``."""
    negated = condition.startswith("!(") and condition.endswith(")")
    body = condition[2:-1] if negated else condition
    m = re.fullmatch(r"inputs\.parameter_values\['([^']+)'\] == '([^']*)'", body.strip())
    assert m, f"unsupported trigger condition {condition!r}"
    return (parameters[m.group(1)] == m.group(2)) != negated


def _kfp_text(value) -> str:
    """A parameter value as KFP's launcher substitutes it into a command line (JSON text for non-strings)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


def _kfp_arg(arg: str, fill) -> str:
    """One container argument: a plain string, or a structured placeholder (only Concat is compiled here)."""
    if not arg.startswith('{"'):
        return fill(arg)
    placeholder = json.loads(arg)
    assert list(placeholder) == ["Concat"], f"unsupported structured placeholder {arg}"
    return "".join(fill(part) for part in placeholder["Concat"])


def airflow_pods(device: str, conf: dict, workdir: Path) -> tuple[list[Pod], str]:
    """The pods of the DAG built for ``device`` in kubernetes mode, run with ``conf``, in order: one per step, or
    for a step the conf fans out (statistics_shards, validation_shards N > 1) its N shard pods ``<step>[I/N]`` and
    its merge pod; and where their rendering came from (Airflow itself, or the shared step_arguments function
    without Airflow)."""
    if AIRFLOW_PYTHON.exists():
        out = workdir / "kpo.json"
        r = subprocess.run([str(AIRFLOW_PYTHON), str(Path(__file__).with_name("render_kpo.py")),
                            json.dumps({"device": device, "conf": conf}), str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        rendered = json.loads(out.read_text())
        pods = []
        for name, c in rendered.items():
            args = c["args"]
            pods.append(Pod(name, c["image"], [*c["command"], *args],
                            {e["name"]: e["value"] for e in c["env"] if "value" in e},
                            [e["name"] for e in c["env"] if "valueFrom" in e], c["working_dir"],
                            [args[args.index("--out") + 1]]))
        return pods, "rendered by Airflow (.venv-airflow)"
    return _airflow_pods_without_airflow(device, conf), "step_arguments (no .venv-airflow to render with Airflow)"


def _airflow_pods_without_airflow(device: str, conf: dict) -> list[Pod]:
    """As ptqflow.orchestration.airflow_k8s builds them: ``ptqflow --log-format json`` and step_arguments, the
    config and parameters as --set values, image step_image, env PTQFLOW_STEP; a fanned-out step's shards with
    ``--shard I/N`` and their own outputs, then its merge on the N outputs."""
    from ptqflow.orchestration import (FAN_OUTS, STEP_INPUTS, shard_output_uri, step_input_uris,
                                       step_output_uri)
    from ptqflow.orchestration.commands import step_arguments
    from ptqflow.orchestration.images import step_image
    from ptqflow.orchestration.params import EXPOSED

    sets = {key: json.dumps(value) for key, value in conf.get("config", {}).items()}
    sets.update({EXPOSED[name]: json.dumps(value) for name, value in conf.items() if name in EXPOSED})
    output = conf["output"]

    def pod(name, step, inputs, out, extra=()):
        return Pod(name, step_image(step, device),
                   ["ptqflow", "--log-format", "json", *step_arguments(step, inputs, out, sets), *extra],
                   {"PTQFLOW_STEP": step}, outputs=[out])

    pods = []
    for step in STEP_INPUTS:
        fan = FAN_OUTS.get(step)
        n = int(conf.get(fan.param, 1)) if fan else 1
        if n == 1:
            pods.append(pod(step, step, step_input_uris(output, step), step_output_uri(output, step)))
            continue
        parts = [shard_output_uri(output, step, (i, n)) for i in range(n)]
        pods += [pod(f"{step}[{i}/{n}]", step, step_input_uris(output, step), part, ("--shard", f"{i}/{n}"))
                 for i, part in enumerate(parts)]
        merge = pod(fan.merge, fan.merge, {}, step_output_uri(output, step))
        i = merge.argv.index("--out")
        merge.argv[i:i] = ["--in-partials", *parts]
        pods.append(merge)
    return pods
