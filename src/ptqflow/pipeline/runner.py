"""Run pipeline steps with caching: ``run_step`` for one step, ``run_pipeline`` for all six in order.

A step's cache key is hash(step, ptqflow version, the step's config section, its inputs' digests). When the
output URI already holds a manifest with that key and intact outputs, the step is skipped; ``force`` reruns
it. A step runs into a fresh local directory that is published only when complete (manifest last), so a
killed step leaves no manifest behind at its output. For a local output that directory, and every scratch
file of the run, lies in a hidden partial directory beside the output (``.<step>.partial-<pid>-*``), which
the next run removes when its process is gone: a killed run leaves nothing behind in the system temp dir.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ptqflow import __version__
from ptqflow.pipeline import devicecheck
from ptqflow.artifacts import storage
from ptqflow.artifacts.manifest import Manifest, cache_key, read_manifest, verify_outputs
from ptqflow.config import PipelineConfig
from ptqflow.errors import ConfigError, GateFailedError, InputError
from ptqflow.quantization.graph.prepare import check_model_file
from ptqflow.logs import get_logger
from ptqflow.pipeline.steps import PRODUCERS, SPECS, STEP_MODULES, inputs_for, load_step, skipped

log = get_logger("pipeline")
MODEL_FILE = "model.onnx"  # the model file of a fetch-model or quantize artifact
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def run_step(
    name: str,
    input_uris: dict[str, str],
    output_uri: str,
    cfg: PipelineConfig,
    force: bool = False,
    staged: dict[str, Path] | None = None,
    shard: tuple[int, int] | None = None,
) -> Manifest:
    """Run step ``name`` on the artifacts at ``input_uris`` into ``output_uri`` unless an identical run's
    intact output is already there; return the output's manifest.

    ``staged`` maps URIs to local directories already downloaded (``run_pipeline`` passes it so a chain
    on S3 does not download an artifact twice); newly staged inputs are added to it. ``shard`` (i, n): run only
    shard i of n (collect-stats: partial statistics for merge-stats; validate: partial results for
    merge-validation).
    """
    step = load_step(name)
    names = [i for i in step.INPUTS if name not in SPECS or i in inputs_for(name, cfg)]
    missing = [i for i in names if not input_uris.get(i)]
    if missing:
        raise ConfigError(f"step {name}: missing input artifact(s) {', '.join(missing)} (--in-{missing[0]} URI)")
    if shard is not None and name not in ("collect-stats", "validate"):
        raise ConfigError(f"--shard: only collect-stats and validate run on shards, not {name}")
    devicecheck.require([name], cfg)  # before staging: an absent device fails at once, never falls back
    return _run(step, names, input_uris, output_uri, cfg, force, staged, shard)


def merge_stats(partial_uris: list[str], output_uri: str, cfg: PipelineConfig, force: bool = False) -> Manifest:
    """Merge the partial statistics at ``partial_uris`` (collect-stats --shard I/N outputs) into ``output_uri``,
    as collect-stats would have written it on the whole split; cached like a step."""
    return _merge("merge-stats", partial_uris, output_uri, cfg, force)


def merge_validation(partial_uris: list[str], output_uri: str, cfg: PipelineConfig, force: bool = False) -> Manifest:
    """Merge the partial validation results at ``partial_uris`` (validate --shard I/N outputs) into ``output_uri``,
    as validate would have written it on the whole split; cached like a step. A failed gate is published, then
    raised (GateFailedError), from a cached result too, as validate's."""
    manifest = _merge("merge-validation", partial_uris, output_uri, cfg, force)
    _raise_if_gate_failed("validate", manifest)  # a cached merge is not re-run: its verdict still decides
    return manifest


# The merge commands: step module and what their partials are (for the message when none are given).
MERGES = {"merge-stats": ("ptqflow.pipeline.steps.merge_stats", "the partial statistics"),
          "merge-validation": ("ptqflow.pipeline.steps.merge_validation", "the partial validation results")}


def _merge(command: str, partial_uris: list[str], output_uri: str, cfg: PipelineConfig, force: bool) -> Manifest:
    """Run merge ``command`` on the partials, named partial-0 .. partial-N-1 in the order given."""
    import importlib

    module, partials = MERGES[command]
    if not partial_uris:
        raise ConfigError(f"{command}: give {partials} (--in-partials URI ...)")
    uris = {f"partial-{k}": uri for k, uri in enumerate(partial_uris)}
    return _run(importlib.import_module(module), list(uris), uris, output_uri, cfg, force, None, None)


def _run(step, names: list[str], input_uris: dict[str, str], output_uri: str, cfg: PipelineConfig, force: bool,
         staged: dict[str, Path] | None, shard: tuple[int, int] | None) -> Manifest:
    name = step.NAME
    if not storage.is_s3(output_uri):
        storage.check_replaceable(storage.parse_uri(output_uri).path)  # before the work, not at its end
    section = step.config_section(cfg) | ({"shard": f"{shard[0]}/{shard[1]}"} if shard else {})
    with _work_dir(output_uri, f"ptqflow-{name}-") as work:
        inputs, digests = _stage_inputs(names, input_uris, work, staged)
        key = cache_key(step.NAME, __version__, section, digests)
        if not force:
            found = _cached(name, output_uri, key)
            if found is not None:
                return found
        try:
            return _execute(step, inputs, output_uri, cfg, work, shard)
        finally:
            _keep_published(output_uri, work / "out", staged)


@contextmanager
def _work_dir(output_uri: str, prefix: str):
    """A scratch directory for one run (staged inputs, the step's output before publishing, the step's own
    temporary files), removed afterwards. For a local output it is a partial directory beside the output,
    so that a killed run's leftovers are removed by the next run (``storage.make_partial_dir``)."""
    loc = storage.parse_uri(output_uri)
    if loc.scheme == "file":
        work = storage.make_partial_dir(loc.path)
        try:
            with storage.scratch_root(work):
                yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, storage.scratch_root(Path(tmp)):
        yield Path(tmp)


def _keep_published(output_uri: str, out: Path, staged: dict | None) -> None:
    """Remember a just-published S3 artifact's local copy so downstream steps need not download it."""
    if staged is None or not storage.is_s3(output_uri) or read_manifest(out) is None:
        return
    keep = Path(tempfile.mkdtemp(prefix="ptqflow-staged-out-", dir=staged.get("__root__")))
    shutil.move(str(out), str(keep / "artifact"))
    staged[output_uri] = keep / "artifact"


def _stage_inputs(names, input_uris, work: Path, staged: dict[str, Path] | None):
    """Stage each input artifact locally; return ({name: dir}, {name: digest})."""
    inputs: dict[str, Path] = {}
    digests: dict[str, str] = {}
    for name in names:
        uri = input_uris[name]
        local = staged.get(uri) if staged is not None else None
        if local is None:
            local = storage.stage_in(uri, work / "in" / name)
            if staged is not None and storage.is_s3(uri):
                # run_pipeline's staging cache outlives this call's temporary directory.
                keep = Path(tempfile.mkdtemp(prefix=f"ptqflow-staged-{name}-", dir=staged.get("__root__")))
                shutil.copytree(local, keep, dirs_exist_ok=True)
                local = staged[uri] = keep
        manifest = read_manifest(local) if local.is_dir() else None
        if manifest is None:
            raise InputError(f"input '{name}' at {uri} has no manifest.json: not a finished ptqflow artifact")
        # Presence and size only: hashing every input (models of gigabytes) on every step would cost too much.
        bad = verify_outputs(local, manifest, hashes=False)
        if bad:
            raise InputError(f"input '{name}' at {uri} is damaged: {', '.join(sorted(bad)[:5])} missing or not as "
                             "its manifest.json records; rerun the step that made it (--force)")
        if (local / MODEL_FILE).is_file():
            # Every step loads it: a model whose external data leads outside its artifact is refused here, once.
            check_model_file(local / MODEL_FILE, f"input '{name}' at {uri}: {MODEL_FILE}")
        inputs[name] = local
        digests[name] = manifest.digest
    return inputs, digests


def _cached(name: str, output_uri: str, key: str) -> Manifest | None:
    """The existing manifest at ``output_uri`` if it has cache key ``key`` and intact outputs."""
    existing = storage.read_remote_manifest(output_uri)
    if existing is None:
        return None
    if existing.cache_key != key:
        log.info("%s: output %s is from a different run (config or inputs changed); rerunning", name, output_uri)
        return None
    bad = storage.remote_outputs_intact(output_uri, existing)
    if bad:
        log.warning("%s: output %s has damaged files (%s); rerunning", name, output_uri, ", ".join(bad[:5]))
        return None
    log.info("%s: skipped, %s already holds this run's result (--force reruns)", name, output_uri,
             extra={"step": name, "skipped": True})
    _raise_if_gate_failed(name, existing)
    return existing


def _raise_if_gate_failed(name: str, manifest: Manifest) -> None:
    """A cached validate result that failed its gate fails again (the chain must stop the same way)."""
    if name != "validate":
        return
    passed = manifest.metrics.get("gate_passed", manifest.extra.get("gate_passed"))
    if manifest.metrics.get("verdict") in ("pass", "fail"):
        passed = manifest.metrics["verdict"] == "pass"
    gate = manifest.metrics.get("gate")
    if passed is None and isinstance(gate, dict):
        passed = gate.get("passed")
    if passed is False:
        raise GateFailedError(f"validation gate failed (cached result {manifest.digest[:12]}); see the report "
                              "(report.html) at the validate output")


def _execute(step, inputs: dict[str, Path], output_uri: str, cfg: PipelineConfig, work: Path,
             shard: tuple[int, int] | None = None) -> Manifest:
    """Run the step into a fresh directory and publish it; a gate failure is published, then re-raised."""
    loc = storage.parse_uri(output_uri)
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    log.info("%s: running -> %s", step.NAME, output_uri, extra={"step": step.NAME})
    start = time.monotonic()
    gate_error: GateFailedError | None = None
    try:
        try:
            manifest = step.run(inputs, out, cfg, **({"shard": shard} if shard else {}))
        except OSError as err:
            # The disk is full (a zip writer does not say which file), or writing into ``work`` (beside a local
            # output) was refused: name the output instead of reporting an internal error.
            mine = err.filename and Path(err.filename).resolve().is_relative_to(work.resolve())
            if err.errno in (errno.ENOSPC, errno.EDQUOT) or (mine and err.errno in _UNWRITABLE):
                raise storage.output_error(err, output_uri) from None
            raise
        except GateFailedError as err:
            # The step names files in its working directory; name the published location instead.
            gate_error = GateFailedError(str(err).replace(str(out), output_uri))
            manifest = read_manifest(out)
            if manifest is None:
                raise
        if loc.scheme == "file":
            storage.replace_dir(out, loc.path)
        else:
            storage.publish(out, output_uri)
    finally:
        if loc.scheme == "file" and out.exists():
            shutil.rmtree(out, ignore_errors=True)  # the step failed: leave nothing half-written
    log.info("%s: done in %.1f s", step.NAME, time.monotonic() - start,
             extra={"step": step.NAME, "seconds": round(time.monotonic() - start, 3)})
    if gate_error is not None:
        raise gate_error
    return manifest


def step_output(output: str, name: str) -> str:
    """The output URI of step ``name`` under the pipeline output prefix."""
    return f"{output.rstrip('/')}/{name}"


def run_pipeline(cfg: PipelineConfig, force: bool = False) -> dict[str, Manifest]:
    """Run the six steps in order with outputs at ``<cfg.output>/<step-name>/``, then ``publish`` when a
    registry is configured; return {step: manifest}.

    Needs ``cfg.model``, ``cfg.data.source`` and ``cfg.output``. A GateFailedError from validate stops the
    chain (export-ir and publish do not run) and propagates.
    """
    for field, value in (("model", cfg.model), ("data.source", cfg.data.source), ("output", cfg.output)):
        if not value:
            raise ConfigError(f"field '{field}' is required by ptqflow run")
    if cfg.data.validation_size == 0:  # validate would find nothing to run on, after every other step
        raise ConfigError("data.validation_size is 0, but ptqflow run validates the INT8 model on held-out samples: "
                          "set it above 0, or leave it unset to hold out a share of a small data set")
    if cfg.registry is not None and skipped("export-ir", cfg):
        raise ConfigError("registry: publish needs the OpenVINO IR, which export-ir cannot make from "
                          "quantization.quant_format qoperator; use qdq with quantization.target_runtime onnxruntime")
    devicecheck.require(STEP_MODULES, cfg)  # every step's devices, before the first step runs
    manifests: dict[str, Manifest] = {}
    with _work_dir(cfg.output, "ptqflow-run-") as root:
        staged: dict = {"__root__": root}
        for name in [*STEP_MODULES, *(["publish"] if cfg.registry is not None else [])]:
            if skipped(name, cfg):
                continue
            step = load_step(name)
            uris = {i: step_output(cfg.output, PRODUCERS[i]) for i in step.INPUTS if i in inputs_for(name, cfg)}
            manifests[name] = run_step(name, uris, step_output(cfg.output, name), cfg, force=force, staged=staged)
    return manifests
