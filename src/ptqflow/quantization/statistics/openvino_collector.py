"""Statistics of an OpenVINO model, observed by OpenVINO itself: the ov.Model counterpart of ``collector.augment``.

The same observations (ptqflow.quantization.statistics.points ids) become OpenVINO reduce ops on the observed
output ports, each a Result of a statistics model that shares the FP32 graph; the runner (OpenVINO CPU at f32,
statistics.runner.OpenVINORunner) runs it and ``accumulate.Accumulator`` accumulates the values exactly as on the
ONNX path. Samples are stacked as on the ONNX path when the view shows every observed tensor keeping the batch in
axis 0 (the input's batch symbol propagated by OpenVINO's shape inference, graph.openvino_view.mark_batch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ptqflow.errors import InputError
from ptqflow.quantization.graph.openvino_view import BoundView, OVView
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.quantization.statistics.accumulate import Accumulator, Observed, batchable, batches, finalize
from ptqflow.quantization.statistics.points import (PER_SAMPLE, Reducer, StatisticPoint, channel_range_axes,
                                                   channel_range_reduction, parse_observation)
from ptqflow.quantization.statistics.runner import OpenVINORunner


def _axes(rank: int, keep: set[int]) -> np.ndarray:
    return np.array([a for a in range(rank) if a not in keep], np.int64)


def augment(model: ov.Model, bound: BoundView, observations: list[str], per_sample: bool
            ) -> tuple[ov.Model, dict[str, str]]:
    """A statistics model over ``model``'s graph with one reduction output per observation (its tensor a view
    tensor of ``bound``), and the map added output name -> observation id; collector.augment's reductions: MIN/MAX
    reduce each run to a scalar, or to one value per sample when ``per_sample`` (stacked samples); MEAN and ABSMAX
    to the per-channel vector of their axis (one row per sample when ``per_sample``). An observation whose tensor's
    rank is unknown is left out (its consumer finds no value, as on the ONNX path)."""
    results, out_map = [], {}
    shared = _channel_ranges(bound, observations, per_sample)
    for i, oid in enumerate(observations):
        tensor, reducer, axis = parse_observation(oid)
        port = bound.port(tensor)
        rank = port.get_partial_shape().rank
        if rank.is_dynamic:
            continue
        r = rank.get_length()
        batch = {0} if per_sample and r > 1 else set()
        pair = shared.get(tensor)
        if pair is not None and reducer in (Reducer.MIN, Reducer.MAX):  # the row's (or vector's) extreme
            lo, hi = pair[1:]
            fn = ops.reduce_min if reducer == Reducer.MIN else ops.reduce_max
            node = fn(lo if reducer == Reducer.MIN else hi, np.array([1] if per_sample else [0], np.int64),
                      keep_dims=False)
        elif pair is not None and reducer in (Reducer.ABSMAX, Reducer.PEAK) and pair[0] == axis:
            node = ops.maximum(pair[2], ops.negative(pair[1]))
        else:
            if reducer in (Reducer.MIN, Reducer.MAX):
                fn, src, axes = (ops.reduce_min if reducer == Reducer.MIN else ops.reduce_max), port, _axes(r, batch)
            else:
                src = ops.abs(port) if reducer in (Reducer.ABSMAX, Reducer.PEAK) else port
                fn = ops.reduce_max if reducer in (Reducer.ABSMAX, Reducer.PEAK) else ops.reduce_mean
                axes = _axes(r, batch | ({axis % r} if r else set()))
            # nothing to reduce (a scalar; [N, C] stacked): the value is the statistic (the CPU plugin refuses a
            # reduction over no axes)
            node = fn(src, axes, keep_dims=False) if axes.size else ops.convert(src, ov.Type.f32)
        out = f"ptqflow_stat_{reducer.value}_{i}"
        output = node.output(0)
        output.get_tensor().set_names({out})
        results.append(ops.result(output))
        out_map[out] = oid
    return ov.Model(results, model.get_parameters(), "ptqflow-statistics"), out_map


def _channel_ranges(bound: BoundView, observations: list[str], per_sample: bool) -> dict[str, tuple]:
    """Tensor -> (channel axis, per-channel minima, per-channel maxima) for the tensors whose MIN/MAX and channel
    max |x| come from one pair of reductions (points.channel_range_reduction, as on the ONNX path)."""
    found = {}
    for tensor, axis in channel_range_axes(observations).items():
        port = bound.port(tensor)
        rank = port.get_partial_shape().rank
        axes = channel_range_reduction(axis, None if rank.is_dynamic else rank.get_length(), per_sample)
        if axes is not None:
            axes = np.array(axes, np.int64)
            found[tensor] = (axis, ops.reduce_min(port, axes, keep_dims=False),
                             ops.reduce_max(port, axes, keep_dims=False))
    return found


def observe(model: ov.Model, view: OVView, plan: QuantizationPlan, points: list[StatisticPoint],
            samples: Iterator[dict], *, keep: int = 0) -> Observed:
    """Observe every distinct observation of ``points`` on ``samples`` with OpenVINO CPU, stacking samples when the
    view shows every input and observed tensor keeps the batch in axis 0 (accumulate.batchable); the Statistics
    checked as on the ONNX path, and the first ``keep`` samples. InputError when there are no samples."""
    observations = list(dict.fromkeys(p.observation for p in points))
    stackable = batchable(view.view, sorted({p.tensor for p in points if p.reducer in PER_SAMPLE}))
    aug, out_map = augment(model, view.bind(model), observations, stackable)
    runner = OpenVINORunner(aug, list(out_map))
    acc = Accumulator(out_map)
    kept: list[dict] = []
    for outs, count in runner.map(batches(samples, stackable, keep, kept)):
        acc.add(outs, count)
    if acc.count == 0:
        raise InputError("calibration dataset is empty: at least one sample is needed")
    return Observed(finalize(plan, points, acc), kept)
