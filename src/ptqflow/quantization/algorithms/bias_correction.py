"""BiasCorrection: correct biases layer by layer on real samples, carrying upstream corrections downstream.

1. One run of the FP32 model per sample, with every correctable layer's output added as a graph output, gives
   the FP32 per-channel output means (only the means are kept).
2. The quantized model is cut into topological segments, one per correctable layer: segment k holds the nodes
   not yet run that layer k's output depends on. Its inputs are model inputs or tensors earlier segments
   produced, which already carry the upstream corrections. Each segment is built into a session once and run
   on every sample; of its results only the tensors later segments read are kept, and a cached tensor is
   dropped as soon as its last reader has run.
3. The difference of per-channel means moves the bias. The bias enters the layer's output additively, so the
   cached output is updated by adding the shift instead of running the segment again.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ptqflow.quantization.algorithms.bias_layers import (
    BiasLayer,
    channel_mean,
    judge_shift,
    read_bias,
    summary,
    write_bias,
)
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION, graph_inputs
from ptqflow.quantization.statistics.collector import augment
from ptqflow.quantization.statistics.points import Reducer, observation_id
from ptqflow.quantization.statistics.runner import make_runner
from ptqflow.runtime.sessions import make_session, release_freed_memory, run_each


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read by a node's subgraph attributes (If/Loop/Scan bodies)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for inner in g.node:
                local.update(inner.output)
            for inner in g.node:
                names.update(i for i in list(inner.input) + sorted(_subgraph_reads(inner)) if i and i not in local)
    return names


def _reads(node: onnx.NodeProto) -> set[str]:
    return {i for i in node.input if i} | _subgraph_reads(node)


def _fp32_output_means(fp32_model, layers, samples, device, runtime="onnxruntime") -> dict[str, np.ndarray]:
    """Per-layer FP32 per-channel output means over ``samples``, all layers in one run per sample.

    ReduceMean nodes on the layer outputs, run on the statistics runner, so only the means leave the runtime;
    an output whose rank shape inference does not know leaves whole and is averaged here.
    """
    try:
        model = onnx.shape_inference.infer_shapes(fp32_model)
    except Exception:  # ranks only help: without them the outputs leave whole
        model = fp32_model
    produced = {o for n in model.graph.node for o in n.output}
    layers = [layer for layer in layers if layer.output in produced]  # others get no mean and are skipped
    ranked = {vi.name for vi in model.graph.value_info if vi.type.tensor_type.HasField("shape")}
    wanted: dict[str, list[str]] = {}  # observation id -> the layers reading it
    for layer in layers:
        if layer.output in ranked:
            wanted.setdefault(observation_id(layer.output, Reducer.MEAN, layer.channel_axis), []).append(layer.name)
    aug, observations = augment(model, list(wanted), per_sample=False)
    out_map = {out: ("mean", wanted[oid]) for out, oid in observations.items()}  # output -> (kind, layer names)
    observed = {name for _, names in out_map.values() for name in names}
    present = {o.name for o in aug.graph.output}
    for layer in layers:
        if layer.name not in observed:
            if layer.output not in present:
                aug.graph.output.append(helper.make_empty_tensor_value_info(layer.output))
                present.add(layer.output)
            out_map.setdefault(layer.output, ("raw", []))[1].append(layer.name)
    aug.ir_version = min(aug.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    axes = {layer.name: layer.channel_axis for layer in layers}
    runner = make_runner(aug, list(out_map), device, runtime, make_session)
    sums: dict[str, np.ndarray] = {}
    n = 0
    for outs, count in runner.map({"arrays": s, "count": 1} for s in samples):
        for out, value in outs.items():
            kind, names = out_map[out]
            for key in names:
                mean = (np.asarray(value, np.float64).reshape(-1) if kind == "mean"
                        else channel_mean(value, axes[key]))
                sums[key] = sums.get(key, 0) + mean * count
        n += count
    return {k: v / max(n, 1) for k, v in sums.items()}


class _Segmenter:
    """Cuts the quantized graph into segments ending at each layer's output and tracks live tensors."""

    def __init__(self, q_model: onnx.ModelProto):
        self.model = q_model
        self.idx = GraphIndex(q_model.graph)
        self.order = {id(n): k for k, n in enumerate(q_model.graph.node)}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in q_model.graph.node:
            for name in _reads(node):
                self.readers.setdefault(name, []).append(node)
        self.done: set[int] = set()
        self.graph_inputs = {i.name for i in graph_inputs(q_model)}

    def segment(self, target: str, available: set[str]) -> list[onnx.NodeProto]:
        """Nodes not yet run that ``target`` depends on, in graph order (stops at available tensors)."""
        picked: dict[int, onnx.NodeProto] = {}
        stack = [target]
        while stack:
            name = stack.pop()
            if name in available or name in self.idx.inits or name in self.graph_inputs:
                continue
            node = self.idx.producer.get(name)
            if node is None or id(node) in picked or id(node) in self.done:
                continue
            picked[id(node)] = node
            stack.extend(_reads(node))
        return sorted(picked.values(), key=lambda n: self.order[id(n)])

    def still_needed(self, name: str) -> bool:
        """True while some node that has not run yet reads ``name``."""
        return any(id(n) not in self.done for n in self.readers.get(name, []))

    def build(self, nodes: list[onnx.NodeProto], target: str) -> tuple[onnx.ModelProto, list[str], list[str]]:
        """A model of ``nodes``; returns (model, its input names, its output names)."""
        produced = {o for n in nodes for o in n.output if o}
        read = set().union(*(_reads(n) for n in nodes)) if nodes else set()
        inputs = sorted(n for n in read if n not in produced and n not in self.idx.inits)
        ids = {id(n) for n in nodes}
        outputs = [target] + sorted(
            o for o in produced if o != target and any(id(r) not in ids and id(r) not in self.done
                                                       for r in self.readers.get(o, []))
        )
        inits = [self.idx.inits[n] for n in sorted(read) if n in self.idx.inits]
        graph = helper.make_graph(
            nodes, "bc_segment",
            [helper.make_empty_tensor_value_info(n) for n in inputs],
            [helper.make_empty_tensor_value_info(n) for n in outputs],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = min(self.model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
        return model, inputs, outputs


def _set_input_types(model: onnx.ModelProto, inputs: list[str], cache: dict[str, list[np.ndarray]]) -> None:
    """Type segment inputs from the cached arrays (their dtype is authoritative)."""
    for vi in model.graph.input:
        if vi.name in cache:
            dtype = helper.np_dtype_to_tensor_dtype(cache[vi.name][0].dtype)
            vi.CopyFrom(helper.make_tensor_value_info(vi.name, dtype, None))


def apply_bias_correction(
    fp32_model: onnx.ModelProto,
    q_model: onnx.ModelProto,
    layers: list[BiasLayer],
    samples: list[dict[str, np.ndarray]],
    threshold: float,
    device: str = "cpu",
    runtime: str = "onnxruntime",
    fp32_means: dict | None = None,
) -> list[dict]:
    """Correct the biases of ``layers`` in ``q_model`` (in place) on ``samples``. Returns one summary per layer.

    Each record is FastBiasCorrection's (layer, op_type, applied, reason, shift_norm, max_abs_shift, bias_norm)
    plus ``samples``, the number of samples the means came from. ``runtime`` is the statistics runtime of the
    FP32 reference pass (see ptqflow.quantization.statistics.runner); the quantized segments run on onnxruntime.
    ``fp32_means``: a dict that keeps the FP32 output means between calls on the same FP32 model and samples
    (the plan written again after mixed precision is corrected on the samples the first correction was fitted
    on: its FP32 pass is not run again).
    """
    release_freed_memory()  # what the steps before it freed, before its sessions and cached tensors
    samples = list(samples)
    if not samples:
        return [{**summary(layer, False, "no samples", None, read_bias(q_model, layer)), "samples": 0}
                for layer in layers]
    key = tuple(id(s) for s in samples)  # the caller's sample dicts, alive while it holds them
    known = fp32_means.get(key, {}) if fp32_means is not None else {}
    missing = [layer for layer in layers if layer.name not in known]
    means = {**known, **(_fp32_output_means(fp32_model, missing, samples, device, runtime) if missing else {})}
    if fp32_means is not None:
        fp32_means[key] = means
    seg = _Segmenter(q_model)
    cache: dict[str, list[np.ndarray]] = {
        name: [np.asarray(s[name]) for s in samples] for name in seg.graph_inputs if name in samples[0]
    }
    records = []
    for layer in layers:
        bias = read_bias(q_model, layer)
        record = _correct_layer(layer, bias, seg, cache, samples, means.get(layer.name), threshold, device)
        records.append({**record, "samples": len(samples)})
        for name in [n for n in cache if not seg.still_needed(n)]:
            del cache[name]  # last reader has run: free the activations
    return records


def _correct_layer(layer, bias, seg, cache, samples, fp32_mean, threshold, device) -> dict:
    """Run the segment ending at ``layer``, correct its bias and the cached output. Returns the summary."""
    if bias is None or layer.output not in seg.idx.producer:
        return summary(layer, False, "layer or float bias not found in the quantized model", None, bias)
    nodes = seg.segment(layer.output, set(cache))
    if layer.output not in cache:
        model, inputs, outputs = seg.build(nodes, layer.output)
        missing = [n for n in inputs if n not in cache]
        if missing:
            return summary(layer, False, f"segment inputs not available: {missing[:3]}", None, bias)
        _set_input_types(model, inputs, cache)
        runs = run_each(model, [{n: cache[n][k] for n in inputs} for k in range(len(samples))], device, outputs)
        results = {name: [values[j] for values in runs] for j, name in enumerate(outputs)}
        seg.done.update(id(n) for n in nodes)
        cache.update(results)
    record, new_bias = shift_outputs(layer, bias, cache[layer.output], fp32_mean, threshold)
    if new_bias is not None:
        write_bias(seg.model, layer, new_bias)
    return record


def shift_outputs(layer: BiasLayer, bias: np.ndarray, outputs: list[np.ndarray], fp32_mean: np.ndarray | None,
                  threshold: float) -> tuple[dict, np.ndarray | None]:
    """The correction of ``layer`` from its quantized outputs (one array per sample, upstream corrections
    carried) and its FP32 per-channel output mean: (the summary record, the new bias, or None when none is
    applied). An applied shift also moves ``outputs`` (in place; a read-only array is replaced in the list), so
    the segments after it read the corrected layer: the bias enters the output additively. Both backends' step."""
    if fp32_mean is None or not np.all(np.isfinite(fp32_mean)):
        return summary(layer, False, "FP32 statistics missing or not finite", None, bias), None
    q_mean = np.mean([channel_mean(v, layer.channel_axis) for v in outputs], axis=0)
    if q_mean.shape != bias.shape:
        return summary(layer, False, f"output has {q_mean.size} channels, bias {bias.size}", None, bias), None
    shift = fp32_mean - q_mean
    ok, reason = judge_shift(shift, bias, fp32_mean, threshold)
    if ok:
        axis = layer.channel_axis
        for k, value in enumerate(outputs):
            shape = [1] * value.ndim
            shape[axis % value.ndim] = shift.size
            step = shift.reshape(shape).astype(value.dtype)
            if value.flags.writeable:
                value += step  # the segment's own output array: shifted in place
            else:
                outputs[k] = value + step
    return summary(layer, ok, reason, shift, bias), (bias + shift if ok else None)
