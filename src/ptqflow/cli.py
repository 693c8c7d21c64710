"""The ``ptqflow`` command: one subcommand per pipeline step, ``run`` for all six, ``config-schema``, ``demo``,
``check-device``.

Configuration precedence: defaults < ``--config FILE`` < ``--pot-config FILE`` (run) < typed flags <
``--set dotted.key=value``.
A step offers the typed flags of the config keys it reads (its ``config_reads`` in ``ptqflow.pipeline.steps.STEPS``, the
table the subcommands and their ``--in-*`` flags come from too); ``run`` offers all.
Errors print one message on stderr and exit with the exception's exit code (see README "Exit codes");
an unexpected exception exits 1 (with its traceback under ``-v``).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

import yaml

from ptqflow import __version__
from ptqflow.config import load_config
from ptqflow.errors import ConfigError, PtqflowError
from ptqflow.logs import get_logger, setup_logging
from ptqflow.pipeline.steps import STEP_MODULES, STEPS, inputs_for, reads

# Typed shortcut flags: (flag, dotted config key, argparse kwargs).
_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--model", "model", {"metavar": "URI", "help": "FP32 model URI (path, file://, s3://, https://, models:/...)"}),
    ("--data", "data.source", {"metavar": "URI", "help": "dataset URI (path, file://, s3://)"}),
    ("--preset", "quantization.preset", {"choices": ["performance", "mixed"]}),
    ("--target-device", "quantization.target_device", {"choices": ["ANY", "CPU", "CPU_SPR", "GPU", "NPU"]}),
    ("--subset-size", "quantization.subset_size", {"type": int}),
    ("--model-type", "quantization.model_type", {"choices": ["transformer"]}),
    ("--ignored-names", "quantization.ignored_scope.names", {"type": lambda s: _csv(s)}),
    ("--ignored-types", "quantization.ignored_scope.types", {"type": lambda s: _csv(s)}),
    ("--ignored-patterns", "quantization.ignored_scope.patterns", {"type": lambda s: _csv(s)}),
    ("--device", "device", {"choices": ["cpu", "cuda", "npu"]}),
    ("--validation-size", "data.validation_size", {"type": int}),
    ("--seed", "data.seed", {"type": int}),
    ("--transform", "data.transform", {"metavar": "MODULE:FUNCTION"}),
    ("--preprocess", "data.preprocess.method",
     {"choices": ["none", "preprocess_method1", "preprocess_method2", "chain"]}),
    ("--max-accuracy-drop", "validation.gate.max_accuracy_drop", {"type": float}),
    ("--min-cosine", "validation.gate.min_cosine", {"type": float}),
    ("--min-sqnr-db", "validation.gate.min_sqnr_db", {"type": float}),
    ("--min-top1-agreement", "validation.gate.min_top1_agreement", {"type": float}),
    ("--min-speedup", "validation.gate.min_speedup", {"type": float}),
    ("--model-sha256", "model_sha256", {}),
    ("--quant-format", "quantization.quant_format", {"choices": ["qdq", "qoperator", "integer_ops"]}),
    ("--target-runtime", "quantization.target_runtime", {"choices": ["openvino", "onnxruntime"]}),
    ("--activation-type", "quantization.activation_type", {"choices": ["uint8", "int8"]}),
    ("--weight-type", "quantization.weight_type", {"choices": ["uint8", "int8"]}),
    ("--static", "quantization.static",
     {"action": argparse.BooleanOptionalAction, "help": "static (default) or, with --no-static, dynamic quantization"}),
    ("--fast-bias-correction", "quantization.fast_bias_correction",
     {"action": argparse.BooleanOptionalAction, "help": "FastBiasCorrection (default) or full BiasCorrection"}),
]


# The steps that run on shards: --shard help, the command merging their partials, its help, what the partials are.
_SHARDED = {
    "collect-stats": ("collect only shard I (0-based) of N of the calibration split: partial statistics for "
                      "merge-stats", "merge-stats", "merge collect-stats --shard partials into the statistics artifact",
                      "the partial statistics"),
    "validate": ("evaluate only shard I (0-based) of N of the validation split: partial results for merge-validation "
                 "(shard 0 also measures speed)", "merge-validation",
                 "merge validate --shard partials into the validation report", "the partial validation results"),
}


def _shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 <= I < N")
    return i, n


def _csv(text: str) -> list[str]:
    return [part for part in (p.strip() for p in text.split(",")) if part]


class _NotRead(argparse.Action):
    """A typed flag whose config key this step does not read: refused, naming the steps that do read it."""

    def __init__(self, option_strings, dest, step: str = "", key: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.step, self.key = step, key

    def __call__(self, parser, namespace, values, option_string=None):
        readers = [s.name for s in STEPS if reads(s.name, self.key)]
        parser.error(f"{option_string} sets {self.key}, which the {self.step} step does not read, so it cannot "
                     f"change its result; the steps that read it: {', '.join(readers)} (and run)")


def _add_common(p: argparse.ArgumentParser, step: str | None = None) -> None:
    """--config, --force, --set, and the typed flags: all of them for ``run`` (step None), else those whose
    config key ``step`` reads (the others are refused with a message naming the steps that read them)."""
    p.add_argument("--config", metavar="FILE", help="YAML/JSON config file (flags override it)")
    p.add_argument("--force", action="store_true", help="rerun even if an identical result exists")
    for flag, key, kwargs in _FLAGS:
        flags = [flag]
        if kwargs.get("action") is argparse.BooleanOptionalAction:
            flags.append("--no-" + flag[2:])
        if step is not None and not reads(step, key):
            nargs = 0 if len(flags) > 1 else "?"
            p.add_argument(*flags, dest=key, default=None, action=_NotRead, nargs=nargs, step=step, key=key,
                           help=argparse.SUPPRESS)
            continue
        kwargs = {"help": f"sets {key}", **kwargs}
        if "choices" not in kwargs and "action" not in kwargs:
            kwargs.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
        p.add_argument(flag, dest=key, default=None, **kwargs)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set quantization.advanced.per_channel=false (YAML value)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``ptqflow`` command."""
    parser = argparse.ArgumentParser(prog="ptqflow", description="Post-training INT8 quantization of ONNX models.")
    parser.add_argument("--version", action="version", version=f"ptqflow {__version__}")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="stderr log format")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logs, tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for step in STEPS:
        name, inputs = step.name, step.inputs
        p = sub.add_parser(name, help=f"run the {name} step")
        for inp in inputs:
            p.add_argument(f"--in-{inp}", dest=f"in_{inp}", metavar="URI", help=f"input artifact '{inp}'")
        p.add_argument("--output", "--out", dest="out", required=True, metavar="URI",
                       help="output artifact location (--out is the same flag)")
        _add_common(p, name)
        p.set_defaults(step_inputs=inputs)
        if name in _SHARDED:
            p.add_argument("--shard", type=_shard, metavar="I/N", help=_SHARDED[name][0])
    for step, (_, merge_name, merge_help, partials) in _SHARDED.items():
        merge = sub.add_parser(merge_name, help=merge_help)
        merge.add_argument("--in-partials", dest="in_partials", nargs="+", required=True, metavar="URI",
                           help=f"{partials} of shards 0..N-1 (any order)")
        merge.add_argument("--output", "--out", dest="out", required=True, metavar="URI",
                           help="output artifact location")
        _add_common(merge, step)  # the shards' config: the merged artifact is the step's
        merge.set_defaults(step_inputs=())
    run = sub.add_parser("run", help="run all six steps in order")
    run.add_argument("--output", dest="output", metavar="URI", help="output prefix; each step writes <output>/<step>/")
    run.add_argument("--pot-config", dest="pot_config", metavar="FILE",
                     help="an OpenVINO POT DefaultQuantization config (JSON/YAML), read after --config")
    _add_common(run)
    sub.add_parser("config-schema", help="print the JSON schema of the config file")
    from ptqflow.registry.hooks.cli import add_hook_parser

    add_hook_parser(sub)
    check = sub.add_parser("check-device", help="check that the devices the config asks for are present (exit 6 if not)")
    check.add_argument("--config", metavar="FILE", help="YAML/JSON config file (flags override it)")
    check.add_argument("--device", dest="device", default=None, choices=["cpu", "cuda", "npu"], help="sets device")
    check.add_argument("--step", dest="steps", action="append", choices=list(STEP_MODULES),
                       help="check only this step's devices (repeatable; default: all steps)")
    check.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="set any config field, e.g. --set validation.openvino_device=NPU")
    demo = sub.add_parser("demo", help="quantize, validate and export the embedded default model")
    demo.add_argument("--output", default="ptqflow-demo", metavar="DIR", help="output directory")
    demo.add_argument("--force", action="store_true", help="rerun even if identical results exist")
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted-key overrides from typed flags and ``--set`` (YAML-parsed values); ConfigError if malformed."""
    ov: dict[str, Any] = {}
    for key, value in vars(args).items():
        if "." in key or key in ("model", "output", "device", "model_sha256"):
            if value is not None:
                ov[key] = value
    for item in args.sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            ov[key.strip()] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: value is not valid YAML: {err}") from None
    return ov


def _command(args: argparse.Namespace) -> int:
    from ptqflow.pipeline import runner as pipeline

    if args.command == "config-schema":
        from ptqflow.config import config_schema

        print(json.dumps(config_schema(), indent=2))
        return 0
    if args.command == "demo":
        return _demo(args)
    if args.command == "hook":
        from ptqflow.registry.hooks.cli import run_hook

        return run_hook(args)
    overrides = overrides_from_args(args)
    if getattr(args, "pot_config", None):  # POT's parameters sit between --config and the flags
        from ptqflow.config.pot import pot_overrides

        overrides = {**pot_overrides(args.pot_config), **overrides}
    cfg = load_config(args.config, overrides)
    if args.command == "check-device":
        return _check_device(args.steps or list(STEP_MODULES), cfg)
    if args.command == "run":
        manifests = pipeline.run_pipeline(cfg, force=args.force)
        _print_run_summary(cfg.output, manifests)
        return 0
    if args.command in ("merge-stats", "merge-validation"):
        merge = pipeline.merge_stats if args.command == "merge-stats" else pipeline.merge_validation
        manifest = merge(args.in_partials, args.out, cfg, force=args.force)
        print(json.dumps({"step": manifest.step, "output": args.out, "digest": manifest.digest,
                          "metrics": manifest.metrics}, default=str))
        return 0
    needed = inputs_for(args.command, cfg)  # dynamic quantization reads no statistics
    uris = {name: getattr(args, f"in_{name}") for name in args.step_inputs if name in needed}
    missing = [n for n, u in uris.items() if not u]
    if missing:
        raise ConfigError(f"{args.command}: missing --in-{missing[0]} URI (inputs: {', '.join(args.step_inputs)})")
    manifest = pipeline.run_step(args.command, uris, args.out, cfg, force=args.force,
                                 shard=getattr(args, "shard", None))
    print(json.dumps({"step": manifest.step, "output": args.out, "digest": manifest.digest,
                      "metrics": manifest.metrics}, default=str))
    return 0


def _check_device(steps: list[str], cfg) -> int:
    """Print what ``steps`` need beyond the CPU and whether it is here; exit 6 when something is missing."""
    from ptqflow.pipeline import devicecheck
    from ptqflow.errors import DeviceUnavailableError

    found = devicecheck.report(steps, cfg)
    print(json.dumps(found, indent=2))
    devicecheck.require(steps, cfg)  # the same error (and exit code) a step would stop with
    return 0 if found["ok"] else DeviceUnavailableError.exit_code


def _print_run_summary(output: str, manifests: dict) -> None:
    print(json.dumps({name: {"output": f"{output.rstrip('/')}/{name}", "digest": m.digest}
                      for name, m in manifests.items()}, indent=2))


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ptqflow import demo
    from ptqflow.pipeline import runner as pipeline
    from ptqflow.config import parse_config
    from ptqflow.errors import GateFailedError

    out = Path(args.output).resolve()
    prepared = demo.prepare(out)
    data = dict(prepared.config)
    data.update(model=str(prepared.model_path), output=str(out / "pipeline"))
    data.setdefault("data", {})
    data["data"] = {**data["data"], "source": str(prepared.data_dir)}
    cfg = parse_config(data, "demo config")
    verdict, code = "PASSED", 0
    try:
        pipeline.run_pipeline(cfg, force=args.force)
    except GateFailedError as err:
        verdict, code = f"FAILED ({err})", err.exit_code
    validate_dir = out / "pipeline" / "validate"
    for line in demo.summary(out / "pipeline"):
        print(line)
    print(f"gate: {verdict}")
    print(f"report: {validate_dir / 'report.html'}")
    if code == 0:
        print(f"INT8 IR: {out / 'pipeline' / 'export-ir' / 'model.xml'}")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ptqflow`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    log = get_logger("cli")
    try:
        return _command(args)
    except PtqflowError as err:
        if args.verbose:
            traceback.print_exc()
        log.error("%s", err, extra={"error": type(err).__name__, "exit_code": err.exit_code,
                                    "retryable": err.retryable})
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug: say so, with the traceback when asked
        if args.verbose:
            traceback.print_exc()
        log.error("internal error: %s: %s (rerun with -v for the traceback)", type(err).__name__, err,
                  extra={"error": type(err).__name__, "exit_code": 1})
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
