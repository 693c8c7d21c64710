"""Statistics by augmenting the graph with reduce nodes, streamed over the calibration data.

The reductions are the distinct observations of the declared statistic points (ptqflow.quantization.statistics
.points). Only scalars (per-sample min/max) and per-channel vectors leave the runtime, so memory per sample stays
bounded whatever the activation sizes. An explicit map ties each added output to the observation it computes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import graph_inputs, onnx_opset
from ptqflow.quantization.statistics.points import (Reducer, channel_range_axes, channel_range_reduction,
                                                   parse_observation)


def _reduce(op: str, src: str, out: str, axes: list[int] | None, opset: int, extra: list) -> onnx.NodeProto:
    """One Reduce* node (axes as attribute before opset 18, as input from 18; ReduceMean likewise)."""
    if axes is None:
        return helper.make_node(op, [src], [out], keepdims=0, name=out)
    if opset >= 18:
        axes_name = out + "_axes"
        extra.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        return helper.make_node(op, [src, axes_name], [out], keepdims=0, name=out)
    return helper.make_node(op, [src], [out], keepdims=0, axes=axes, name=out)


def _rank(model: onnx.ModelProto, tensor: str) -> int | None:
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _channel_mean_nodes(src: str, out: str, axis: int, rank: int | None, opset: int, extra: list,
                        per_sample: bool = False) -> list[onnx.NodeProto] | None:
    """Nodes computing the per-channel mean of ``src`` over every axis but ``axis`` (and the batch, one row per
    sample, when ``per_sample``) into ``out``.

    Without a known rank, a last-axis channel (MatMul inputs and outputs, whose rank shape inference often
    loses after a Reshape with a computed shape) is still observed: Flatten to [N, C], then the mean over N
    (observe() never stacks samples then: see batchable). Returns None when the channel axis cannot be located.
    """
    if rank is not None:
        ax = axis % rank
        keep = {ax, 0} if per_sample and ax != 0 else {ax}
        axes = [a for a in range(rank) if a not in keep]
        if not axes:  # [N, C] stacked: the tensor is its own per-sample mean (empty axes would reduce all)
            return [helper.make_node("Identity", [src], [out], name=out)]
        return [_reduce("ReduceMean", src, out, axes, opset, extra)]
    if axis != -1 or opset < 11:  # Flatten takes a negative axis from opset 11
        return None
    flat = out + "_flat"
    return [helper.make_node("Flatten", [src], [flat], axis=-1, name=flat),
            _reduce("ReduceMean", flat, out, [0], opset, extra)]


def augment(model: onnx.ModelProto, observations: list[str], per_sample: bool,
            ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` augmented as ``augmented`` does it in place; and the map added output -> observation
    id. For callers that add more to the copy; the statistics pass uses ``augmented`` (no copy of the weights)."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    return aug, _add_reductions(aug, observations, per_sample)


@contextmanager
def augmented(model: onnx.ModelProto, observations: list[str], per_sample: bool) -> Iterator[dict[str, str]]:
    """``model`` itself with the reduction outputs of ``_add_reductions`` for the duration of the block (which
    hands a runtime the augmented model); yields the map added output -> observation id. Afterwards ``model`` is
    as it was, field for field: the added nodes, initializers and outputs were appended, and are cut off again.
    No copy of the model is made (for a model over 2 GB, a model's size of memory saved)."""
    g = model.graph
    marks = {name: len(getattr(g, name)) for name in ("node", "initializer", "output")}
    try:
        yield _add_reductions(model, observations, per_sample)
    finally:
        for name, length in marks.items():
            del getattr(g, name)[length:]


def _add_reductions(model: onnx.ModelProto, observations: list[str], per_sample: bool) -> dict[str, str]:
    """Append to ``model`` one reduction output per observation (ptqflow.quantization.statistics.points ids,
    each computed once), nodes, initializers and graph outputs each after the existing ones; returns the map added
    output -> observation id.

    MIN/MAX reduce over all axes but the batch when ``per_sample`` (stacked samples), else over all axes; MEAN and
    ABSMAX over all axes but their channel axis and, when ``per_sample``, the batch: every statistic comes back
    per sample, so it does not depend on how samples were stacked (and partial statistics of any split of the
    samples merge exactly, ptqflow.quantization.statistics.partial). An observation whose tensor's rank (needed to locate the
    channel axis) is unknown is left out, and its consumer finds no value for it.
    """
    g = model.graph
    opset = onnx_opset(model)
    extra: list = []
    out_map: dict[str, str] = {}
    existing = {o.name for o in g.output}
    ranges = _channel_ranges(model, observations, per_sample, opset, extra)
    for i, oid in enumerate(observations):
        tensor, reducer, axis = parse_observation(oid)
        out = f"ptqflow_stat_{reducer.value}_{i}"
        shared = ranges.get(tensor)
        if shared is not None and (reducer in (Reducer.MIN, Reducer.MAX)
                                   or (reducer in (Reducer.ABSMAX, Reducer.PEAK) and shared.axis == axis)):
            nodes = shared.derive(reducer, out)
        elif reducer in (Reducer.MIN, Reducer.MAX):
            rank = _rank(model, tensor) if per_sample else None
            axes = list(range(1, rank)) if rank and rank > 1 else None
            nodes = [_reduce("ReduceMin" if reducer == Reducer.MIN else "ReduceMax", tensor, out, axes, opset, extra)]
        elif reducer == Reducer.MEAN:
            nodes = _channel_mean_nodes(tensor, out, axis, _rank(model, tensor), opset, extra, per_sample)
        else:  # ABSMAX, PEAK: the per-channel max |x| of each run (the accumulator averages or takes the largest)
            rank = _rank(model, tensor)
            if rank is None:
                continue
            ax = axis % rank
            keep = {ax, 0} if per_sample and ax != 0 else {ax}  # stacked samples: one row per sample
            axes = [a for a in range(rank) if a not in keep]
            if not axes:  # nothing to reduce ([N, C] stacked): |x| is the statistic (empty axes would mean all)
                nodes = [helper.make_node("Abs", [tensor], [out], name=out)]
            else:
                abs_out = f"ptqflow_stat_abs_{i}"
                nodes = [helper.make_node("Abs", [tensor], [abs_out], name=abs_out),
                         _reduce("ReduceMax", abs_out, out, axes, opset, extra)]
        if nodes is None:
            continue
        if shared is not None and shared.nodes:  # the shared per-channel reductions, before their first reader
            g.node.extend(shared.nodes)
            shared.nodes = []
        g.node.extend(nodes)
        out_map[out] = oid
    g.initializer.extend(extra)
    for out in out_map:
        if out not in existing:
            g.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    return out_map


class _ChannelRange:
    """The per-channel minima and maxima of a tensor (``points.channel_range_axes``), reduced once, and the
    observations derived from them."""

    def __init__(self, tensor: str, axis: int, axes: list[int], per_sample: bool, opset: int, extra: list,
                 index: int):
        self.axis, self.per_sample, self.opset, self.extra = axis, per_sample, opset, extra
        self.lo, self.hi = f"ptqflow_stat_cmin_{index}", f"ptqflow_stat_cmax_{index}"
        self.nodes = [_reduce("ReduceMin", tensor, self.lo, axes, opset, extra),
                      _reduce("ReduceMax", tensor, self.hi, axes, opset, extra)]
        self.absmax = ""

    def derive(self, reducer: Reducer, out: str) -> list[onnx.NodeProto]:
        """Nodes computing observation ``reducer`` (MIN, MAX, or ABSMAX/PEAK on this axis) into ``out``."""
        if reducer in (Reducer.MIN, Reducer.MAX):  # per sample: the row's extreme; else the vector's
            op, src = ("ReduceMin", self.lo) if reducer == Reducer.MIN else ("ReduceMax", self.hi)
            return [_reduce(op, src, out, [1] if self.per_sample else None, self.opset, self.extra)]
        if self.absmax:
            return [helper.make_node("Identity", [self.absmax], [out], name=out)]
        self.absmax, neg = out, out + "_neg"
        return [helper.make_node("Neg", [self.lo], [neg], name=neg),
                helper.make_node("Max", [self.hi, neg], [out], name=out)]


def _channel_ranges(model: onnx.ModelProto, observations: list[str], per_sample: bool, opset: int,
                    extra: list) -> dict[str, _ChannelRange]:
    """The tensors whose MIN/MAX and channel max |x| come from one pair of per-channel reductions
    (points.channel_range_reduction)."""
    found = {}
    for index, (tensor, axis) in enumerate(channel_range_axes(observations).items()):
        axes = channel_range_reduction(axis, _rank(model, tensor), per_sample)
        if axes is not None:
            found[tensor] = _ChannelRange(tensor, axis, axes, per_sample, opset, extra, index)
    return found


def check_sample(sample: dict, index: int, specs: dict[str, tuple[list, int]]) -> dict[str, np.ndarray]:
    """The sample as arrays of the model's dtypes; InputError naming sample, input and expected shape/dtype."""
    if not isinstance(sample, dict):
        raise InputError(f"calibration sample {index}: expected a dict of input name -> array, got {type(sample).__name__}")
    unknown = sorted(set(sample) - set(specs))
    missing = sorted(set(specs) - set(sample))
    if unknown or missing:
        raise InputError(f"calibration sample {index}: unknown input(s) {unknown}, missing input(s) {missing}; "
                         f"the model expects {sorted(specs)}")
    out = {}
    for name, (shape, np_dtype) in specs.items():
        arr = np.asarray(sample[name])
        if arr.ndim != len(shape) or any(isinstance(d, int) and d != a for d, a in zip(shape, arr.shape)):
            raise InputError(f"calibration sample {index}: input {name!r} expects shape {_fmt(shape)}, "
                             f"got {_fmt(list(arr.shape))}")
        if arr.dtype != np_dtype:
            same_kind = np.issubdtype(arr.dtype, np.floating) == np.issubdtype(np_dtype, np.floating)
            if not same_kind:
                raise InputError(f"calibration sample {index}: input {name!r} expects dtype {np.dtype(np_dtype).name}, "
                                 f"got {arr.dtype.name}")
            arr = arr.astype(np_dtype)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise InputError(f"calibration sample {index}: input {name!r} holds NaN or Inf")
        out[name] = arr
    return out


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) else (d or "N") for d in shape) + "]"


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[list, type]]:
    """Model input name -> (shape with ints for static dims and names/None for dynamic ones, numpy dtype)."""
    specs = {}
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        specs[vi.name] = (shape, helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return specs
