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


def kfp_pods(values: dict, artifact_root: str) -> list[Pod]:
    """Every task of the compiled pipeline in dependency order, run with pipeline parameters ``values`` (the
    rest at their defaults); output artifacts at ``artifact_root/<task>/<name>``. A ``dsl.ParallelFor`` task (the
    collect-stats loop over the statistics shards, the validate loop over the validation shards) becomes one pod per
    item, as the launcher runs it (``<loop>/<k>/<inner task>``): the items are what the loop's list task computes
    (``kfp_runtime.shard_items``, the function its container runs)."""
    from ptqflow.orchestration.kfp_runtime import SHARD_LISTS, shard_items

    docs = list(yaml.safe_load_all(KFP_PIPELINE.read_text()))
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    defined = spec["root"]["inputDefinitions"]["parameters"]
    unknown = set(values) - set(defined)
    assert not unknown, f"not parameters of the compiled pipeline: {sorted(unknown)}"
    params = {name: values.get(name, d.get("defaultValue")) for name, d in defined.items()}
    tasks = spec["root"]["dag"]["tasks"]
    produced: dict[str, dict] = {}  # task -> output artifact name -> path (a list of paths for a loop's output)
    out_params: dict[str, dict] = {}  # task -> output parameter name -> its value
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
            text = text.replace("{{$.outputs.parameters['", "{{$.outputs.parameters['")
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

    for task in TopologicalSorter({t: s.get("dependentTasks", []) for t, s in tasks.items()}).static_order():
        t = tasks[task]
        component = spec["components"][t["componentRef"]["name"]]
        sources = {name: src["taskOutputArtifact"] for name, src in t.get("inputs", {}).get("artifacts", {}).items()}
        artifacts = {name: produced[src["producerTask"]][src["outputArtifactKey"]] for name, src in sources.items()}
        parameters = {}
        for name, src in t.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in src:
                parameters[name] = _kfp_text(params[src["componentInputParameter"]])
            else:
                ref = src["taskOutputParameter"]
                parameters[name] = out_params[ref["producerTask"]][ref["outputParameterKey"]]
        if "dag" not in component:
            produced[task] = container_pod(task, component, artifacts, parameters, f"{artifact_root}/{task}")
            if task in SHARD_LISTS:  # statistics-shards, validation-shards
                out_params[task] = {"items": shard_items(int(parameters["shards"]), SHARD_LISTS[task].param)}
            continue
        # A ParallelFor: its inner tasks once per item of the list it iterates over.
        loop = t["parameterIterator"]
        items_ref = loop["items"]["inputParameter"]
        item_name = loop["itemInput"]
        items = _loop_items(t, items_ref, out_params)
        collected: dict[str, list] = {name: [] for name in component["dag"].get("outputs", {}).get("artifacts", {})}
        for k, item in enumerate(items):
            inner_out = {}
            for inner, it in component["dag"]["tasks"].items():
                inner_component = spec["components"][it["componentRef"]["name"]]
                inner_artifacts = {name: artifacts[src["componentInputArtifact"]]
                                   for name, src in it.get("inputs", {}).get("artifacts", {}).items()}
                inner_params = {name: (item if src["componentInputParameter"] == item_name
                                       else parameters.get(src["componentInputParameter"], ""))
                                for name, src in it.get("inputs", {}).get("parameters", {}).items()}
                inner_out[inner] = container_pod(f"{task}/{k}/{inner}", inner_component, inner_artifacts,
                                                 inner_params, f"{artifact_root}/{task}/{k}/{inner}")
            for name, selector in component["dag"].get("outputs", {}).get("artifacts", {}).items():
                for sel in selector["artifactSelectors"]:
                    collected[name].append(inner_out[sel["producerSubtask"]][sel["outputArtifactKey"]])
        produced[task] = collected
    return pods


def _loop_items(task: dict, items_input: str, out_params: dict) -> list:
    """The items a ParallelFor task iterates over: a list parameter produced by an upstream task."""
    src = task["inputs"]["parameters"][items_input]["taskOutputParameter"]
    return list(out_params[src["producerTask"]][src["outputParameterKey"]])


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
