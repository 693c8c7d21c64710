"""Statistics: observed ranges, per-channel means and the quantization plan; saved as .npz + JSON, no pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptqflow.arrays import read_npz
from ptqflow.errors import InputError

NPZ, PLAN = "statistics.npz", "plan.json"


@dataclass
class Statistics:
    """What collect-stats observed and decided.

    ``mins`` / ``maxs``: per observed tensor, the per-sample minimum / maximum (one value per sample).
    ``means_in``: per bias layer name, the FP32 per-channel mean of its input (observed when FastBiasCorrection
    runs). ``means_out``: the same for the biased output; collect_statistics leaves it empty (FastBiasCorrection
    runs the FP32 layer as its reference) and older saved statistics may carry it.
    ``plan``: the quantization plan (placement.build_plan), signedness filled from the observed ranges.
    """

    plan: dict
    mins: dict[str, np.ndarray] = field(default_factory=dict)
    maxs: dict[str, np.ndarray] = field(default_factory=dict)
    means_in: dict[str, np.ndarray] = field(default_factory=dict)
    means_out: dict[str, np.ndarray] = field(default_factory=dict)
    num_samples: int = 0

    @property
    def num_points(self) -> int:
        """Number of activation quantizers in the plan."""
        return len(self.plan.get("activations", []))

    def save(self, directory) -> Path:
        """Write statistics.npz and plan.json into ``directory`` (each via a temp file + rename); returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays, index = {}, {"num_samples": self.num_samples}
        for kind in ("mins", "maxs", "means_in", "means_out"):
            keys = []
            for k, (name, arr) in enumerate(getattr(self, kind).items()):
                arrays[f"{kind}_{k}"] = np.asarray(arr, dtype=np.float64)
                keys.append(name)
            index[kind] = keys  # npz keys are positional; names live in JSON (any characters allowed)
        tmp = d / (NPZ + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, d / NPZ)
        doc = {"plan": self.plan, "index": index}
        (d / (PLAN + ".tmp")).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(d / (PLAN + ".tmp"), d / PLAN)
        return d

    @classmethod
    def load(cls, directory) -> "Statistics":
        """Read what ``save`` wrote; InputError naming the file when missing or damaged."""
        d = Path(directory)
        try:
            doc = json.loads((d / PLAN).read_text(encoding="utf-8"))
            index = doc["index"]
            data = read_npz(d / NPZ)
            kw = {kind: {name: data[f"{kind}_{k}"] for k, name in enumerate(index[kind])}
                  for kind in ("mins", "maxs", "means_in", "means_out")}
            return cls(plan=doc["plan"], num_samples=int(index["num_samples"]), **kw)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # NpzError is a ValueError
            reason = "an object array (ptqflow never loads pickles)" if getattr(exc, "pickled", False) else (
                f"{type(exc).__name__}: {exc}")
            raise InputError(f"statistics in {str(d)!r} are missing or damaged: {reason}; collect them again") from None

    def ranges(self, mean_minmax: bool = True) -> dict[str, tuple[float, float]]:
        """Per scale group: (min, max) = mean of per-sample values (default) or global extremes, merged per group."""
        per_tensor = {}
        for t in self.mins:
            lo = float(np.mean(self.mins[t])) if mean_minmax else float(np.min(self.mins[t]))
            hi = float(np.mean(self.maxs[t])) if mean_minmax else float(np.max(self.maxs[t]))
            per_tensor[t] = (lo, hi)
        groups: dict[str, tuple[float, float]] = {}
        for p in self.plan["activations"]:
            lo, hi = per_tensor[p["tensor"]]
            g = groups.get(p["group"])
            groups[p["group"]] = (lo, hi) if g is None else (min(g[0], lo), max(g[1], hi))
        return groups
