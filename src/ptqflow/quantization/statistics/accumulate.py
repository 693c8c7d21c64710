"""The statistics pass: run the augmented model (reduce nodes, ptqflow.quantization.statistics.collector) over the calibration
samples, stacking same-shape batch-1 samples when the batch dim allows it, and accumulate what the runs return
into Statistics (per-sample minima/maxima, per-channel means), checked finite and with signedness in the plan."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import graph_inputs, is_large
from ptqflow.runtime.sessions import make_session
from ptqflow.quantization.statistics.collector import augment
from ptqflow.quantization.statistics.runner import make_runner
from ptqflow.quantization.statistics.store import Statistics

MAX_BATCH = 8  # samples stacked per run when the batch dim is dynamic


@dataclass
class Observed:
    """What ``observe`` returns: the Statistics, the per-channel max |x| of the tensors asked for, the samples
    kept aside (the first ``keep`` of the stream, for the algorithms that run the model again)."""

    statistics: Statistics
    channel_absmax: dict[str, np.ndarray]
    kept: list[dict]


def observe(prepared: onnx.ModelProto, plan: dict, samples: Iterator[dict], *, means: dict, channel_absmax: dict,
            device: str, runtime: str, keep: int = 0) -> Observed:
    """Observe the plan's activation tensors (and ``means``: key -> (tensor, channel axis); ``channel_absmax``:
    key -> (tensor, channel axis)) on ``samples``; InputError when there are none or a tensor holds NaN/Inf."""
    tensors = sorted({p["tensor"] for p in plan["activations"]})
    stackable = batchable(prepared, tensors)
    aug, out_map = augment(prepared, tensors, means, per_sample=stackable, channel_absmax=channel_absmax)
    runner = make_runner(aug, list(out_map), device, runtime, session)
    acc = Accumulator(out_map)
    n = 0
    kept: list[dict] = []
    for outs, count in runner.map(batches(samples, stackable, keep, kept)):
        acc.add(outs, count)
        n += count
    if n == 0:
        raise InputError("calibration dataset is empty: at least one sample is needed")
    stats = acc.result(plan, n)
    check_finite(stats)
    fill_signedness(stats)
    return Observed(stats, acc.channel_absmax(n), kept)


def session(model: onnx.ModelProto, device: str):
    """A session over ``model``; models over 2 GB go through a temporary file with external data."""
    if not is_large(model):
        return make_session(model, device)
    with tempfile.TemporaryDirectory(prefix="ptqflow-large-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.data")
        return make_session(path, device)


def batchable(model: onnx.ModelProto, tensors: list[str]) -> bool:
    """True when every input and observed tensor has the same symbolic batch dim 0 (safe to stack samples)."""
    params = set()
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            return False
        params.add(dims[0].dim_param)
    if len(params) != 1:
        return False
    info = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)}
    for t in tensors:
        dims = info[t].type.tensor_type.shape.dim if t in info else []
        if len(dims) < 2 or dims[0].dim_param not in params:
            return False
    return True


def batches(samples: Iterator[dict], batchable: bool, keep: int, kept: list | None) -> Iterator[dict]:
    """Runs to execute: consecutive same-shape batch-1 samples stacked up to MAX_BATCH when ``batchable``; the
    first ``keep`` samples are also appended to ``kept``."""
    pending: list[dict] = []

    def flush():
        arrays = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        return {"arrays": arrays, "count": len(pending)}

    for s in samples:
        if kept is not None and len(kept) < keep:
            kept.append(s)
        if not batchable or any(a.shape[0] != 1 for a in s.values()):
            if pending:
                yield flush()
                pending = []
            yield {"arrays": s, "count": 1}
            continue
        if pending and any(pending[0][k].shape != s[k].shape for k in s):
            yield flush()
            pending = []
        pending.append(s)
        if len(pending) == MAX_BATCH:
            yield flush()
            pending = []
    if pending:
        yield flush()


class Accumulator:
    """Per-sample minima/maxima lists and running per-channel mean sums."""

    def __init__(self, out_map: dict[str, tuple[str, str]]):
        self.out_map = out_map
        self.mins: dict[str, list] = {}
        self.maxs: dict[str, list] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.absmax_sums: dict[str, np.ndarray] = {}

    def add(self, outs: dict[str, np.ndarray], count: int) -> None:
        for out, value in outs.items():
            stat, key = self.out_map[out]
            if stat in ("mean", "absmax"):
                sums = self.sums if stat == "mean" else self.absmax_sums
                v = np.asarray(value, np.float64) * count
                sums[key] = sums[key] + v if key in sums else v
            else:
                target = self.mins if stat == "min" else self.maxs
                target.setdefault(key, []).extend(np.atleast_1d(np.asarray(value, np.float64)).ravel())

    def channel_absmax(self, n: int) -> dict[str, np.ndarray]:
        """Per observed tensor: the per-channel max |x|, averaged over the runs (weighted by samples)."""
        return {key: s / max(n, 1) for key, s in self.absmax_sums.items()}

    def result(self, plan: dict, n: int) -> Statistics:
        means_in, means_out = {}, {}
        for key, s in self.sums.items():
            kind, name = key.split("\0", 1)
            (means_in if kind == "in" else means_out)[name] = (s / n).astype(np.float32)
        return Statistics(plan=plan, mins={k: np.array(v) for k, v in self.mins.items()},
                          maxs={k: np.array(v) for k, v in self.maxs.items()},
                          means_in=means_in, means_out=means_out, num_samples=n)


def check_finite(stats: Statistics) -> None:
    """InputError naming the first activation tensor that held NaN or Inf."""
    for t in stats.mins:
        if not (np.all(np.isfinite(stats.mins[t])) and np.all(np.isfinite(stats.maxs[t]))):
            raise InputError(f"activation tensor {t!r} holds NaN or Inf on the calibration data; "
                             "check the input preprocessing")


def fill_signedness(stats: Statistics) -> None:
    """Record in the plan whether each quantizer is signed (int8) or not (uint8) from the observed ranges."""
    groups = stats.ranges(mean_minmax=False)
    for p in stats.plan["activations"]:
        p["signed"] = bool(groups[p["group"]][0] < 0)
