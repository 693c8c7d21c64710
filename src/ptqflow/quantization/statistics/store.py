"""Statistics: the declared statistic points, what was observed for them, and the quantization plan; saved as
.npz + JSON, no pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptqflow.arrays import read_npz
from ptqflow.errors import InputError
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.quantization.statistics.points import Reducer, StatisticPoint

NPZ, PLAN = "statistics.npz", "plan.json"
FORMAT = 2  # 2: values keyed by observation, with the statistic points that asked for them


@dataclass
class Statistics:
    """What collect-stats declared, observed and decided.

    ``points``: the statistic points the consumers declared (ptqflow.quantization.statistics.points);
    ``values``: per observation id, what was observed (MIN/MAX: one value per sample; MEAN/ABSMAX: per channel,
    averaged over the samples); an observation the collector could not make (unknown rank) has no value.
    ``plan``: the quantization plan, signedness filled from the observed ranges.
    """

    plan: QuantizationPlan
    points: list[StatisticPoint] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    num_samples: int = 0

    def of(self, consumer: str) -> dict[str, np.ndarray]:
        """``consumer``'s statistics by its own keys (points without an observed value are left out)."""
        return {p.key: self.values[p.observation] for p in self.points
                if p.consumer == consumer and p.observation in self.values}

    def missing(self, points: list[StatisticPoint]) -> list[StatisticPoint]:
        """The points of ``points`` these statistics were not collected for (a consumer's config differs from the
        one collect-stats ran with)."""
        held = {(p.consumer, p.key, p.observation) for p in self.points}
        return [p for p in points if (p.consumer, p.key, p.observation) not in held]

    def _reduced(self, reducer: Reducer) -> dict[str, np.ndarray]:
        return {p.tensor: self.values[p.observation] for p in self.points
                if p.consumer == MINMAX and p.reducer == reducer and p.observation in self.values}

    @property
    def mins(self) -> dict[str, np.ndarray]:
        """Per activation tensor of the plan, its per-sample minima (MinMax's statistics)."""
        return self._reduced(Reducer.MIN)

    @property
    def maxs(self) -> dict[str, np.ndarray]:
        """Per activation tensor of the plan, its per-sample maxima (MinMax's statistics)."""
        return self._reduced(Reducer.MAX)

    @property
    def channel_peaks(self) -> dict[str, np.ndarray]:
        """Per per-channel activation quantizer of the plan, each channel's largest |x| over the samples."""
        return self._reduced(Reducer.PEAK)

    @property
    def means_in(self) -> dict[str, np.ndarray]:
        """Per bias layer, the FP32 per-channel mean of its input (FastBiasCorrection's statistics)."""
        return self.of(FAST_BIAS_CORRECTION)

    @property
    def num_points(self) -> int:
        """Number of activation quantizers in the plan."""
        return len(self.plan.activations)

    def save(self, directory) -> Path:
        """Write statistics.npz and plan.json into ``directory`` (each via a temp file + rename); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        observed = list(self.values)
        arrays = {f"v_{k}": np.asarray(self.values[oid], dtype=np.float64) for k, oid in enumerate(observed)}
        index = {"format": FORMAT, "num_samples": self.num_samples, "points": [p.to_json() for p in self.points],
                 "observed": observed}  # npz keys are positional; names live in JSON (any characters allowed)
        tmp = d / (NPZ + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, d / NPZ)
        doc = {"plan": self.plan.to_json(), "index": index}
        (d / (PLAN + ".tmp")).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(d / (PLAN + ".tmp"), d / PLAN)
        return d

    @classmethod
    def load(cls, directory) -> "Statistics":
        """Read what ``save`` wrote; InputError naming the file when missing, damaged or of an older format."""
        d = Path(directory)
        try:
            doc = json.loads((d / PLAN).read_text(encoding="utf-8"))
            index = doc["index"]
            if index.get("format") != FORMAT:
                raise InputError(f"statistics in {str(d)!r} were saved in format {index.get('format', 1)}, this "
                                 f"ptqflow reads format {FORMAT}; collect them again")
            data = read_npz(d / NPZ)
            values = {oid: data[f"v_{k}"] for k, oid in enumerate(index["observed"])}
            return cls(plan=QuantizationPlan.from_json(doc["plan"]),
                       points=[StatisticPoint.from_json(p) for p in index["points"]], values=values,
                       num_samples=int(index["num_samples"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # NpzError is a ValueError
            reason = "an object array (ptqflow never loads pickles)" if getattr(exc, "pickled", False) else (
                f"{type(exc).__name__}: {exc}")
            raise InputError(f"statistics in {str(d)!r} are missing or damaged: {reason}; collect them again") from None

    def ranges(self, mean_minmax: bool = True) -> dict[str, tuple[float, float]]:
        """Per scale group: (min, max) = mean of per-sample values (default) or global extremes, merged per group;
        a range the plan records as chosen by measured error (``plan.ranges``) instead, whichever is asked."""
        mins, maxs = self.mins, self.maxs
        per_tensor = {}
        for t in mins:
            lo = float(np.mean(mins[t])) if mean_minmax else float(np.min(mins[t]))
            hi = float(np.mean(maxs[t])) if mean_minmax else float(np.max(maxs[t]))
            per_tensor[t] = (lo, hi)
        groups: dict[str, tuple[float, float]] = {}
        for p in self.plan.activations:
            lo, hi = per_tensor[p.tensor]
            g = groups.get(p.group)
            groups[p.group] = (lo, hi) if g is None else (min(g[0], lo), max(g[1], hi))
        for group, chosen in self.plan.ranges.items():  # chosen by measured error (passes/range_search.py)
            if group in groups:
                groups[group] = (float(chosen["min"]), float(chosen["max"]))
        return groups


# The consumers whose statistics the engine itself reads: MinMax (minmax.statistic_points) and FastBiasCorrection.
MINMAX = "minmax"
FAST_BIAS_CORRECTION = "fast_bias_correction"
