"""merge-validation: merge the partial results of validate --shard 0/N .. N-1/N into the artifact validate would
have written on the whole validation split: report.json, report.html and the gate verdict (a failed gate is
published, then raised, as validate does).

Exact because validate accumulates counts, exact sums and per-class tallies per sample (``metrics.ValidationSums``)
and both steps finalize them with the same code (``validate.finalize``). Speed is not merged: shard 0 measured it
once, on the split's first sample, where the models run (this step runs none, so it needs no device); its figures
are copied. Not a step of the chain (``ptqflow run`` validates in one process): ``ptqflow merge-validation
--in-partials V_0 ... V_N-1 --output V``. Its inputs are named ``partial-K`` in the order given; the shard numbers
recorded in them decide the merge order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, read_manifest
from ptqflow.config import PipelineConfig
from ptqflow.errors import InputError
from ptqflow.pipeline import metrics as M
from ptqflow.pipeline.steps import validate
from ptqflow.quantization.statistics.partial import require_all_shards

NAME = "merge-validation"
INPUTS: tuple[str, ...] = ()  # one input per partial, named partial-0 .. partial-N-1 (given at run time)


def config_section(cfg: PipelineConfig) -> dict:
    """What validate keys on: the merged artifact is what it would have written."""
    return validate.config_section(cfg)


@dataclass
class Partial:
    """One shard's partial validation: which shard of how many, its samples [start, stop) of the split, its sums,
    and (shard 0) the speed figures and the per-layer decisions."""

    shard: int
    shards: int
    start: int
    stop: int
    split_samples: int
    sums: M.ValidationSums
    speed: dict | None
    decisions: list[dict] | None = None  # shard 0: the quantize step's per-layer summary, for report.html

    @classmethod
    def load(cls, directory: Path) -> "Partial":
        """Read validate --shard's partial.json; InputError naming the directory when it is missing or damaged."""
        path = Path(directory) / validate.PARTIAL
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != validate.PARTIAL_FORMAT:
                raise InputError(f"{path}: partial validation format {doc.get('format')!r}, this ptqflow reads "
                                 f"{validate.PARTIAL_FORMAT}; validate the shard again")
            return cls(int(doc["shard"]), int(doc["shards"]), int(doc["start"]), int(doc["stop"]),
                       int(doc["split_samples"]), M.ValidationSums.from_json(doc["sums"]), doc["speed"], doc.get("decisions"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: partial validation missing or damaged: {type(exc).__name__}: {exc}") from None


def merge(partials: list[Partial]) -> tuple[M.ValidationSums, dict]:
    """The sums of all ``partials`` and shard 0's speed; InputError when they are not shards 0..N-1 of one split,
    once each, cut from the same sample count."""
    ordered = sorted(partials, key=lambda p: p.shard)
    require_all_shards([(p.shard, p.shards) for p in partials], "merge-validation")
    sums, expected = M.ValidationSums(), 0
    for p in ordered:
        if p.start != expected or p.split_samples != ordered[0].split_samples:
            raise InputError(f"merge-validation: shard {p.shard} covers samples {p.start}..{p.stop} of "
                             f"{p.split_samples}, expected from {expected} of {ordered[0].split_samples} (the shards "
                             "were cut from different validation splits)")
        if p.shard == 0:
            sums = p.sums
        else:
            try:
                sums.merge(p.sums)
            except ValueError as err:
                raise InputError(f"merge-validation: shard {p.shard} ran other models than shard 0: {err}") from None
        expected = p.stop
    if expected != ordered[0].split_samples or ordered[0].speed is None:
        raise InputError(f"merge-validation: the shards cover {expected} of {ordered[0].split_samples} samples "
                         "or shard 0 measured no speed; validate the shards again")
    return sums, ordered[0].speed


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Merge the partials in ``inputs`` into ``out`` (report.json, report.html, manifest), as validate writes them;
    GateFailedError after writing when the gate fails."""
    start = time.monotonic()
    validate.check_shardable(cfg.validation, NAME)
    section = config_section(cfg)
    partials, validated, first = [], None, None
    for name, path in inputs.items():
        manifest = read_manifest(Path(path))
        if manifest is None or manifest.step != validate.NAME or "shard" not in manifest.config:
            raise InputError(f"merge-validation: input {name} at {path} is not the output of validate --shard")
        shard = manifest.config["shard"]
        if {k: v for k, v in manifest.config.items() if k != "shard"} != section:
            raise InputError(f"merge-validation: input {name} (shard {shard}) was validated with another config than "
                             "this merge's; merge with the shards' config")
        if validated is not None and manifest.inputs != validated:
            raise InputError(f"merge-validation: input {name} (shard {shard}) validated other artifacts than shard "
                             f"{first} (model, quantized or calibration digests differ)")
        validated, first = manifest.inputs, first or shard
        partials.append(Partial.load(Path(path)))
    sums, speed = merge(partials)
    decisions = next((p.decisions for p in partials if p.shard == 0), None)
    report = validate.finalize(sums, speed, cfg, decisions=decisions)
    return validate.publish_report(out, report, NAME, section, input_digests(inputs),
                                   {"total_s": round(time.monotonic() - start, 3)},
                                   extra={"shards": len(partials), "validated": validated})
