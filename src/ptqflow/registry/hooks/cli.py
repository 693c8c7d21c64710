"""The ``ptqflow hook serve|poll`` subcommands (wired into ``ptqflow.cli``)."""

from __future__ import annotations

import argparse
import json
import os

from ptqflow.errors import StorageError


def add_hook_parser(sub) -> None:
    """Add ``hook serve`` and ``hook poll`` to the ``ptqflow`` subparsers ``sub``."""
    hook = sub.add_parser("hook", help="model-registry hooks: receive webhooks or poll, trigger pipeline runs")
    hsub = hook.add_subparsers(dest="hook_command", required=True, metavar="HOOK_COMMAND")
    serve = hsub.add_parser("serve", help="serve POST /webhook, GET /healthz, GET /readyz")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    poll = hsub.add_parser("poll", help="one pass over the registry, then exit (for a CronJob)")
    for p in (serve, poll):
        p.add_argument("--config", metavar="FILE", help="hook config YAML (default: env PTQFLOW_HOOK_CONFIG)")


def run_hook(args: argparse.Namespace) -> int:
    """Run ``hook serve`` (until SIGTERM) or ``hook poll`` (prints a JSON summary); returns the exit code."""
    from ptqflow.registry.hooks.config import load_hook_config, secret
    from ptqflow.registry.hooks.core import UNAVAILABLE, HookCore
    from ptqflow.registry.hooks.orchestrators import make_orchestrator

    cfg = load_hook_config(args.config)
    # MLflow's client retries a dead registry for minutes by default; a hook must answer within seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    core = HookCore(cfg, make_orchestrator(cfg))
    core.client  # noqa: B018 - a missing MLflow client is a config error at start, not per event
    if args.hook_command == "serve":
        from ptqflow.registry.hooks.server import serve

        serve(cfg, core, secret("PTQFLOW_WEBHOOK_SECRET", required=True), args.host, args.port)
        return 0
    from ptqflow.registry.hooks.poll import poll_once

    outcomes = poll_once(core)
    print(json.dumps([o.to_dict() for o in outcomes], indent=2))
    if any(o.status == UNAVAILABLE for o in outcomes):
        raise StorageError("hook poll: the registry or the orchestrator was unreachable for "
                           f"{sum(o.status == UNAVAILABLE for o in outcomes)} version(s); the next pass retries")
    return 0
