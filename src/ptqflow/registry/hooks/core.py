"""What ``hook serve`` and ``hook poll`` share: which model versions qualify, the run's conf, the trigger.

A model version qualifies when it carries the opt-in tag (``registry.opt_in_tag``), is not itself an INT8
version that ptqflow registered, has not been triggered before (tag ``ptqflow.run`` on the source version,
written right after a successful trigger) and has no INT8 counterpart yet, and its artifacts hold an
``.onnx`` file. Outcomes are ``Outcome`` values; the server maps them to HTTP statuses, poll to a summary.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ptqflow.registry import client as registry
from ptqflow.errors import ConfigError, InputError, StorageError
from ptqflow.orchestration import FAN_OUTS
from ptqflow.registry.hooks.config import HookConfig
from ptqflow.registry.hooks.orchestrators import Orchestrator, OrchestratorRejected, OrchestratorUnavailable, with_retries
from ptqflow.logs import get_logger

TAG_RUN = "ptqflow.run"
TAG_DATA = "ptqflow.data"
log = get_logger("hook")

# Outcome kinds.
TRIGGERED, IGNORED, DUPLICATE, REJECTED, UNAVAILABLE, PENDING = (
    "triggered", "ignored", "duplicate", "rejected", "unavailable", "pending")


@dataclass
class Outcome:
    """The result of handling one model version (or one event)."""

    status: str
    reason: str = ""
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"status": self.status, "reason": self.reason, "name": self.name, "version": self.version,
             "run_id": self.run_id}
        return {k: v for k, v in d.items() if v not in (None, "")}


def _target_regex(pattern: str) -> re.Pattern:
    """A regex matching names that ``registry.target_name`` produces (``{name}`` is any text)."""
    parts = [re.escape(p) for p in pattern.split("{name}")]
    return re.compile("^" + ".+".join(parts) + "$")


class HookCore:
    """Qualifies model versions against the registry and triggers their runs."""

    def __init__(self, cfg: HookConfig, orchestrator: Orchestrator, mlflow_client=None):
        self.cfg = cfg
        self.orchestrator = orchestrator
        self._client = mlflow_client
        self._target = _target_regex(cfg.registry.target_name)

    @property
    def client(self):
        if self._client is None:
            self._client = registry.client(self.cfg.registry.tracking_uri)
        return self._client

    # ---------------------------------------------------------------------------------------------
    # Events
    # ---------------------------------------------------------------------------------------------

    def screen_event(self, event: dict) -> Outcome | tuple[str, str]:
        """An IGNORED outcome, or the (name, version) that the event may qualify (checked against the
        registry by ``qualify``). Only the payload is looked at here."""
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return Outcome(IGNORED, "payload has no 'data' object")
        kind = f"{event.get('entity')}.{event.get('action')}"
        if kind not in self.cfg.events:
            return Outcome(IGNORED, f"event {kind} is not one of {', '.join(self.cfg.events)}")
        data = event["data"]
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or not name or version in (None, ""):
            return Outcome(IGNORED, "payload names no model version")
        version = str(version)
        if self._target.match(name):
            return Outcome(IGNORED, f"{name} is an INT8 target model", name, version)
        key, value = self.cfg.registry.opt_in
        if kind == "model_version.created" and (data.get("tags") or {}).get(key) != value:
            return Outcome(IGNORED, f"version not tagged {key}={value}", name, version)
        if kind == "model_version_tag.set" and (data.get("key") != key or str(data.get("value")) != value):
            return Outcome(IGNORED, f"tag {data.get('key')} is not the opt-in tag {key}={value}", name, version)
        return name, version

    # ---------------------------------------------------------------------------------------------
    # Registry checks, conf, trigger
    # ---------------------------------------------------------------------------------------------

    def qualify(self, name: str, version: str) -> Outcome | Any:
        """The registry's ModelVersion when it qualifies, else the Outcome saying why not."""
        try:
            mv = registry.resolve(self.client, registry.RegistryRef(name, version))
            tags = dict(mv.tags or {})
            key, value = self.cfg.registry.opt_in
            if tags.get(key) != value:
                return Outcome(IGNORED, f"version not tagged {key}={value}", name, version)
            if registry.TAG_SOURCE_MODEL in tags:
                return Outcome(IGNORED, "version was registered by ptqflow", name, version)
            if tags.get(TAG_RUN):
                return Outcome(DUPLICATE, f"already triggered ({TAG_RUN}={tags[TAG_RUN]})", name, version)
            target = self.cfg.registry.target_name.format(name=name)
            published = registry.find_published(self.client, target, name, version)
            if published:
                return Outcome(DUPLICATE, f"already published as {target} version {published[0].version}",
                               name, version)
            if not registry.onnx_artifacts(self.client, mv):
                return Outcome(REJECTED, f"model version has no .onnx artifact (source {mv.source})", name, version)
        except InputError as err:
            return Outcome(REJECTED, str(err), name, version)
        except (StorageError, ConfigError) as err:
            return Outcome(UNAVAILABLE, f"registry: {err}", name, version)
        if not (tags.get(TAG_DATA) or self.cfg.pipeline.data):
            return Outcome(REJECTED, f"no calibration dataset: set pipeline.data or tag the version {TAG_DATA}=URI",
                           name, version)
        return mv

    def run_conf(self, mv) -> dict[str, Any]:
        """The run's conf: model URI, dataset, output prefix, the shard counts of the faces' fan-outs
        (``statistics_shards``, ``validation_shards``: run parameters of the DAG and the pipeline) and a base
        config with the registry section."""
        name, version = mv.name, str(mv.version)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        rc = self.cfg.registry
        reg = {"target_name": rc.target_name.format(name=name), "experiment": rc.experiment}
        if rc.alias:
            reg["alias"] = rc.alias
        if rc.tracking_uri:
            reg["tracking_uri"] = rc.tracking_uri
        return {"model": f"models:/{name}/{version}",
                "data": (mv.tags or {}).get(TAG_DATA) or self.cfg.pipeline.data,
                "output": self.cfg.pipeline.output.format(name=safe, version=version),
                **{f.param: getattr(self.cfg.pipeline, f.param) for f in FAN_OUTS.values()},
                "config": {**self.cfg.pipeline.config, "registry": reg}}

    def trigger(self, mv, deadline: float | None = None) -> Outcome:
        """Start the run for a qualified version (retrying an unreachable orchestrator with backoff), then tag
        the source version ``ptqflow.run=<orchestrator>:<run id>`` so no later event or poll starts it again."""
        name, version = mv.name, str(mv.version)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        run_name = f"ptqflow-hook__{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}__v{version}__{stamp}"
        conf = self.run_conf(mv)
        try:
            run_id = with_retries(lambda: self.orchestrator.trigger(run_name, conf), self.cfg.retry, deadline,
                                  what=f"trigger {name}/{version}")
        except OrchestratorUnavailable as err:
            return Outcome(UNAVAILABLE, f"orchestrator unreachable after retries: {err}", name, version)
        except OrchestratorRejected as err:
            return Outcome(REJECTED, f"orchestrator refused the run: {err}", name, version)
        log.info("hook: triggered %s run %s for models:/%s/%s", self.cfg.orchestrator, run_id, name, version)
        try:
            with registry.registry_errors(f"tag models:/{name}/{version}"):
                self.client.set_model_version_tag(name, version, TAG_RUN, f"{self.cfg.orchestrator}:{run_id}")
        except (StorageError, InputError, ConfigError) as err:
            log.warning("hook: run %s started but tagging models:/%s/%s failed: %s", run_id, name, version, err)
        return Outcome(TRIGGERED, "", name, version, run_id, {"conf": conf})

    def handle(self, name: str, version: str, deadline: float | None = None) -> Outcome:
        """Qualify and trigger one model version."""
        mv = self.qualify(name, version)
        if isinstance(mv, Outcome):
            return mv
        return self.trigger(mv, deadline)


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds
