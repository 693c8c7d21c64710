"""Artifact manifests: what a step produced, from what, with which config.

An artifact is a directory whose ``manifest.json`` is written last and atomically (write to a temporary
name, then rename). No manifest means no artifact: a step killed half-way leaves nothing a later step trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(step: str, version: str, config: dict[str, Any], input_digests: dict[str, str]) -> str:
    """hash(step, version, config, input digests): equal keys mean an identical run."""
    payload = canonical_json({"step": step, "version": version, "config": config, "inputs": input_digests})
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Manifest:
    """The record of one artifact. ``digest`` identifies the artifact for downstream cache keys."""

    step: str
    version: str
    cache_key: str
    config: dict[str, Any]
    inputs: dict[str, str]  # input name -> digest of that input artifact
    outputs: dict[str, dict[str, Any]]  # relative path -> {"size": int, "sha256": str}
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def digest(self) -> str:
        """Content digest: over the cache key and the output files, not over timings."""
        return hashlib.sha256(canonical_json({"key": self.cache_key, "outputs": self.outputs}).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["digest"] = self.digest
        return d


def _environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "onnx", "onnxruntime", "openvino"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # an optional runtime that is not installed
            pass
    return env


def hash_outputs(out: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``out`` except the manifest itself, keyed by relative path."""
    outputs: dict[str, dict[str, Any]] = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".manifest"):
            rel = p.relative_to(out).as_posix()
            outputs[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return outputs


def write_manifest(
    out: Path,
    *,
    step: str,
    config: dict[str, Any],
    inputs: dict[str, str],
    metrics: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Hash the files in ``out`` and write ``out/manifest.json`` last, atomically. Returns the manifest."""
    from ptqflow import __version__

    m = Manifest(
        step=step,
        version=__version__,
        cache_key=cache_key(step, __version__, config, inputs),
        config=config,
        inputs=dict(inputs),
        outputs=hash_outputs(out),
        metrics=metrics or {},
        timings=timings or {},
        extra=extra or {},
        environment=_environment(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    tmp = out / f".manifest.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, out / MANIFEST_NAME)
    return m


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of an artifact directory, or None when there is none (no manifest, no artifact).
    A manifest.json that is not a ptqflow manifest (not JSON, other fields) raises InputError naming it."""
    from ptqflow.errors import InputError

    p = Path(directory) / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        d.pop("digest", None)
        return Manifest(**d)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{p}: damaged or not a ptqflow manifest ({type(err).__name__}: {err})") from None


def verify_outputs(directory: Path, manifest: Manifest, hashes: bool = True) -> list[str]:
    """Files missing or whose size (and, with ``hashes``, sha256) differ from the manifest (empty list: the
    artifact is intact)."""
    bad = []
    for rel, info in manifest.outputs.items():
        p = Path(directory) / rel
        if not p.is_file() or p.stat().st_size != info["size"] or (hashes and sha256_file(p) != info["sha256"]):
            bad.append(rel)
    return bad
