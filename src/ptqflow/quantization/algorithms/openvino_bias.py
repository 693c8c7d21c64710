"""FastBiasCorrection and its guard on an OpenVINO model (the ONNX path's are fast_bias_correction and bc_guard).

The layers are the ONNX path's, found on the model's view (bias_layers.find_bias_layers reads the view as it
reads an ONNX graph: Convolution/GroupConvolution/MatMul followed by an Add of a per-channel constant), and so are
the statistics (each layer's FP32 per-channel input mean) and the judgement of a shift (bias_layers.judge_shift).
What differs is how a layer runs alone: every correctable layer is cloned twice with fresh constants (its FP32
weight and its quantized weight, the dequantized codes the FakeQuantize passes through unchanged) behind one
Parameter holding its synthetic input, channel c constant at the FP32 input mean; all layers go into one model,
compiled and run once on OpenVINO CPU at f32. A convolution keeps its own padding and strides and is read where
its receptive field lies inside the input, so only the weights differ between the two runs. The shift is the
difference of the two runs' per-channel output means.

The guard (``Judge``) then runs the FP32, uncorrected and corrected models on a few calibration samples with
OpenVINO and keeps the correction only when the output error does not rise, as on the ONNX path.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ptqflow.quantization.algorithms import bc_guard
from ptqflow.quantization.algorithms.output_error import OutputError, token_masks
from ptqflow.quantization.algorithms.bias_layers import BiasLayer, channel_mean, judge_shift, summary
from ptqflow.quantization.graph.openvino_view import BoundView

_CONV = {"Convolution", "GroupConvolution"}
_MATMUL = {"MatMul"}


def _conv(make):
    return lambda x, w, a: make(x, w, a["strides"], a["pads_begin"], a["pads_end"], a["dilations"],
                                str(a.get("auto_pad", "explicit")).upper())


# How a layer is made again from its attributes on new inputs (the Python API has no clone_with_new_inputs).
_MAKE = {
    "Convolution": _conv(ops.convolution),
    "GroupConvolution": _conv(ops.group_convolution),
    "MatMul": lambda x, w, a: ops.matmul(x, w, bool(a["transpose_a"]), bool(a["transpose_b"])),
}


def _weight_value(node) -> np.ndarray | None:
    """The constant a layer's weight input reads, through a FakeQuantize (whose input is the dequantized codes) or
    a decompression Convert; None when it is not constant."""
    src = node.input_value(1).get_node()
    if src.get_type_name() == "FakeQuantize":
        src = src.input_value(0).get_node()
    if src.get_type_name() == "Convert":
        src = src.input_value(0).get_node()
    return src.get_data().astype(np.float32) if src.get_type_name() == "Constant" else None


def _synthetic(node, mean_in: np.ndarray) -> tuple[np.ndarray, tuple] | None:
    """The synthetic input of layer ``node`` (channel c constant at ``mean_in[c]``) and the output slices where a
    convolution's receptive field lies inside it; None for layers this module does not run alone."""
    kind = node.get_type_name()
    c = mean_in.size
    if kind in _MATMUL:
        rank = node.input(0).get_partial_shape().rank
        r = rank.get_length() if rank.is_static else 2
        if node.get_attributes().get("transpose_a"):
            return None
        return np.broadcast_to(mean_in.astype(np.float32), (1,) * (r - 1) + (c,)).copy(), ()
    if kind not in _CONV:
        return None
    a = node.get_attributes()
    kernel = list(node.input(1).get_partial_shape().to_shape())[-len(a["strides"]):]
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, a["dilations"])]
    pads, strides = a["pads_begin"], a["strides"]
    real = node.input(0).get_partial_shape()
    if real.rank.is_static and all(d.is_static for d in list(real)[2:]):
        # the real size: the layer runs as in the model, borders included, as the ONNX path does
        size, inside = [d.get_length() for d in list(real)[2:]], ()
    else:  # a patch; output o reads input [o*s - p, o*s - p + extent): inside when o*s >= p, o*s - p + e <= size
        size = [e + 2 * p + 2 * s for e, p, s in zip(extent, pads, strides)]
        inside = (slice(None), slice(None)) + tuple(
            slice(-(-p // s), (n + p - e) // s + 1) for e, p, s, n in zip(extent, pads, strides, size))
    x = np.broadcast_to(mean_in.astype(np.float32).reshape((1, c) + (1,) * len(size)), (1, c, *size)).copy()
    return x, inside


def _layer_mean_model(pairs: list[tuple[str, object, np.ndarray, np.ndarray, np.ndarray]]):
    """One model running every layer on its synthetic input with each of two weights: (name, node, input,
    FP32 weight, quantized weight) -> Results named ``<name>/fp32`` and ``<name>/int8``."""
    params, results = [], []
    for name, node, x, w_fp32, w_q in pairs:
        p = ops.parameter(list(x.shape), ov.Type.f32, name=f"{name}/input")
        p.output(0).get_tensor().set_names({f"{name}/input"})
        params.append(p)
        for tag, w in (("fp32", w_fp32), ("int8", w_q)):
            layer = _MAKE[node.get_type_name()](p.output(0), ops.constant(w).output(0), node.get_attributes())
            out = layer.output(0)
            out.get_tensor().set_names({f"{name}/{tag}"})
            results.append(ops.result(out))
    return ov.Model(results, params, "ptqflow-fbc")


def fast_bias_correction(fp32: BoundView, q: BoundView, layers: list[BiasLayer], means_in: dict[str, np.ndarray],
                         bias_values: dict[str, np.ndarray], threshold: float) -> list[dict]:
    """Correct the biases of ``layers`` in ``q`` (the INT8 model's bound view) in place from their FP32 input
    means; ``fp32`` is the FP32 model's bound view, ``bias_values`` the FP32 bias by layer. One summary record
    per layer (bias_layers.summary)."""
    records: dict[str, dict] = {}
    runs, inside = [], {}
    for layer in layers:
        bias = bias_values.get(layer.name)
        m_in = means_in.get(layer.name)
        node_q, node_f = q.node(layer.name), fp32.node(layer.name)
        w_q, w_f = _weight_value(node_q), _weight_value(node_f)
        synth = _synthetic(node_f, np.asarray(m_in, np.float64).reshape(-1)) if m_in is not None else None
        if bias is None or m_in is None or not np.all(np.isfinite(m_in)) or w_q is None or w_f is None \
                or synth is None:
            why = "statistics missing or not finite" if m_in is None or not np.all(np.isfinite(m_in)) else \
                "layer not runnable alone on OpenVINO (a non-constant weight or an unsupported layer)"
            records[layer.name] = summary(layer, False, why, None, bias)
            continue
        runs.append((layer.name, node_f, synth[0], w_f, w_q))
        inside[layer.name] = synth[1]
    if runs:
        compiled = ov.Core().compile_model(_layer_mean_model(runs), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs = compiled({f"{name}/input": x for name, _, x, _, _ in runs})
        values = {next(iter(port.get_names())): value for port, value in outs.items()}
        for layer in layers:
            if layer.name in inside:
                records[layer.name] = _correct(q, layer, values, inside[layer.name], bias_values[layer.name],
                                               threshold)
    return [records[layer.name] for layer in layers]


def _correct(q: BoundView, layer: BiasLayer, values: dict, inside: tuple, bias: np.ndarray,
             threshold: float) -> dict:
    """Move ``layer``'s bias in ``q`` by the FP32 minus INT8 output mean when judge_shift accepts it."""
    f_mean = channel_mean(values[f"{layer.name}/fp32"][inside], layer.channel_axis)
    q_mean = channel_mean(values[f"{layer.name}/int8"][inside], layer.channel_axis)
    if f_mean.size != bias.size:
        return summary(layer, False, f"layer output has {f_mean.size} channels, bias {bias.size}", None, bias)
    shift = f_mean - q_mean
    ok, reason = judge_shift(shift, bias, f_mean + bias, threshold)
    if ok:
        write_bias(q, layer, bias + shift)
    return summary(layer, ok, reason, shift, bias)


def write_bias(q: BoundView, layer: BiasLayer, value: np.ndarray) -> None:
    """Make ``layer``'s bias Add in ``q`` read ``value`` (a new Constant of the old one's shape; a bias constant
    other layers share stays as it is for them)."""
    add = q.node(layer.bias_node)
    k = next(i for i in range(add.get_input_size()) if add.input_value(i) == q.port(layer.bias))
    shape = list(add.input(k).get_partial_shape().to_shape())
    add.input(k).replace_source_output(ops.constant(np.asarray(value).reshape(shape).astype(np.float32)).output(0))


class Judge:
    """bc_guard's judgement on OpenVINO, ``judge(samples)`` -> bc_guard.Verdict (keep the correction, output error
    without it, with it, ...): the FP32, uncorrected and corrected models compiled once (CPU, f32) for every sample
    set judged; ``view`` is the FP32 model's view (its output names and decision outputs)."""

    def __init__(self, fp32, uncorrected, corrected, view, *, tie_weight: float):
        core = ov.Core()
        self.requests = [core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
                         for m in (fp32, uncorrected, corrected)]
        self.names, self.decisions = [o.name for o in view.graph.output], bc_guard.decision_outputs(view)
        self.tie_weight = tie_weight

    def _run(self, k: int, samples: list[dict]) -> list[list[np.ndarray]]:
        request = self.requests[k]
        return [[np.array(v, copy=True) for v in request.infer(s).values()] for s in samples]

    def __call__(self, samples: list[dict]) -> bc_guard.Verdict:
        error = OutputError(self.names, self._run(0, samples), self.decisions, tie_weight=self.tie_weight,
                            masks=token_masks(samples))
        return bc_guard.verdict(error, self._run(1, samples), self._run(2, samples))
