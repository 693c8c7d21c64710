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
from typing import Callable

import numpy as np
import onnx

from ptqflow.quantization.algorithms.minmax import activation_params
from ptqflow.quantization.algorithms.output_error import OutputError, decision_outputs
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


def search(prepared: onnx.ModelProto, plan: QuantizationPlan, mean_minmax: dict[str, tuple[float, float]],
           minmax: dict[str, tuple[float, float]], samples: list[dict], make_session, qtype: str | None) -> dict:
    """Per scale group of ``plan``: ``choose``'s record, measured on the FP32 values of ``samples``."""
    tensors = sorted({p.tensor for p in plan.activations})
    probe = onnx.ModelProto()
    probe.CopyFrom(prepared)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in outputs)
    session = make_session(probe)
    del probe
    inputs = {i.name for i in session.get_inputs()}
    share = max(1, SAMPLED_VALUES // max(len(samples), 1))
    hists = {g: Values(*minmax[g], per_run=share) for g in {p.group for p in plan.activations}}
    group_of = {p.tensor: p.group for p in plan.activations}
    for s in samples:
        for t, value in zip(tensors, session.run(tensors, {k: v for k, v in s.items() if k in inputs})):
            hists[group_of[t]].add(np.asarray(value, np.float64).ravel())
    first = {}
    for p in plan.activations:
        first.setdefault(p.group, p)
    return {g: choose(h, mean_minmax[g], first[g].symmetric, bool(first[g].signed), qtype)
            for g, h in sorted(hists.items())}


def judge(prepared: onnx.ModelProto, write: Callable[[dict], onnx.ModelProto], make_session: Callable,
          default: dict[str, tuple[float, float]], chosen: dict[str, tuple[float, float]], samples: list[dict],
          references: Callable[[list[dict]], list[list]] | None = None) -> dict:
    """The verdict on ``chosen`` ranges (scale group -> (min, max)) against ``default``: the model written with each
    (``write(ranges)``, run by ``make_session``) measured against the FP32 outputs of ``samples`` (``references``,
    else a session of ``prepared``). {"kept": the chosen lower the output error, "error_chosen",
    "error_default", "output": the output whose error moved the most, "samples"}."""
    names = [o.name for o in prepared.graph.output]
    if references is None:
        fp32 = make_session(prepared)
        refs = [fp32.run(names, s) for s in samples]
        del fp32
    else:
        refs = references(samples)
    metric = OutputError(names, refs, decision_outputs(prepared), tie_weight=0.0, decisions_as="mass")

    def errors(ranges: dict) -> np.ndarray:
        session = make_session(write(ranges))
        return metric.per_output([session.run(names, s) for s in samples])

    before, after = errors(default), errors(chosen)
    kept = bool(np.mean(after) < np.mean(before))  # a tie keeps the default estimator
    moved = before - after if kept else after - before
    return {"kept": kept, "error_chosen": float(np.mean(after)), "error_default": float(np.mean(before)),
            "output": names[int(np.argmax(moved))], "samples": len(samples)}
