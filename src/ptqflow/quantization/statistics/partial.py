"""Partial statistics: what one shard of the calibration samples accumulated, saved so that the shards' partials
merge into exactly the Statistics one process would have collected on all of them (same values, same plan).

Exact because every statistic is accumulated per sample (MIN/MAX: a value per sample, kept in sample order;
MEAN/ABSMAX: exact sums, ptqflow.quantization.statistics.exact) and shards are whole blocks of MAX_BATCH samples,
so stacked runs group the same samples as one process does (``shard_range``).
"""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptqflow.arrays import read_npz
from ptqflow.errors import InputError
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.quantization.statistics import exact
from ptqflow.quantization.statistics.accumulate import MAX_BATCH, Accumulator
from ptqflow.quantization.statistics.points import StatisticPoint

JSON, NPZ = "partial.json", "partial.npz"
FORMAT = 1


def shard_range(num_samples: int, shard: int, shards: int) -> tuple[int, int]:
    """The samples [start, stop) of ``shard`` (0-based) of ``shards``: whole blocks of MAX_BATCH, as even as the
    blocks allow (a shard may be empty when there are more shards than blocks)."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}: expected 0 <= shard < shards")
    blocks = -(-num_samples // MAX_BATCH)
    lo, hi = shard * blocks // shards, (shard + 1) * blocks // shards
    return min(lo * MAX_BATCH, num_samples), min(hi * MAX_BATCH, num_samples)


@dataclass
class PartialStatistics:
    """One shard's accumulation: the plan as placed (before the plan passes, which run once on the merged
    statistics), the declared points, the accumulator, and which shard of how many it is, from which sample."""

    plan: QuantizationPlan
    points: list[StatisticPoint]
    accumulator: Accumulator
    shard: int
    shards: int
    start: int

    def save(self, directory) -> Path:
        """Write partial.npz (per-sample values) and partial.json (plan, points, exact sums, shard)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        acc = self.accumulator
        lists = sorted(acc.lists)
        np.savez(d / (NPZ + ".tmp.npz"), **{f"v_{k}": np.asarray(acc.lists[oid], np.float64)
                                             for k, oid in enumerate(lists)})
        os.replace(d / (NPZ + ".tmp.npz"), d / NPZ)
        doc = {"format": FORMAT, "shard": self.shard, "shards": self.shards, "start": self.start,
               "count": acc.count, "plan": self.plan.to_json(), "points": [p.to_json() for p in self.points],
               "lists": lists, "sums": {oid: exact.encode(total) for oid, total in sorted(acc.sums.items())},
               "peaks": {oid: [float(v) for v in np.ravel(peak)] for oid, peak in sorted(acc.peaks.items())}}
        (d / (JSON + ".tmp")).write_text(json.dumps(doc), encoding="utf-8")
        os.replace(d / (JSON + ".tmp"), d / JSON)
        return d

    @classmethod
    def load(cls, directory) -> "PartialStatistics":
        """Read what ``save`` wrote; InputError naming the directory when it is missing, damaged or foreign."""
        d = Path(directory)
        try:
            doc = json.loads((d / JSON).read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT:
                raise InputError(f"partial statistics in {str(d)!r} have format {doc.get('format')!r}, this "
                                 f"ptqflow reads {FORMAT}; collect the shard again")
            data = read_npz(d / NPZ) if doc["lists"] else {}  # an empty shard's npz holds no array
            acc = Accumulator()
            acc.lists = {oid: array("d", data[f"v_{k}"].astype(np.float64).tobytes())
                         for k, oid in enumerate(doc["lists"])}
            acc.sums = {oid: exact.decode(enc) for oid, enc in doc["sums"].items()}
            acc.peaks = {oid: np.array(v, np.float64) for oid, v in doc.get("peaks", {}).items()}
            acc.count = int(doc["count"])
            return cls(QuantizationPlan.from_json(doc["plan"]), [StatisticPoint.from_json(p) for p in doc["points"]],
                       acc, int(doc["shard"]), int(doc["shards"]), int(doc["start"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"partial statistics in {str(d)!r} are missing or damaged: "
                             f"{type(exc).__name__}: {exc}") from None


def require_all_shards(shards: list[tuple[int, int]], what: str) -> None:
    """InputError (naming ``what``) unless ``shards``, (shard, of) pairs, are shards 0..N-1 of N, once each."""
    ordered = sorted(shards)
    n = ordered[0][1]
    if {of for _, of in ordered} != {len(ordered)} or [i for i, _ in ordered] != list(range(len(ordered))):
        raise InputError(f"{what}: expected shards 0..{n - 1} of {n} once each, got {ordered}")


def merge(partials: list[PartialStatistics]) -> tuple[QuantizationPlan, list[StatisticPoint], Accumulator]:
    """The plan, points and accumulator of all ``partials`` together, as one process would have had them;
    InputError when they are not the shards 0..N-1 of one collection (another plan, other points, a shard
    missing or twice, not consecutive)."""
    if not partials:
        raise InputError("merge-stats: no partial statistics given")
    ordered = sorted(partials, key=lambda p: p.shard)
    first = ordered[0]
    require_all_shards([(p.shard, p.shards) for p in partials], "merge-stats")
    plan_doc, points = first.plan.to_json(), first.points
    acc, expected_start = Accumulator(), 0
    for p in ordered:
        if p.plan.to_json() != plan_doc or p.points != points:
            raise InputError(f"merge-stats: shard {p.shard} was collected with another model or config than shard "
                             f"{first.shard} (its plan or statistic points differ)")
        if p.start != expected_start:
            raise InputError(f"merge-stats: shard {p.shard} starts at sample {p.start}, expected {expected_start} "
                             "(the shards were cut from different sample counts)")
        acc.merge(p.accumulator)
        expected_start += p.accumulator.count
    return QuantizationPlan.from_json(plan_doc), list(points), acc
