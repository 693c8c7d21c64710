"""publish: register the gated INT8 model (QDQ ONNX + OpenVINO IR) as a new version in the model registry.

Runs after export-ir when ``cfg.registry`` is set, and only for a passed gate. The INT8 ONNX model, the IR and
the validation report are logged as artifacts of a run in experiment ``registry.experiment``; the version is
created from the run's ``int8/`` directory in ``registry.target_name`` (default ``<source name>-int8``) with
tags for the source version, ptqflow version, config hash, verdict and key metrics, and gets
``registry.alias`` when one is set. A version already registered from the same source version is reused
(searched by tag first), so a rerun does not create a duplicate. The artifact directory holds
``registered.json`` ({name, version, uri, run_id, created}).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ptqflow import __version__
from ptqflow.registry import client as registry
from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, canonical_json, read_manifest, write_manifest
from ptqflow.config import PipelineConfig, section_dump
from ptqflow.errors import ConfigError, GateFailedError, InputError
from ptqflow.logs import get_logger
from ptqflow.pipeline.steps import spec
from ptqflow.pipeline.steps.accuracy_gate import int8_artifact

_SPEC = spec("publish")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs
RESULT_FILE = "registered.json"
_REPORT_FILES = ("report.json", "report.html")
_IR_FILES = ("model.xml", "model.bin")
log = get_logger(NAME)


def config_section(cfg: PipelineConfig) -> dict:
    """The registry section (where and under which name the INT8 version is registered)."""
    if cfg.registry is None:
        raise ConfigError("the publish step needs a 'registry' section (tracking_uri, target_name, alias)")
    return {"registry": section_dump(cfg.registry)}


def config_hash(cfg: PipelineConfig) -> str:
    """Short sha256 of the settings that shape the INT8 model (not where inputs and outputs live)."""
    data = cfg.model_dump(mode="json", exclude={"model", "output", "registry"})
    data["data"].pop("source", None)
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


def source_of(model_manifest: Manifest, cfg: PipelineConfig) -> tuple[str, str, str | None]:
    """(source name, source version, source run id): the registry version fetch-model resolved, or for a
    model from a plain URI its file stem and sha256 prefix."""
    rec = model_manifest.extra.get("registry")
    if rec:
        return rec["name"], str(rec["version"]), rec.get("run_id")
    uri = model_manifest.extra.get("source") or cfg.model or "model"
    stem = Path(uri.split("?", 1)[0].rstrip("/")).name.removesuffix(".onnx") or "model"
    return stem, f"sha256:{model_manifest.extra.get('sha256', '')[:16]}", None


def _tags(cfg: PipelineConfig, source: tuple[str, str, str | None], metrics: dict) -> dict[str, str]:
    name, version, run_id = source
    tags = {registry.TAG_SOURCE_MODEL: name, registry.TAG_SOURCE_VERSION: version,
            "ptqflow.source_uri": cfg.model or "", "ptqflow.version": __version__,
            "ptqflow.config_hash": config_hash(cfg), "ptqflow.verdict": str(metrics.get("verdict"))}
    if run_id:
        tags[registry.TAG_SOURCE_RUN] = run_id
    for key, value in metrics.items():
        if key != "verdict" and isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"ptqflow.metric.{key}"] = f"{value:.6g}"
    return tags


def _stage(inputs: dict[str, Path], dest: Path) -> None:
    """Lay out what is logged: int8/model.onnx, int8/openvino/model.{xml,bin}, report/report.{json,html}."""
    (dest / "int8" / "openvino").mkdir(parents=True)
    (dest / "report").mkdir()
    # validate's accuracy-controlled model when it published one (validation.accuracy_control), else quantize's
    int8 = int8_artifact(Path(inputs["quantized"]), Path(inputs["report"]))
    shutil.copyfile(int8 / "model.onnx", dest / "int8" / "model.onnx")
    for name in _IR_FILES:
        src = Path(inputs["ir"]) / name
        if not src.is_file():
            raise InputError(f"{inputs['ir']}: {name} missing from the export-ir artifact")
        shutil.copyfile(src, dest / "int8" / "openvino" / name)
    for name in _REPORT_FILES:
        if (Path(inputs["report"]) / name).is_file():
            shutil.copyfile(Path(inputs["report"]) / name, dest / "report" / name)


def _register(client, cfg: PipelineConfig, target: str, staged: Path, tags: dict, metrics: dict) -> dict:
    """Log the staged files in a new run and create the model version from its int8/ directory."""
    rc = cfg.registry
    what = f"registry {client.tracking_uri}"
    with registry.registry_errors(what):
        exp = client.get_experiment_by_name(rc.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(rc.experiment)
        run = client.create_run(exp_id, tags={k: v for k, v in tags.items() if not k.startswith("ptqflow.metric.")},
                                run_name=f"ptqflow-{tags[registry.TAG_SOURCE_MODEL]}-{tags[registry.TAG_SOURCE_VERSION]}")
    run_id = run.info.run_id
    try:
        with registry.registry_errors(what):
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    client.log_metric(run_id, key, float(value))
            client.log_artifacts(run_id, str(staged))
            _ensure_registered_model(client, target)
            version = client.create_model_version(target, f"{run.info.artifact_uri}/int8", run_id=run_id, tags=tags,
                                                  description=f"INT8 (ptqflow {__version__}) of "
                                                              f"{tags[registry.TAG_SOURCE_MODEL]} version "
                                                              f"{tags[registry.TAG_SOURCE_VERSION]}")
            client.set_terminated(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    return {"name": target, "version": str(version.version), "run_id": run_id}


def _ensure_registered_model(client, target: str) -> None:
    """Create the registered model ``target`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(target)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(target, description="INT8 models published by ptqflow")


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Register (or find) the INT8 version; writes registered.json and the manifest into ``out``."""
    start = time.monotonic()
    rc = cfg.registry
    if rc is None:
        raise ConfigError("the publish step needs a 'registry' section (tracking_uri, target_name, alias)")
    manifests = {name: read_manifest(Path(p)) for name, p in inputs.items()}
    report = manifests["report"]
    if report is None or report.metrics.get("verdict") != "pass":
        raise GateFailedError("publish: the validation report did not pass its gate; nothing is registered")
    source = source_of(manifests["model"], cfg)
    if rc.target_name is None and not manifests["model"].extra.get("registry"):
        raise ConfigError("field 'registry.target_name' is required when the model does not come from a registry")
    target = rc.target_name or f"{source[0]}-int8"
    client = registry.client(rc.tracking_uri)
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links on stdout
        existing = registry.find_published(client, target, source[0], source[1])
        if existing:
            found = min(existing, key=lambda v: int(v.version))
            result = {"name": target, "version": str(found.version), "run_id": found.run_id, "created": False}
            log.info("publish: %s version %s already holds the INT8 model of %s/%s; not registering again",
                     target, found.version, source[0], source[1])
        else:
            with tempfile.TemporaryDirectory(prefix="ptqflow-publish-") as tmp:
                _stage(inputs, Path(tmp))
                result = {**_register(client, cfg, target, Path(tmp), _tags(cfg, source, report.metrics),
                                      report.metrics), "created": True}
            log.info("publish: registered %s version %s from %s/%s", target, result["version"], *source[:2])
        if rc.alias:
            with registry.registry_errors(f"alias {rc.alias} on {target}"):
                client.set_registered_model_alias(target, rc.alias, result["version"])
    result["uri"] = f"models:/{target}/{result['version']}"
    result["alias"] = rc.alias
    result["registry"] = client.tracking_uri
    Path(out, RESULT_FILE).write_text(json.dumps(result, indent=2, sort_keys=True), encoding="utf-8")
    return write_manifest(out, step=NAME, config=config_section(cfg), inputs=input_digests(inputs),
                          metrics={"version": result["version"], "created": result["created"]},
                          timings={"total_s": round(time.monotonic() - start, 3)},
                          extra={**result, "source": {"name": source[0], "version": source[1], "run_id": source[2]}})
