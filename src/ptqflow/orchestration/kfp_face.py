"""ptqflow's Kubeflow Pipelines face: components per step and the six-step pipeline (plus ``publish``, which
registers the INT8 version in the model registry when the run's config has a ``registry`` section).

Two component kinds share the wiring: ``container`` components run the ptqflow image's CLI
(``ptqflow <step> --in-<name> PATH --out PATH --config PATH``) and get kfp-kubernetes placement per device;
``local`` components are lightweight Python components that call ``ptqflow.pipeline.runner.run_step`` on the
artifacts' ``.path`` (what ``kfp.local`` can run). A first ``resolve-config`` task validates the run
parameters (generated from ptqflow's config schema) and hands every step the same config file.

Two steps fan out (``ptqflow.orchestration.FAN_OUTS``, one helper for both): collect-stats over pipeline parameter
``statistics_shards`` and validate over ``validation_shards`` (N). A ``statistics-shards`` / ``validation-shards``
task lists the shards, ``dsl.ParallelFor`` runs the step once per shard (``--shard I/N``; N = 1: one item, the whole
split), placed as the step is, and ``merge-stats`` / ``merge-validation`` takes their outputs (``dsl.Collected``) and
writes the artifact later steps read, ``statistics`` or ``report`` (N = 1: the one step's artifact, passed on);
merge-validation decides the gate. The loop runs even for N = 1 because the other shape, ``dsl.If``/``dsl.Else``
joined by ``dsl.OneOf``, cannot run under ``kfp.local`` (2.17: a DAG output of two artifact selectors is refused).

Dynamic quantization (``quantization.static: false``) skips collect-stats, as ``ptqflow run`` does
(``ptqflow.orchestration.CONDITIONAL``): resolve-config says from the run's config whether it runs (its output
``collect_stats_needed``, "true"/"false"), and the pipeline branches on it with ``dsl.If``/``dsl.Else``: the
``true`` branch runs collect-stats (its loop and merge) and the steps after it, the ``false`` branch the same later
steps without it (quantize without statistics). Each branch holds its own later steps because a task after the
branches could only take its input from either through ``dsl.OneOf`` (see above).
"""

from __future__ import annotations

import functools
import inspect
from typing import List

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from ptqflow.errors import ConfigError
from ptqflow.orchestration import AFTER, CONDITIONAL, FAN_OUTS, OPTIONAL_STEP_INPUTS, STEP_INPUTS, FanOut
from ptqflow.orchestration.images import image, step_image
from ptqflow.orchestration.params import EXPOSED, param_specs
from ptqflow.orchestration.pod_placement import PlacementTable, active_table, toleration_kwargs
from ptqflow.pipeline.steps import SPECS, STEPS

_PY = {"integer": int, "number": float, "boolean": bool, "string": str}
# The KFP artifact type of each artifact a step produces and later steps consume.
INPUT_TYPES = {"model": Model, "calibration": Dataset, "statistics": Artifact, "quantized": Model,
               "report": Artifact, "ir": Model}
# Output name (from ptqflow.pipeline.steps.STEPS) and artifact type per producer step.
OUTPUTS = {s.name: (s.output, INPUT_TYPES[s.output]) for s in STEPS if not s.optional}
# The face's own run parameters (not config fields): how many shards each fan-out step runs in.
SHARDS_PARAMS = [(fan.param, int, 1, fan.description) for fan in FAN_OUTS.values()]
RUNTIME = ["python", "-m", "ptqflow.orchestration.kfp_runtime"]  # the command of the fan-out's containers


def needed_output(step: str) -> str:
    """resolve-config's output parameter saying whether CONDITIONAL ``step`` runs ("true"/"false"):
    ``collect_stats_needed``."""
    return f"{step.replace('-', '_')}_needed"


def pipeline_params() -> list[tuple[str, type, object, str]]:
    """(name, python type, default, description) per exposed config field. Nullable fields become str
    parameters where "" means unset (KFP parameters cannot be null); others keep their schema type."""
    out = []
    for name, spec in param_specs().items():
        types = [t for t in spec["type"] if t != "null"]
        if "null" in spec["type"] or len(types) != 1:
            py, default = str, "" if spec["default"] is None else str(spec["default"])
        else:
            py, default = _PY[types[0]], spec["default"]
        out.append((name, py, default, spec["description"]))
    out.append(("base_config", str, "", "Full ptqflow config as YAML/JSON text; the parameters above override it."))
    return out


def _signed(name: str, params: list[tuple[str, type]], impl, extra: list[inspect.Parameter] = (),
            defaults: dict | None = None):
    """A function named ``name`` with a real signature (KFP reads it) that calls impl(**values)."""
    plist = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t,
                               default=(defaults or {}).get(p, inspect.Parameter.empty)) for p, t in params]
    plist += list(extra)
    sig = inspect.Signature(plist)

    def fn(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        return impl(**bound.arguments)

    fn.__name__ = fn.__qualname__ = name
    fn.__signature__ = sig
    fn.__annotations__ = {p.name: p.annotation for p in plist}
    return fn


def _resolve_container(table: PlacementTable):
    """Container component: validate parameters, write the run's config JSON."""
    params = [(n, t) for n, t, _, _ in pipeline_params()]

    def impl(config, base_config, **values):
        needed = {step: values.pop(needed_output(step)) for step in CONDITIONAL}
        args = ["-m", "ptqflow.orchestration.kfp_runtime", "resolve-config", "--out", config.path, "--base", base_config]
        for name, value in values.items():
            args += ["--set", dsl.ConcatPlaceholder([f"{EXPOSED[name]}=", value])]
        for step, path in needed.items():
            args += ["--needed", step, path]
        return dsl.ContainerSpec(image=table.light.image or image("cpu"), command=["python"], args=args)

    out = [inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Output[Artifact])]
    out += [inspect.Parameter(needed_output(step), inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              annotation=dsl.OutputPath(str)) for step in CONDITIONAL]
    return dsl.container_component(_signed("resolve_config", params, impl, out))


def _step_container(step: str, device: str, table: PlacementTable, inputs: tuple[str, ...] | None = None):
    """Container component of one step: the CLI on KFP-staged artifact paths (a fan-out step: kfp_runtime's, which
    takes the loop's ``shard``, "" for the whole split); ``inputs``: the artifacts it reads (default all of the
    step's: fewer after a skipped step)."""
    out_name, out_type = OUTPUTS[step]
    inputs = STEP_INPUTS[step] if inputs is None else inputs
    params = [("config", Input[Artifact])] + [(n, Input[INPUT_TYPES[n]]) for n in inputs]
    if step in FAN_OUTS:
        params.append(("shard", str))

    def impl(config, shard=None, **arts):
        outp = arts.pop(out_name)
        args = [step]
        for n, a in arts.items():
            args += [f"--in-{n}", a.path]
        args += ["--out", outp.path, "--config", config.path]
        img = table.placement(step, device).image or step_image(step, device)
        if shard is not None:
            return dsl.ContainerSpec(image=img, command=RUNTIME, args=[*args, "--shard", shard])
        return dsl.ContainerSpec(image=img, command=["ptqflow", "--log-format", "json"],
                                 args=args)

    out = inspect.Parameter(out_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Output[out_type])
    return dsl.container_component(_signed(step.replace("-", "_"), params, impl, [out]))


def _shards_container(table: PlacementTable, fan: FanOut):
    """Container component listing ``fan``'s loop items from ``shards`` (kfp_runtime statistics-shards or
    validation-shards)."""
    def impl(shards, items):
        return dsl.ContainerSpec(image=table.light.image or image("cpu"), command=RUNTIME,
                                 args=[fan.param.replace("_", "-"), "--shards", shards, "--out", items])

    out = inspect.Parameter("items", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=dsl.OutputPath(list))
    return dsl.container_component(_signed(fan.param, [("shards", int)], impl, [out]))


def _merge_container(table: PlacementTable, fan: FanOut):
    """Container component of ``fan``'s merge (merge-stats, merge-validation) over the loop's outputs. A container
    has no placeholder for the paths of a list of artifacts, so kfp_runtime reads them from the executor input
    (``{{$}}``)."""
    out_name, out_type = OUTPUTS[fan.step]

    def impl(config, partials, **outputs):
        return dsl.ContainerSpec(image=table.light.image or image("cpu"), command=RUNTIME,
                                 args=[fan.merge, "--config", config.path, "--out", outputs[out_name].path,
                                       "--executor-input", "{{$}}"])

    out = inspect.Parameter(out_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Output[out_type])
    params = [("config", Input[Artifact]), ("partials", Input[List[INPUT_TYPES[out_name]]])]
    return dsl.container_component(_signed(fan.merge.replace("-", "_"), params, impl, [out]))


# PipelineTask setters per requests/limits resource name.
_SETTERS = {("requests", "cpu"): "set_cpu_request", ("limits", "cpu"): "set_cpu_limit",
            ("requests", "memory"): "set_memory_request", ("limits", "memory"): "set_memory_limit"}


def _publish_container(table: PlacementTable):
    """Container component of the publish step: runs it when the config has a registry section, else skips."""
    params = [("config", Input[Artifact])] + [(n, Input[INPUT_TYPES[n]]) for n in OPTIONAL_STEP_INPUTS["publish"]]

    out_name = SPECS["publish"].output

    def impl(config, **arts):
        outp = arts.pop(out_name)
        args = ["-m", "ptqflow.orchestration.kfp_runtime", "publish", "--config", config.path, "--out", outp.path]
        for n, a in arts.items():
            args += [f"--in-{n}", a.path]
        return dsl.ContainerSpec(image=table.light.image or image("cpu"), command=["python"], args=args)

    out = inspect.Parameter(out_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Output[Artifact])
    return dsl.container_component(_signed("publish", params, impl, [out]))


def place(task: dsl.PipelineTask, step: str, device: str, table: PlacementTable | None = None) -> dsl.PipelineTask:
    """Apply ptqflow's placement for ``step`` on ``device`` (from ``table``, default ``active_table()``), the
    S3 secret env and, for the steps that talk to the model registry, the registry secret env (optional keys)
    to a container task. KFP sets node affinity only: pod (anti-)affinity is an error."""
    table = table or active_table()
    p = table.placement(step, device)
    for (kind, name), setter in _SETTERS.items():
        value = getattr(p, kind).get(name)
        if value is not None:
            getattr(task, setter)(value)
    if p.accelerator:
        task.set_accelerator_type(p.accelerator).set_accelerator_limit(p.limits[p.accelerator])
    for key, value in p.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in p.tolerations:
        kubernetes.add_toleration(task, **toleration_kwargs(t))
    unsupported = sorted(set(p.affinity) - {"nodeAffinity"})
    if unsupported:
        raise ConfigError(f"placement of {step} on {device}: affinity.{unsupported[0]} cannot be set on a KFP "
                          "task (kfp-kubernetes supports nodeAffinity only)")
    if p.affinity.get("nodeAffinity"):
        kubernetes.add_node_affinity_json(task, p.affinity["nodeAffinity"])
    kubernetes.use_secret_as_env(task, secret_name=table.s3_secret_name,
                                 secret_key_to_env={v: k for k, v in table.s3_secret_env.items()})
    registry = table.registry_env(step)
    if registry:
        kubernetes.use_secret_as_env(task, secret_name=table.registry_secret_name,
                                     secret_key_to_env={v: k for k, v in registry.items()}, optional=True)
    return task


def build_pipeline(kind: str = "container", device: str = "cpu", table: PlacementTable | None = None):
    """The six-step pipeline function (kind: container | local), parameters from the config schema,
    container tasks placed by ``table`` (default: ``active_table()``)."""
    table = table or active_table()
    if kind == "local":
        from ptqflow.orchestration import kfp_local as comps

        resolve, publish = comps.resolve_config, comps.publish_local
        step_component = lambda step, inputs: comps.STEP_COMPONENTS[step]  # noqa: E731 (inputs: optional there)
        shard_lists = {step: functools.partial(comps.shard_items_local, param=fan.param)
                       for step, fan in FAN_OUTS.items()}
        merges = comps.MERGE_COMPONENTS
    else:
        resolve, publish = _resolve_container(table), _publish_container(table)
        step_component = functools.cache(lambda step, inputs: _step_container(step, device, table, inputs))
        shard_lists = {step: _shards_container(table, fan) for step, fan in FAN_OUTS.items()}
        merges = {step: _merge_container(table, fan) for step, fan in FAN_OUTS.items()}
    specs = pipeline_params() + SHARDS_PARAMS

    def placed(task, step):
        if kind == "container":
            place(task, step, device, table)
        return task.set_display_name(step)

    def fan_out(fan: FanOut, count, config, arts):
        """One task per shard in a ParallelFor, then their merge (see the module docstring); returns the merge."""
        shards = placed(shard_lists[fan.step](shards=count), fan.param.replace("_", "-"))
        with dsl.ParallelFor(shards.output) as shard:
            part = placed(step_component(fan.step, tuple(arts))(config=config, shard=shard, **arts), fan.step)
        partials = dsl.Collected(part.outputs[OUTPUTS[fan.step][0]])
        return placed(merges[fan.step](config=config, partials=partials), fan.merge)

    def wire(steps: list[str], made: dict, resolved, counts: dict, decided: frozenset = frozenset()):
        """The tasks of ``steps`` in order, each reading what ``made`` holds of its inputs; at a CONDITIONAL step
        not yet ``decided``, a dsl.If/dsl.Else on resolve-config's word, the rest wired in each branch (with the
        step, without it); then export-ir's order and publish."""
        config = resolved.outputs["config"]
        for i, step in enumerate(steps):
            if step in CONDITIONAL and step not in decided:
                needed = resolved.outputs[needed_output(step)]
                with dsl.If(needed == "true", name=f"{step} needed"):
                    wire(steps[i:], dict(made), resolved, counts, decided | {step})
                with dsl.Else(name=f"{step} skipped"):
                    wire(steps[i + 1:], dict(made), resolved, counts, decided | {step})
                return
            arts = {n: made[n] for n in STEP_INPUTS[step] if n in made}
            if step in FAN_OUTS:
                task = fan_out(FAN_OUTS[step], counts[step], config, arts)
            else:
                task = placed(step_component(step, tuple(arts))(config=config, **arts), step)
            made[OUTPUTS[step][0]] = task.outputs[OUTPUTS[step][0]]
            made[f"task:{step}"] = task
        for step, earlier in AFTER.items():  # export only what passed the gate
            made[f"task:{step}"].after(*(made[f"task:{e}"] for e in earlier))
        # Registers the INT8 version when the config has a registry section; a no-op otherwise.
        placed(publish(config=config, **{n: made[n] for n in OPTIONAL_STEP_INPUTS["publish"]}), "publish")

    def body(**values):
        counts = {step: values.pop(fan.param) for step, fan in FAN_OUTS.items()}
        wire(list(STEP_INPUTS), {}, placed(resolve(**values), "resolve-config"), counts)

    fn = _signed(f"ptqflow_{kind}", [(n, t) for n, t, _, _ in specs], body,
                 defaults={n: d for n, _, d, _ in specs})
    fn.__doc__ = ("ptqflow: fetch-model, build-calibration, collect-stats (in statistics_shards shards, merged; "
                  "skipped for dynamic quantization), quantize, validate (in validation_shards shards, merged), "
                  "export-ir, publish (to the model registry, when configured).")
    return dsl.pipeline(name=f"ptqflow-quantize-{kind}-{device}" if kind == "container" else "ptqflow-quantize-local",
                        description=fn.__doc__)(fn)


def compile_pipeline(path: str, kind: str = "container", device: str = "cpu", placement_file: str | None = None) -> str:
    """Compile the pipeline to YAML at ``path``, placed per ``placement_file`` (default: PTQFLOW_PLACEMENT_FILE,
    else the built-in table); returns the path."""
    from kfp import compiler

    table = active_table(placement_file)
    compiler.Compiler().compile(build_pipeline(kind, device, table), package_path=str(path))
    return str(path)
