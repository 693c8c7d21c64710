"""Full BiasCorrection on an OpenVINO model: bias_correction's algorithm (the ONNX path's) with OpenVINO running it.

1. The FP32 per-channel output mean of every correctable layer, from one run of the FP32 model per sample: the
   statistics collector's reductions (statistics.openvino_collector.augment, MEAN on each layer's output).
2. The quantized model is cut into topological segments, one per layer in graph order: segment k holds the ops
   not yet run that layer k's output depends on (constant-only ops excepted: they belong to every segment that
   reads them). Its inputs are model inputs or outputs of earlier segments, cached per sample, which carry the
   upstream corrections. A segment is an ov.Model over a working clone of the quantized model whose boundary
   inputs become Parameters (ops of earlier segments are never read again, so the clone is cut in place),
   compiled once and run on every sample; only what later segments read is kept, and a cached tensor is dropped
   once its last reader has run.
3. bias_correction.shift_outputs judges the difference of means and moves the cached output, as on ONNX; the
   new bias goes into the quantized model's bias Add (openvino_bias.write_bias).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ptqflow.quantization.algorithms.bias_correction import shift_outputs
from ptqflow.quantization.algorithms.bias_layers import BiasLayer, summary
from ptqflow.quantization.algorithms.openvino_bias import write_bias
from ptqflow.quantization.graph.openvino_view import BoundView
from ptqflow.quantization.statistics.openvino_collector import augment
from ptqflow.quantization.statistics.points import Reducer, observation_id
from ptqflow.quantization.statistics.runner import OpenVINORunner

_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


def fp32_output_means(fp32: BoundView, model, layers: list[BiasLayer], samples: list[dict]) -> dict[str, np.ndarray]:
    """Per-layer FP32 per-channel output means over ``samples``; ``fp32`` is ``model``'s (the FP32 ov.Model's)
    bound view. A layer whose output rank OpenVINO does not know gets none (and is skipped, as on ONNX)."""
    wanted: dict[str, list[str]] = {}  # observation id -> the layers reading it
    for layer in layers:
        wanted.setdefault(observation_id(layer.output, Reducer.MEAN, layer.channel_axis), []).append(layer.name)
    aug, out_map = augment(model, fp32, list(wanted), per_sample=False)
    sums: dict[str, np.ndarray] = {}
    n = 0
    for outs, count in OpenVINORunner(aug, list(out_map)).map({"arrays": s, "count": 1} for s in samples):
        for out, value in outs.items():
            for name in wanted[out_map[out]]:
                sums[name] = sums.get(name, 0) + np.asarray(value, np.float64).reshape(-1) * count
        n += count
    return {k: v / max(n, 1) for k, v in sums.items()}


def _key(port) -> tuple[str, int]:
    return port.get_node().get_name(), port.get_index()


class _Segments:
    """The quantized model's working clone, cut segment by segment; tracks which ops have run and who reads what."""

    def __init__(self, q):
        self.work = q.clone()
        q_ops, w_ops = q.get_ordered_ops(), self.work.get_ordered_ops()
        self.ops = {a.get_name(): b for a, b in zip(q_ops, w_ops)}  # the quantized model's op -> the clone's
        self.const: set[str] = set()
        self.readers: dict[tuple[str, int], list[str]] = {}
        for op in w_ops:
            inputs = [op.input_value(i) for i in range(op.get_input_size())]
            if op.get_type_name() == "Constant" or (
                    inputs and op.get_type_name() != "Parameter"
                    and all(i.get_node().get_name() in self.const for i in inputs)):
                self.const.add(op.get_name())
            if op.get_type_name() != "Result":  # a model output is no later segment's input
                for i in inputs:
                    self.readers.setdefault(_key(i), []).append(op.get_name())
        self.done: set[str] = set()

    def port(self, q_port):
        """The clone's port of the quantized model's ``q_port``."""
        return self.ops[q_port.get_node().get_name()].output(q_port.get_index())

    def segment(self, target, cached: set) -> tuple[list, list]:
        """(the ops not yet run that clone port ``target`` depends on, the ports they read at the boundary: cached
        tensors and model inputs)."""
        picked: dict[str, object] = {}
        boundary: dict[tuple[str, int], object] = {}
        stack = [target]
        while stack:
            port = stack.pop()
            node = port.get_node()
            if _key(port) in cached or node.get_type_name() == "Parameter" or node.get_name() in self.done:
                boundary[_key(port)] = port
                continue
            if node.get_name() in picked or node.get_name() in self.const:
                continue
            picked[node.get_name()] = node
            stack.extend(node.input_value(i) for i in range(node.get_input_size()))
        return list(picked.values()), list(boundary.values())

    def still_needed(self, key: tuple[str, int]) -> bool:
        """True while some op that has not run yet reads the tensor ``key``."""
        return any(r not in self.done for r in self.readers.get(key, []))

    def build(self, nodes: list, boundary: list, target) -> tuple[ov.Model, list, list]:
        """The segment of ``nodes`` as an ov.Model whose Parameters stand for ``boundary`` (the clone is cut there
        for good); (the model, the boundary keys in Parameter order, the output keys in Result order: ``target``
        first, then what ops outside the segment that have not run read)."""
        picked = {n.get_name() for n in nodes}
        params = []
        for port in boundary:
            param = ops.parameter(port.get_partial_shape(), port.get_element_type())
            for target_input in list(port.get_target_inputs()):
                if target_input.get_node().get_name() in picked:
                    target_input.replace_source_output(param.output(0))
            params.append(param)
        outputs = [target] + [n.output(k) for n in nodes for k in range(n.get_output_size())
                              if _key(n.output(k)) != _key(target) and any(
                                  r not in picked and r not in self.done for r in self.readers.get(_key(n.output(k)), []))]
        model = ov.Model([ops.result(o) for o in outputs], params, "ptqflow-bc-segment")
        self.done.update(picked)
        return model, [_key(p) for p in boundary], [_key(o) for o in outputs]


def apply_bias_correction(fp32: BoundView, fp32_model, q: BoundView, q_model, layers: list[BiasLayer],
                          samples: list[dict], biases: dict[str, np.ndarray], threshold: float) -> list[dict]:
    """Correct the biases of ``layers`` in ``q_model`` (in place; ``q`` its bound view) on ``samples``;
    ``fp32``/``fp32_model`` the FP32 model, ``biases`` the FP32 bias by layer. One record per layer:
    bias_correction.apply_bias_correction's (with ``samples``)."""
    if not samples:
        return [{**summary(layer, False, "no samples", None, biases.get(layer.name)), "samples": 0}
                for layer in layers]
    means = fp32_output_means(fp32, fp32_model, layers, samples)
    seg = _Segments(q_model)
    cache: dict[tuple[str, int], list[np.ndarray]] = {}
    for param in seg.work.get_parameters():
        name = next((n for n in param.output(0).get_names() if n in samples[0]), None)
        if name is not None:
            cache[_key(param.output(0))] = [np.asarray(s[name]) for s in samples]
    core = ov.Core()
    records = []
    for layer in layers:
        record = _correct_layer(core, layer, biases.get(layer.name), seg, q, cache, samples, means, threshold)
        records.append({**record, "samples": len(samples)})
        for key in [k for k in cache if not seg.still_needed(k)]:
            del cache[key]  # last reader has run: free the activations
    return records


def _correct_layer(core, layer: BiasLayer, bias, seg: _Segments, q: BoundView, cache: dict, samples: list[dict],
                   means: dict, threshold: float) -> dict:
    """Run the segment ending at ``layer``'s output, correct its bias and the cached output; the record."""
    if bias is None:
        return summary(layer, False, "layer or float bias not found in the quantized model", None, bias)
    target = seg.port(q.port(layer.output))
    if _key(target) not in cache:
        nodes, boundary = seg.segment(target, set(cache))
        missing = [k for k in (_key(p) for p in boundary) if k not in cache]
        if missing:
            return summary(layer, False, f"segment inputs not available: {missing[:3]}", None, bias)
        model, inputs, outputs = seg.build(nodes, boundary, target)
        request = core.compile_model(model, "CPU", _FP32).create_infer_request()
        results: dict[tuple[str, int], list[np.ndarray]] = {key: [] for key in outputs}
        for k in range(len(samples)):
            request.infer([cache[key][k] for key in inputs])
            for j, key in enumerate(outputs):
                results[key].append(np.array(request.get_output_tensor(j).data, copy=True))
        cache.update(results)
    record, new_bias = shift_outputs(layer, bias, cache[_key(target)], means.get(layer.name), threshold)
    if new_bias is not None:
        write_bias(q, layer, new_bias)
    return record
