"""Per-tensor activation ranges chosen by measured error: for each scale group, candidate ranges (the mean of
the per-sample minima and maxima, the global ones, percentiles of the values, and the clip that minimizes the
squared error) are each written as the quantizer would write them and their squared error against the FP32
values is measured on calibration samples; the candidate with the smallest error wins.

The FP32 values are held as a uniform random sample per group (at most SAMPLED_VALUES, an equal share drawn
from each calibration sample's tensors as they come), so the measurement costs one run per sample and a fixed
amount of memory. Each candidate's error is the mean squared error of those values after quantize ->
dequantize with the candidate's scale and zero point (``minmax.activation_params``, what the QDQ writer uses):
exact on the sampled values, whatever the clip (a histogram over the global range would be coarser than the
int8 step of a clipped range).

A tensor's squared error is not the model's: a clip that is best for one tensor can cost the output more (a
channel of large values clipped to fit many small ones). So the chosen ranges are judged as a whole (``judge``):
the model's output error against FP32 (``output_error.OutputError``, the mixed-precision search's measure) with
them and with the default estimator's ranges, on held-out calibration samples; they are kept only where they
lower it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx

from ptqflow.quantization.algorithms.minmax import activation_params
from ptqflow.quantization.algorithms.output_error import OutputError
from ptqflow.quantization.plan import QuantizationPlan

SAMPLED_VALUES = 1 << 14  # values kept per group: the error of a candidate is measured on these
PERCENTILES = (99.9, 99.99, 99.999)  # share of the values a percentile candidate keeps inside its range
CLIP_STEPS = 64  # clip candidates of the squared-error search, geometrically spaced in [1/1024, 1] of the global range
_QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}
_BLOCK = 16  # candidate ranges measured per array operation (16 x SAMPLED_VALUES float64: 2 MiB)


@dataclass
class Values:
    """A uniform random sample of a group's values, drawn as they come; [lo, hi] its global range."""

    lo: float
    hi: float
    per_run: int = SAMPLED_VALUES
    kept: list = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add(self, values: np.ndarray) -> None:
        values = values.ravel()
        if values.size > self.per_run:
            values = self.rng.choice(values, self.per_run, replace=False)
        self.kept.append(values.astype(np.float64))

    @property
    def all(self) -> np.ndarray:
        return np.concatenate(self.kept) if self.kept else np.zeros(1)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.all, q))


def squared_errors(x: np.ndarray, ranges: list[tuple[float, float]], symmetric: bool, signed: bool,
                   qtype: str | None) -> np.ndarray:
    """Mean squared error of the values ``x`` written with each range [lo, hi] and read back (in blocks of
    ranges, one array operation each)."""
    errors = []
    for start in range(0, len(ranges), _BLOCK):
        params = [activation_params(lo, hi, symmetric, signed, qtype) for lo, hi in ranges[start:start + _BLOCK]]
        scale = np.array([p[0] for p in params])[:, None]
        zp = np.array([p[1] for p in params], np.float64)[:, None]
        bounds = np.array([_QRANGE[p[2]] for p in params], np.float64)
        back = (np.clip(np.round(x[None, :] / scale) + zp, bounds[:, :1], bounds[:, 1:]) - zp) * scale
        errors.append(np.mean((back - x[None, :]) ** 2, axis=1))
    return np.concatenate(errors) if errors else np.zeros(0)


def squared_error(x: np.ndarray, lo: float, hi: float, symmetric: bool, signed: bool, qtype: str | None) -> float:
    """Mean squared error of the values ``x`` written with the range [lo, hi] and read back."""
    return float(squared_errors(x, [(lo, hi)], symmetric, signed, qtype)[0])


def candidates(h: Values, mean_minmax: tuple[float, float], signed: bool) -> dict[str, tuple[float, float]]:
    """The ranges to compare: MinMax's two estimators, the percentiles and the squared-error-optimal clip (its
    error measured below with the others)."""
    found = {"mean_minmax": mean_minmax, "minmax": (h.lo, h.hi)}
    for p in PERCENTILES:
        tail = (100.0 - p) / 100.0
        found[f"percentile_{p:g}"] = (h.quantile(tail) if signed else 0.0, h.quantile(1.0 - tail))
    return found


def choose(h: Values, mean_minmax: tuple[float, float], symmetric: bool, signed: bool,
           qtype: str | None) -> dict:
    """The candidate with the smallest squared error: {"estimator", "min", "max", "error", "errors"}."""
    ranges = candidates(h, mean_minmax, signed)
    x = h.all
    errors = dict(zip(ranges, squared_errors(x, list(ranges.values()), symmetric, signed, qtype).tolist()))
    clips = [(h.lo * k, h.hi * k) for k in np.geomspace(1.0 / 1024, 1.0, CLIP_STEPS)]
    clip_errors = squared_errors(x, clips, symmetric, signed, qtype)
    best = int(np.argmin(clip_errors))
    ranges["mse"], errors["mse"] = clips[best], clip_errors[best]
    name = min(errors, key=lambda k: (errors[k], k != "mean_minmax"))  # a tie keeps the default estimator
    lo, hi = ranges[name]
    return {"estimator": name, "min": float(lo), "max": float(hi), "error": errors[name],
            "errors": {k: float(v) for k, v in errors.items()}}


def search(plan: QuantizationPlan, mean_minmax: dict[str, tuple[float, float]],
           minmax: dict[str, tuple[float, float]], values: Iterable[dict[str, np.ndarray]], samples: int,
           qtype: str | None) -> dict:
    """Per scale group of ``plan``: ``choose``'s record, measured on ``values`` (per calibration sample, the FP32
    value of every planned activation tensor; ``samples`` of them). A per-channel quantizer's group is left out:
    its scales come from each channel's maximum (minmax.channel_scales), not from one range."""
    share = max(1, SAMPLED_VALUES // max(samples, 1))
    group_of = {p.tensor: p.group for p in plan.activations if p.axis is None}
    hists = {g: Values(*minmax[g], per_run=share) for g in set(group_of.values())}
    for per_tensor in values:
        for t, value in per_tensor.items():
            if t in group_of:  # drawn from before widening: a tensor may hold millions
                hists[group_of[t]].add(np.asarray(value))
    first = {}
    for p in plan.activations:
        if p.group in hists:
            first.setdefault(p.group, p)
    return {g: choose(h, mean_minmax[g], first[g].symmetric, bool(first[g].signed), qtype)
            for g, h in sorted(hists.items())}


def onnx_values(prepared: onnx.ModelProto, tensors: list[str], samples: list[dict],
                make_session: Callable) -> Iterator[dict[str, np.ndarray]]:
    """The FP32 values of ``tensors`` on each of ``samples``: ``prepared`` run with them as outputs (added for the
    session's making and taken out again: no copy of the model's weights, whatever its size)."""
    outputs, kept = {o.name for o in prepared.graph.output}, len(prepared.graph.output)
    prepared.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    try:
        session = make_session(prepared)
    finally:
        del prepared.graph.output[kept:]
    inputs = {i.name for i in session.get_inputs()}
    for s in samples:
        yield dict(zip(tensors, session.run(tensors, {k: v for k, v in s.items() if k in inputs})))


def relative_error(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> float:
    """The mean over the float outputs of each output's squared error over its FP32 energy, pooled over the samples
    (1 / SQNR): the error the output's widest values dominate (a detector's box coordinates in pixels), which the
    per-channel normalized error weighs as little as any other channel."""
    found = []
    for j in range(len(refs[0]) if refs else 0):
        if not np.issubdtype(refs[0][j].dtype, np.floating):
            continue
        err = sum(float(np.sum((o[j].astype(np.float64) - r[j]) ** 2)) for o, r in zip(outs, refs))
        energy = sum(float(np.sum(r[j].astype(np.float64) ** 2)) for r in refs)
        found.append(err / max(energy, 1e-30))
    return float(np.mean(found)) if found else 0.0


def judge(names: list[str], decisions: set[str], refs: list[list], run: Callable[[dict], list[list]],
          default: dict[str, tuple[float, float]], chosen: dict[str, tuple[float, float]],
          masks: list | None = None) -> dict:
    """The verdict on ``chosen`` ranges (scale group -> (min, max)) against ``default``: ``run(ranges)`` gives the
    outputs (``names`` order, one list per sample) of the model written with those ranges on the samples whose FP32
    outputs are ``refs``. Two measures, each seeing what the other misses: the per-channel normalized error
    (``output_error.OutputError``, Softmax heads ``decisions`` as the mixed-precision search measures them: a
    detector's scores next to its coordinates) and the relative squared error (``relative_error``: the coordinates
    themselves). The chosen ranges are kept when they lower the first and do not raise the second: on ddddocr's
    detector the first fell and the second rose (3 dB of output SQNR lost, box F1 against the truth 0.83 -> 0.79).
    {"kept", "error_chosen", "error_default", "relative_chosen", "relative_default", "output": the output whose
    normalized error moved the most, "samples"}. ``masks``: the samples' padding masks (``output_error.token_masks``),
    where both measures see the real tokens only."""
    metric = OutputError(names, refs, decisions, tie_weight=0.0, decisions_as="mass", masks=masks)
    outs = {"default": run(default), "chosen": run(chosen)}
    before, after = (metric.per_output(outs[k]) for k in ("default", "chosen"))
    rel_before, rel_after = (relative_error(metric.masked(outs[k]), metric.refs) for k in ("default", "chosen"))
    kept = bool(np.mean(after) < np.mean(before) and rel_after <= rel_before)  # a tie keeps the default estimator
    moved = before - after if kept else after - before
    return {"kept": kept, "error_chosen": float(np.mean(after)), "error_default": float(np.mean(before)),
            "relative_chosen": rel_after, "relative_default": rel_before,
            "output": names[int(np.argmax(moved))], "samples": len(refs)}
