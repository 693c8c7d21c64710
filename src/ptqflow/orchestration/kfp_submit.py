"""Submit ptqflow's pipeline to a Kubeflow Pipelines endpoint:

    python -m ptqflow.orchestration.kfp_submit --config run.yaml --host https://kfp.example.com [--device cuda]
                                              [--statistics-shards N] [--validation-shards N]

The config file (ptqflow's YAML/JSON config) is validated first; its exposed fields become the run's typed
parameters and, when it sets anything else, the whole config also travels as ``base_config``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ptqflow.config import load_config
from ptqflow.errors import PtqflowError
from ptqflow.orchestration import FAN_OUTS, shard_labels


def run_arguments(config_path: str) -> dict:
    """Pipeline arguments from a config file: typed exposed fields (nullable ones "" when unset) plus
    ``base_config`` (the config as JSON) when it sets fields outside them."""
    from ptqflow.orchestration.kfp_face import pipeline_params
    from ptqflow.orchestration.params import EXPOSED

    cfg = load_config(config_path)
    default = load_config(None).model_dump(mode="json")
    data = cfg.model_dump(mode="json")
    args = {}
    for name, py, _, _ in pipeline_params():
        if name == "base_config":
            continue
        value = data
        for part in EXPOSED[name].split("."):
            value = value[part]
        args[name] = ("" if value is None else str(value)) if py is str else value
    # Fields the typed parameters do not cover travel in base_config (the typed ones override it).
    extra = _diff_keys(data, default, set(EXPOSED.values()))
    args["base_config"] = json.dumps(data) if extra else ""
    return args


def _diff_keys(data: dict, default: dict, allowed: set[str], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in allowed:
            continue
        if isinstance(value, dict) and isinstance(default.get(key), dict):
            out += _diff_keys(value, default[key], allowed, f"{dotted}.")
        elif value != default.get(key):
            out.append(dotted)
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build arguments, create the run; prints the run id. Exit codes as ptqflow's CLI."""
    ap = argparse.ArgumentParser(prog="python -m ptqflow.orchestration.kfp_submit", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--device", default=None, help="placement device (default: the config's device)")
    ap.add_argument("--experiment", default="ptqflow")
    for fan in FAN_OUTS.values():  # --statistics-shards, --validation-shards
        ap.add_argument(f"--{fan.param.replace('_', '-')}", type=int, default=None, metavar="N",
                        help=f"{fan.description} Default: the pipeline's, 1.")
    a = ap.parse_args(argv)
    try:
        args = run_arguments(a.config)
        for fan in FAN_OUTS.values():
            if getattr(a, fan.param) is not None:
                shard_labels(getattr(a, fan.param), fan.param)  # ConfigError (exit 2) unless an integer >= 1
                args[fan.param] = getattr(a, fan.param)
    except PtqflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    import kfp

    from ptqflow.orchestration.kfp_face import build_pipeline

    pipeline = build_pipeline("container", a.device or args["device"])
    run = kfp.Client(host=a.host).create_run_from_pipeline_func(pipeline, arguments=args,
                                                                experiment_name=a.experiment)
    print(run.run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
