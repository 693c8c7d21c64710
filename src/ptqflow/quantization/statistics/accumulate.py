"""The statistics pass: run the model augmented for the declared statistic points (ptqflow.quantization.statistics
.collector) over the calibration samples, stacking same-shape batch-1 samples when the batch dim allows it, and
accumulate what the runs return into Statistics (per-sample minima/maxima, per-channel means and max |x|),
checked finite and with signedness in the plan."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx

from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import graph_inputs
from ptqflow.runtime.sessions import make_session
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.quantization.statistics import exact
from ptqflow.quantization.statistics.collector import augmented
from ptqflow.quantization.statistics.points import PER_SAMPLE, Reducer, StatisticPoint, parse_observation
from ptqflow.quantization.statistics.runner import make_runner
from ptqflow.quantization.statistics.store import Statistics

MAX_BATCH = 8  # samples stacked per run when the batch dim is dynamic
# Stacking saves the per-run overhead, which matters only for short runs (small inputs); a run's activations grow
# with the samples stacked. A stack stays within this many input bytes: CenterFace on 3x480x640 (3.5 MiB) peaked
# at 3.6 GiB stacking 8 and at 0.9 GiB one at a time, in the same time (bench/README.md, "Stacking by size").
MAX_STACK_BYTES = 2 * 2**20


@dataclass
class Observed:
    """What ``observe`` returns: the Statistics and the samples kept aside (the first ``keep`` of the stream, for
    the algorithms that run the model again)."""

    statistics: Statistics
    kept: list[dict]


def observe(prepared: onnx.ModelProto, plan: QuantizationPlan, points: list[StatisticPoint],
            samples: Iterator[dict], *, device: str, runtime: str, keep: int = 0) -> Observed:
    """Observe every distinct observation of ``points`` on ``samples``; InputError when there are no samples or
    an activation range holds NaN/Inf."""
    kept: list[dict] = []
    acc = accumulate(prepared, points, samples, device=device, runtime=runtime, keep=keep, kept=kept)
    if acc.count == 0:
        raise InputError("calibration dataset is empty: at least one sample is needed")
    return Observed(finalize(plan, points, acc), kept)


def accumulate(prepared: onnx.ModelProto, points: list[StatisticPoint], samples: Iterator[dict], *, device: str,
               runtime: str, keep: int = 0, kept: list | None = None, first: int = 0) -> "Accumulator":
    """Run the statistics model over ``samples`` (the calibration samples from global index ``first`` on) and
    return what was accumulated; the first ``keep`` samples are also appended to ``kept``."""
    observations = list(dict.fromkeys(p.observation for p in points))
    ranged = sorted({p.tensor for p in points if p.reducer in PER_SAMPLE})
    stackable = batchable(prepared, ranged)
    with augmented(prepared, observations, per_sample=stackable) as out_map:  # the runtime keeps its own copy
        runner = make_runner(prepared, list(out_map), device, runtime, session)
    acc = Accumulator(out_map)
    for outs, count in runner.map(batches(samples, stackable, keep, kept, first)):
        acc.add(outs, count)
    return acc


def finalize(plan: QuantizationPlan, points: list[StatisticPoint], acc: "Accumulator") -> Statistics:
    """The Statistics of what ``acc`` accumulated: checked finite, signedness filled in the plan."""
    raw = acc.result()
    values = {oid: raw[oid] for oid in dict.fromkeys(p.observation for p in points) if oid in raw}  # points' order
    stats = Statistics(plan=plan, points=list(points), values=values, num_samples=acc.count)
    check_finite(stats)
    fill_signedness(stats)
    fill_channels(stats)
    return stats


def session(model: onnx.ModelProto, device: str):
    """A session over ``model`` on ``device`` (runtime.sessions.make_session: any size, the model untouched)."""
    return make_session(model, device)


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


def stack_size(sample: dict) -> int:
    """How many samples shaped like ``sample`` one run stacks: the largest power of two up to MAX_BATCH whose stack
    stays within MAX_STACK_BYTES of input (at least 1). A power of two divides MAX_BATCH, so stacks never cross
    a block of MAX_BATCH (the unit of statistics shards)."""
    size = sum(a.nbytes for a in sample.values())
    k = MAX_BATCH
    while k > 1 and k * size > MAX_STACK_BYTES:
        k //= 2
    return k


def batches(samples: Iterator[dict], batchable: bool, keep: int, kept: list | None, first: int = 0) -> Iterator[dict]:
    """Runs to execute: consecutive same-shape batch-1 samples stacked up to ``stack_size`` when ``batchable``,
    never across a multiple of it in the global sample index (``first`` is the first sample's), so a run of all
    samples and runs of block-aligned shards stack the same samples together; the first ``keep`` samples are also
    appended to ``kept``."""
    pending: list[dict] = []
    size = MAX_BATCH

    def flush():  # a stack of one is the sample itself (a caller may know it: runtime.sessions.OutputCache)
        arrays = pending[0] if len(pending) == 1 else {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        return {"arrays": arrays, "count": len(pending)}

    for index, s in enumerate(samples, start=first):
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
        if not pending:
            size = stack_size(s)
        pending.append(s)
        if (index + 1) % size == 0:  # a stack ends where its size divides the next index: never across a block
            yield flush()
            pending = []
    if pending:
        yield flush()


class Accumulator:
    """Per-sample value lists (MIN/MAX), exact per-channel sums over the samples (MEAN/ABSMAX, see
    ptqflow.quantization.statistics.exact) and per-channel maxima (PEAK): the result does not depend on how the
    samples were grouped, and accumulators of consecutive parts of the samples merge into the accumulator of the
    whole (``merge``).
    The per-sample values are packed float64 (``array("d")``, 8 bytes a value): a list of numpy scalars took
    about 40 bytes a value, which grew with the number of samples (bench/README.md, "Memory flat in the number
    of samples")."""

    def __init__(self, out_map: dict[str, str] | None = None):
        self.out_map = out_map or {}
        self.lists: dict[str, array] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.peaks: dict[str, np.ndarray] = {}  # PEAK: the largest per-channel value so far (exact: a maximum)
        self.count = 0

    def add(self, outs: dict[str, np.ndarray], count: int) -> None:
        for out, value in outs.items():
            oid = self.out_map[out]
            reducer = parse_observation(oid)[1]
            if reducer in PER_SAMPLE:
                self.lists.setdefault(oid, array("d")).frombytes(np.ascontiguousarray(value, np.float64).tobytes())
                continue
            v = np.asarray(value, np.float64)
            rows = v.ndim == 2 and v.shape[0] == count and count > 1  # one row per stacked sample
            if reducer == Reducer.PEAK:  # else the stack's maximum already
                peak = v.max(axis=0) if rows else v
                self.peaks[oid] = np.maximum(self.peaks[oid], peak) if oid in self.peaks else peak
                continue
            if rows:
                total = exact.to_exact(v).sum(axis=0)
            else:  # one sample, or a mean over a stack (unknown rank: the stack's mean, weighted by its samples)
                total = exact.to_exact(v * count)
            self.sums[oid] = self.sums[oid] + total if oid in self.sums else total
        self.count += count

    def merge(self, later: "Accumulator") -> None:
        """Append what ``later`` accumulated on the samples that follow this accumulator's."""
        for oid, values in later.lists.items():
            self.lists.setdefault(oid, array("d")).extend(values)
        for oid, total in later.sums.items():
            self.sums[oid] = self.sums[oid] + total if oid in self.sums else total
        for oid, peak in later.peaks.items():
            self.peaks[oid] = np.maximum(self.peaks[oid], peak) if oid in self.peaks else peak
        self.count += later.count

    def result(self) -> dict[str, np.ndarray]:
        """Per observation: the per-sample values, or the per-channel values averaged over the samples, each
        correctly rounded (MEAN as float32, as FastBiasCorrection computes in; ABSMAX in float64)."""
        values: dict[str, np.ndarray] = {oid: np.array(v) for oid, v in self.lists.items()}
        values.update({oid: np.array(peak, np.float64) for oid, peak in self.peaks.items()})
        for oid, total in self.sums.items():
            mean = exact.mean(total, max(self.count, 1))
            values[oid] = mean.astype(np.float32) if parse_observation(oid)[1] == Reducer.MEAN else mean
        return values


def check_finite(stats: Statistics) -> None:
    """InputError naming the first activation tensor that held NaN or Inf."""
    mins, maxs = stats.mins, stats.maxs
    for t in mins:
        if not (np.all(np.isfinite(mins[t])) and np.all(np.isfinite(maxs[t]))):
            raise InputError(f"activation tensor {t!r} holds NaN or Inf on the calibration data; "
                             "check the input preprocessing")


def fill_signedness(stats: Statistics) -> None:
    """Record in the plan whether each quantizer is signed (int8) or not (uint8) from the observed ranges."""
    groups = stats.ranges(mean_minmax=False)
    for p in stats.plan.activations:
        p.signed = bool(groups[p.group][0] < 0)


def fill_channels(stats: Statistics) -> None:
    """Record in the plan each per-channel activation quantizer's channel maxima (``channel_absmax``); one whose
    statistic could not be made (unknown rank) goes back to one scale for the tensor."""
    peaks = stats.channel_peaks
    for p in stats.plan.activations:
        if p.axis is None:
            continue
        if p.tensor in peaks and np.ndim(peaks[p.tensor]) == 1:
            p.channel_absmax = [float(v) for v in peaks[p.tensor]]
        else:
            p.axis, p.channel_absmax = None, None
