"""Code that runs inside ptqflow's KFP components (no kfp import): resolving the run's config file, running
one step on artifact paths, the fan-outs (the shard list, a shard of collect-stats or validate, the merge), and
turning validate's manifest into KFP Metrics numbers.

``python -m ptqflow.orchestration.kfp_runtime resolve-config --out PATH --set key=value ...`` is the container
command of the ``resolve-config`` component: it validates the run parameters once (a bad value fails the
run before any data moves) and writes the full config as JSON for every step's ``--config``. A fan-out's containers
run ``statistics-shards`` / ``validation-shards`` (the loop's items), ``collect-stats`` / ``validate`` (``--shard I/N``,
or ``""`` for the whole split) and ``merge-stats`` / ``merge-validation`` (the partials read from the executor input,
``{{$}}``: a container has no placeholder for the paths of a list of artifacts).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from ptqflow.config import load_config
from ptqflow.errors import ConfigError, InputError, PtqflowError
from ptqflow.orchestration import FAN_OUTS, MERGES, parse_shard, shard_labels
from ptqflow.pipeline.steps import SPECS, skipped

PUBLISH_INPUTS = SPECS["publish"].inputs  # the publish component's --in-* artifacts


def param_value(raw: Any) -> Any:
    """A KFP parameter value as the config wants it: "" means unset (None); strings are YAML-parsed like
    the CLI's ``--set`` (so "0.5" -> 0.5, "true" -> True); other types pass through."""
    if isinstance(raw, str):
        return None if raw == "" else yaml.safe_load(raw)
    return raw


def resolve_config(out: str | Path, values: dict[str, Any], base: str = "", needed: dict[str, str] | None = None) -> dict:
    """Validate ``base`` (config YAML/JSON text, may be empty) with {dotted key: value} applied into a
    PipelineConfig and write it as JSON at ``out``; for each {step: path} of ``needed`` (the CONDITIONAL steps),
    "true" or "false" at path: whether the step runs for this config (``pipeline.steps.skipped``). Returns the
    config dict."""
    try:
        base_data = yaml.safe_load(base) if base else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"base_config is not valid YAML: {err}") from None
    if not isinstance(base_data, dict):
        raise ConfigError("base_config must be a mapping")
    from ptqflow.orchestration.params import EXPOSED, overrides

    by_name = {name: values[key] for name, key in EXPOSED.items() if key in values}
    flat = {k: param_value(v) for k, v in overrides(by_name).items()}
    cfg = load_config(None, {**_flatten(base_data), **flat})
    # Only what the run set is written: the steps fill in the defaults themselves, and a field left at its
    # default stays distinguishable from one set to the same value (a small data set is split only when
    # data.validation_size was not set).
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(cfg.model_dump(mode="json", exclude_unset=True), indent=2, sort_keys=True),
                         encoding="utf-8")
    for step, path in (needed or {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("false" if skipped(step, cfg) else "true", encoding="utf-8")
    return cfg.model_dump(mode="json")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (mappings only; lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_step_on_paths(step: str, inputs: dict[str, str], out: str, config_path: str, shard: str = "") -> dict:
    """Run ``step`` from local artifact directories into ``out`` (a KFP artifact path); a fan-out step: only
    ``shard`` "I/N" of its split when it is not "". Returns the manifest as a dict (digest, metrics)."""
    from ptqflow.pipeline.runner import run_step

    cfg = load_config(config_path)
    manifest = run_step(step, inputs, out, cfg, shard=parse_shard(shard))
    return {"digest": manifest.digest, "metrics": manifest.metrics}


def shard_items(count: int, param: str) -> list[str]:
    """What a fan-out's loop iterates over, from run parameter ``param``: ``["0/N", ..., "N-1/N"]`` for N > 1
    shards, ``[""]`` for 1 (the step once on the whole split, whose artifact the merge then passes on unchanged)."""
    return shard_labels(count, param) or [""]


def merge_on_paths(merge: str, partials: list[str], out: str, config_path: str) -> dict:
    """The artifact at ``out`` from a fan-out loop's outputs ``partials``: ``merge`` (merge-stats, merge-validation)
    of the shards' partials, or a copy of the one whole-split artifact (N = 1: the bytes and manifest the step
    wrote). Returns the manifest as a dict (digest, metrics); merge-validation raises GateFailedError after
    writing ``out`` when the gate fails."""
    from ptqflow.artifacts.manifest import read_manifest
    from ptqflow.pipeline import runner

    first = read_manifest(Path(partials[0])) if len(partials) == 1 else None
    if first is not None and first.step == MERGES[merge].step and "shard" not in first.config:
        shutil.copytree(partials[0], out, dirs_exist_ok=True)
        return {"digest": first.digest, "metrics": first.metrics}
    run = {"merge-stats": runner.merge_stats, "merge-validation": runner.merge_validation}[merge]
    manifest = run(partials, out, load_config(config_path))
    return {"digest": manifest.digest, "metrics": manifest.metrics}


# Where the KFP launcher puts an artifact of a remote URI (its LocalPathForURI); other URIs are local paths.
_MOUNTS = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def input_artifact_paths(executor_input: str | dict, name: str) -> list[str]:
    """The local paths of the artifacts of input ``name`` (a list of artifacts, ``dsl.Collected``) in a KFP
    executor input (the ``{{$}}`` JSON): where the launcher downloaded each one, by its URI."""
    data = json.loads(executor_input) if isinstance(executor_input, str) else executor_input
    try:
        artifacts = data["inputs"]["artifacts"][name]["artifacts"]
    except (KeyError, TypeError):
        raise InputError(f"executor input has no input artifact list {name!r}") from None
    paths = []
    for artifact in artifacts:
        uri = artifact["uri"]
        prefix = next((p for p in _MOUNTS if uri.startswith(p)), None)
        paths.append(_MOUNTS[prefix] + uri[len(prefix):] if prefix else uri)
    if not paths:
        raise InputError(f"executor input: input {name!r} holds no artifacts")
    return paths


def publish_if_configured(inputs: dict[str, str], out: str, config_path: str) -> dict:
    """The publish step when the run's config has a ``registry`` section; otherwise write ``skipped.json``
    into ``out`` and return {"skipped": reason} (a run without a registry publishes nothing)."""
    cfg = load_config(config_path)
    if cfg.registry is None:
        Path(out).mkdir(parents=True, exist_ok=True)
        reason = "no 'registry' section in the run's config"
        (Path(out) / "skipped.json").write_text(json.dumps({"skipped": reason}), encoding="utf-8")
        return {"skipped": reason}
    return run_step_on_paths("publish", inputs, out, config_path)


def numeric_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Flatten a manifest's metrics to {dotted name: float}, keeping only finite numbers (KFP Metrics)."""
    flat: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(numeric_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
                and abs(value) != float("inf"):
            flat[name] = float(value)
    return flat


def copy_report_html(validate_dir: str, html_path: str) -> None:
    """Copy validate's report.html to the KFP HTML artifact path."""
    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(validate_dir) / "report.html", html_path)


# The shard-list commands ("statistics-shards", "validation-shards": the fan-out's param, dashed) -> their fan-out.
SHARD_LISTS = {fan.param.replace("_", "-"): fan for fan in FAN_OUTS.values()}


def _fan_out_parsers(sub, fan) -> None:
    """Add ``fan``'s three commands: its shard list, its step on one shard ('': all) and its merge."""
    shards = sub.add_parser(fan.param.replace("_", "-"), help=f"write the {fan.step} loop's items (a JSON list)")
    shards.add_argument("--shards", required=True, type=int)
    shards.add_argument("--out", required=True, help="the output parameter's file")
    step = sub.add_parser(fan.step, help=f"{fan.step} on shard I/N of its split ('': all of it)")
    step.add_argument("--shard", default="")
    step.add_argument("--config", required=True)
    step.add_argument("--out", required=True)
    for name in SPECS[fan.step].inputs:  # no statistics for dynamic quantization (collect-stats skipped)
        step.add_argument(f"--in-{name}", dest=name, required=name != "statistics")
    merge = sub.add_parser(fan.merge, help=f"{fan.merge} of the {fan.step} loop's outputs into its artifact")
    merge.add_argument("--config", required=True)
    merge.add_argument("--out", required=True)
    merge.add_argument("--executor-input", required=True, help="the KFP executor input JSON ({{$}})")


def main(argv: list[str] | None = None) -> int:
    """``resolve-config --out PATH --set key=value ...``, ``publish --config PATH --in-model ... --out PATH``, or
    a fan-out's shard list, shard step and merge (``_fan_out_parsers``); exit code as the ptqflow CLI's."""
    parser = argparse.ArgumentParser(prog="python -m ptqflow.orchestration.kfp_runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    rc = sub.add_parser("resolve-config")
    rc.add_argument("--out", required=True)
    rc.add_argument("--base", default="", help="base config as YAML/JSON text")
    rc.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    rc.add_argument("--needed", nargs=2, action="append", default=[], metavar=("STEP", "PATH"),
                    help="write whether STEP runs for this config (true/false) at PATH")
    pub = sub.add_parser("publish", help="the publish step if the config has a registry section, else skip")
    pub.add_argument("--config", required=True)
    pub.add_argument("--out", required=True)
    for name in PUBLISH_INPUTS:
        pub.add_argument(f"--in-{name}", dest=name, required=True)
    for fan in FAN_OUTS.values():
        _fan_out_parsers(sub, fan)
    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            inputs = {n: getattr(args, n) for n in PUBLISH_INPUTS}
            print(json.dumps(publish_if_configured(inputs, args.out, args.config), default=str))
            return 0
        if args.command in SHARD_LISTS:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            items = shard_items(args.shards, SHARD_LISTS[args.command].param)
            Path(args.out).write_text(json.dumps(items), encoding="utf-8")
            return 0
        if args.command in FAN_OUTS or args.command in MERGES:
            from ptqflow.logs import setup_logging

            setup_logging("json")
            if args.command in FAN_OUTS:
                inputs = {n: getattr(args, n) for n in SPECS[args.command].inputs if getattr(args, n)}
                result = run_step_on_paths(args.command, inputs, args.out, args.config, args.shard)
            else:
                partials = input_artifact_paths(args.executor_input, "partials")
                result = merge_on_paths(args.command, partials, args.out, args.config)
            print(json.dumps(result, default=str))
            return 0
        values = {}
        for item in args.sets:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            key, raw = item.split("=", 1)
            values[key] = raw
        resolve_config(args.out, values, args.base, dict(args.needed))
    except PtqflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
