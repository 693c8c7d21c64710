"""``ptqflow hook poll``: one pass over the registry for registries without webhooks (a CronJob).

Searches the model versions carrying the opt-in tag, skips those already triggered (tag ``ptqflow.run``) or
published (an INT8 counterpart tagged with their name and version), and triggers the rest exactly as
``hook serve`` does. Returns one outcome per candidate; the CLI exits 5 when the registry or the
orchestrator could not be reached for any of them (the next pass retries), else 0.
"""

from __future__ import annotations

from ptqflow.registry import client as registry
from ptqflow.registry.hooks.core import HookCore, Outcome
from ptqflow.logs import get_logger

log = get_logger("hook")


def candidates(core: HookCore) -> list[tuple[str, str]]:
    """(name, version) of every version with the opt-in tag, oldest first, INT8 target models excluded."""
    key, value = core.cfg.registry.opt_in
    with registry.registry_errors("search model versions"):
        found = core.client.search_model_versions(f"tags.`{key}` = {registry.filter_value(value)}")
    pairs = sorted({(v.name, str(v.version)) for v in found}, key=lambda p: (p[0], int(p[1])))
    return pairs


def poll_once(core: HookCore) -> list[Outcome]:
    """Qualify and trigger every candidate once; the outcomes, in order."""
    outcomes = []
    for name, version in candidates(core):
        outcome = core.handle(name, version)
        log.info("hook poll: models:/%s/%s: %s %s", name, version, outcome.status, outcome.reason)
        outcomes.append(outcome)
    return outcomes
