"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): each weight of a
Conv / MatMul / Gemm layer is rounded down or up (its scale unchanged), chosen to minimize the error of the layer's
output on calibration samples instead of rounding each weight to the nearest code on its own.

The layer is linear in its weight, so for an output channel r with input rows X (im2col patches of a Conv, per
group; the flattened rows of a MatMul/Gemm) the output error ||X (wq_r - w_r)||^2 is the quadratic form
(wq_r - w_r) H (wq_r - w_r) with H = X^T X: H is collected once per layer (one run of the FP32 model per sample,
the layers' input tensors as extra outputs, a random subsample of the patch rows), and the optimization needs no
autograd: the gradient is 2 (Wq - W) H. With ``quantized_inputs`` the layer reads its input as its activation
quantizer writes it, X_q, and the error is ||X_q wq_r - X w_r||^2: A = X_q^T X_q and C = X_q^T X, gradient
2 (Wq A - W C^T), still a quadratic.

The rounding of each weight is a soft variable h(V) = clip(sigmoid(V) (ZETA - GAMMA) + GAMMA, 0, 1) in [0, 1]
(a rectified sigmoid), optimized with Adam on the reconstruction loss plus LAMBDA * mean(1 - |2h - 1|^beta), beta
annealed from 20 to 2 after a warm-up without the regularizer, which drives every h to 0 or 1; the final rounding
is floor(w / s) + (h >= 0.5), clipped to the narrow range. A layer keeps nearest rounding where that loss is not
higher than AdaRound's (on its own collected rows), so AdaRound never makes a layer's loss worse.

The time budget (``advanced.adaround_time_budget`` seconds, the whole model, the collection included) is shared
among the layers by their measured cost: one iteration of each layer is timed, and every layer gets the same
number of iterations, at most MAX_ITERATIONS, fewer where the time left is short (a count recomputed after each
layer, the cheapest first); where that count falls below MIN_ITERATIONS, the cheapest layers get MIN_ITERATIONS
each while the time lasts and the others keep nearest rounding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ptqflow.config import QuantizationConfig
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms.minmax import NumberFormats, activation_quantizer, weight_params
from ptqflow.quantization.algorithms.range_search import onnx_values
from ptqflow.quantization.graph.index import attr
from ptqflow.quantization.plan import QuantizationPlan, WeightQuantizer

log = get_logger("adaround")

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's)
BETA = (20.0, 2.0)  # the regularizer's exponent, annealed from the first to the second after the warm-up
WARMUP = 0.2  # share of the iterations without the regularizer
LAMBDA = 30.0  # the regularizer (a mean over the weights) next to the loss normalized to nearest rounding's (1)
LEARNING_RATE = 0.03  # Adam's step on V
MAX_ITERATIONS = 1000
MIN_ITERATIONS = 100  # a layer whose budget share allows fewer keeps nearest rounding
SAMPLED_ROWS = 4096  # input rows (patches) per layer and consumer, an equal share from each sample
# A layer needs this many input rows per weight one output channel reads (D): with fewer, X^T X is (nearly)
# singular and the rounding fits the few rows instead of the layer (a Gemm after global pooling gets one row
# per sample: on 16 samples such a layer's loss fell to 0 and its held-out error rose).
ROWS_PER_INPUT = 2
_OPS = ("Conv", "MatMul", "Gemm")


@dataclass
class Layer:
    """One weight quantizer in matrix form: ``w`` and ``scale`` shaped (groups, rows, D) (rows: output channels
    of a group; D: what one output channel reads), ``floor`` the codes rounded down; ``a``/``c``/``h`` the
    collected X_q^T X_q, X_q^T X and X^T X per group (a and c are h without quantized inputs)."""

    entry: WeightQuantizer
    w: np.ndarray
    scale: np.ndarray
    nearest: np.ndarray
    qmax: int
    back: Callable[[np.ndarray], np.ndarray]  # (groups, rows, D) -> the weight's shape
    consumers: list  # (node, input tensor, activation quantizer of that input or None)
    h: np.ndarray | None = None
    a: np.ndarray | None = None
    c: np.ndarray | None = None
    rows: int = 0
    record: dict = field(default_factory=dict)


def _matrix(w: np.ndarray, node: onnx.NodeProto) -> tuple[np.ndarray, Callable] | None:
    """``w`` as (groups, rows, D) for ``node`` and the map back to its shape; None for a layout not handled."""
    if node.op_type == "Conv" and w.ndim in (3, 4):
        groups = attr(node, "group", 1)
        if w.shape[0] % groups:
            return None
        return w.reshape(groups, w.shape[0] // groups, -1), lambda m: m.reshape(w.shape)
    if w.ndim != 2:
        return None
    if node.op_type == "Gemm" and attr(node, "transB", 0):
        return w[None], lambda m: m[0]
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return None
    return w.T[None], lambda m: m[0].T  # MatMul / Gemm: [K, N], rows are its N columns


def layers_of(prepared: onnx.ModelProto, plan: QuantizationPlan) -> tuple[list[Layer], dict[str, dict]]:
    """The weight quantizers AdaRound can round (Conv with 1 or 2 spatial dims, 2-D MatMul/Gemm weights, every
    consumer of the weight of the same kind, the weight its input 1) and a record for each of the others."""
    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    feeding = {e: p for p in plan.activations for e in p.edges}
    layers, skipped = [], {}
    for entry in plan.weights:
        consumers = [nodes.get(name) for name, _ in entry.nodes]
        why = None
        if entry.tensor not in inits or any(n is None for n in consumers):
            why = "weight or consumer not found"
        elif any(n.op_type not in _OPS for n in consumers) or any(idx != 1 for _, idx in entry.nodes):
            why = "not the weight input of a Conv, MatMul or Gemm"
        elif len({(n.op_type, attr(n, "group", 1), attr(n, "transB", 0)) for n in consumers}) > 1:
            why = "read by layers of different kinds"
        if why is None:
            w = numpy_helper.to_array(inits[entry.tensor]).astype(np.float32)
            shaped = _matrix(w, consumers[0])
            if shaped is None:
                why = "weight layout not handled"
        if why is not None:
            skipped[entry.tensor] = {"applied": False, "reason": why}
            continue
        scale, q = weight_params(w, entry.axis, entry.narrow_bits)
        s = np.broadcast_to(scale if entry.axis is None else
                            scale.reshape([-1 if i == entry.axis else 1 for i in range(w.ndim)]), w.shape)
        m, back = shaped
        ms, mq = _matrix(np.ascontiguousarray(s), consumers[0])[0], _matrix(q, consumers[0])[0]
        layers.append(Layer(entry, m.astype(np.float64), ms.astype(np.float64), mq.astype(np.float64),
                            2 ** (entry.narrow_bits - 1) - 1, back,
                            [(n, n.input[0], feeding.get((n.name, 0))) for n in consumers]))
    return layers, skipped


def _conv_pads(node: onnx.NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...], strides,
               dilations) -> list[int]:
    """Begin pads then end pads of ``node`` (its ``auto_pad`` resolved)."""
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    k = len(spatial)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, kk, s, d in zip(spatial, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (kk - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * k)
    return list(attr(node, "pads", [0] * (2 * k)))


def conv_patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, ...], count: int | None,
                 rng: np.random.Generator) -> np.ndarray:
    """The im2col patches of Conv ``node`` over input ``x`` [N, C, *spatial] (1 or 2 spatial dims), shaped
    (groups, rows, C/groups * prod(kernel)) in the order of the weight's flattening: one row per output
    position (``count`` of them drawn at random, all when None or more than there are)."""
    if x.ndim == 3:  # 1-D: a 2-D convolution of height 1
        x, kernel = x[:, :, None, :], (1, *kernel)
        strides, dilations = [1, *attr(node, "strides", [1])], [1, *attr(node, "dilations", [1])]
        p = _conv_pads(node, x.shape[3:], kernel[1:], strides[1:], dilations[1:])
        pads = [0, p[0], 0, p[1]]
    else:
        strides, dilations = list(attr(node, "strides", [1, 1])), list(attr(node, "dilations", [1, 1]))
        pads = _conv_pads(node, x.shape[2:], kernel, strides, dilations)
    n, c, hh, ww = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (hh + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (ww + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    total = n * ho * wo
    idx = np.arange(total) if count is None or total <= count else np.sort(rng.choice(total, count, replace=False))
    b, rest = np.divmod(idx, ho * wo)
    oh, ow = np.divmod(rest, wo)
    hi = oh[:, None, None] * sh + (np.arange(kh) * dh)[None, :, None]
    wi = ow[:, None, None] * sw + (np.arange(kw) * dw)[None, None, :]
    patches = xp[b[:, None, None], :, hi, wi]  # (rows, kh, kw, C): the advanced indices' dims come first
    patches = patches.transpose(0, 3, 1, 2).reshape(len(idx), c * kh * kw)
    groups = attr(node, "group", 1)
    return patches.reshape(len(idx), groups, -1).transpose(1, 0, 2)


def _rows(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, ...], count: int,
          rng: np.random.Generator) -> np.ndarray:
    """(groups, rows, D): what the layer ``node`` multiplies its weight with, ``count`` rows at most."""
    if node.op_type == "Conv":
        return conv_patches(x, node, kernel, count, rng)
    flat = x.reshape(-1, x.shape[-1])
    if len(flat) > count:
        flat = flat[np.sort(rng.choice(len(flat), count, replace=False))]
    return flat[None]


def _fake_quantize(x: np.ndarray, params: tuple[float, int, int] | None) -> np.ndarray:
    """``x`` as its activation quantizer writes and reads it back (unchanged when ``params`` is None)."""
    if params is None:
        return x
    scale, zp, dtype = params
    if np.ndim(scale):  # a per-channel quantizer (a depthwise input: its channels on axis 1)
        scale = np.reshape(scale, [1, -1] + [1] * (x.ndim - 2))
    lo, hi = (0, 255) if dtype == onnx.TensorProto.UINT8 else (-128, 127)
    return (np.clip(np.round(x / scale) + zp, lo, hi) - zp) * scale


def collect(prepared: onnx.ModelProto, layers: list[Layer], samples: list[dict], make_session,
            quantizer_params: dict[str, tuple[float, int, int]], quantized_inputs: bool, seed: int = 0) -> None:
    """Fill each layer's h (and a, c with ``quantized_inputs``) from ``samples``: one FP32 run per sample with the
    layers' inputs as extra outputs."""
    tensors = sorted({t for layer in layers for _, t, _ in layer.consumers})
    per_sample = max(1, SAMPLED_ROWS // max(len(samples), 1))
    rng = np.random.default_rng(seed)
    for values in onnx_values(prepared, tensors, samples, make_session):
        for layer in layers:
            kernel = tuple(layer.back(layer.w).shape[2:])
            for node, tensor, quantizer in layer.consumers:
                x = np.asarray(values[tensor], np.float64)
                state = rng.bit_generator.state
                x_rows = _rows(x, node, kernel, per_sample, rng)
                g = x_rows.transpose(0, 2, 1) @ x_rows
                layer.h = g if layer.h is None else layer.h + g
                layer.rows += x_rows.shape[1]
                if not quantized_inputs:
                    continue
                rng.bit_generator.state = state  # the same rows of the quantized input
                xq_rows = _rows(_fake_quantize(x, quantizer_params.get(quantizer.tensor) if quantizer else None),
                                node, kernel, per_sample, rng)
                a, c = xq_rows.transpose(0, 2, 1) @ xq_rows, xq_rows.transpose(0, 2, 1) @ x_rows
                layer.a = a if layer.a is None else layer.a + a
                layer.c = c if layer.c is None else layer.c + c


def layer_loss(wq: np.ndarray, w: np.ndarray, a: np.ndarray, c: np.ndarray, h: np.ndarray) -> float:
    """sum over rows r of ||X_q wq_r - X w_r||^2 from the collected products (wq, w: (groups, rows, D))."""
    if a is h and c is h:  # X_q = X: the error of the difference alone (no cancellation of large terms)
        d = wq - w
        return float(np.sum((d @ h) * d))
    return float(np.sum((wq @ a) * wq) - 2.0 * np.sum((wq @ c) * w) + np.sum((w @ h) * w))


def _soft(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """h(V) and dh/dV of the rectified sigmoid."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (ZETA - GAMMA) + GAMMA
    return np.clip(raw, 0.0, 1.0), np.where((raw > 0.0) & (raw < 1.0), (ZETA - GAMMA) * sig * (1.0 - sig), 0.0)


def optimize(w: np.ndarray, scale: np.ndarray, qmax: int, a: np.ndarray, c: np.ndarray, h: np.ndarray,
             iterations: int) -> np.ndarray:
    """The codes (groups, rows, D) that AdaRound's soft rounding of ``w`` settles on after ``iterations`` Adam
    steps, minimizing layer_loss plus the rounding regularizer."""
    ratio = w / scale
    floor = np.floor(ratio)
    fixed_down, fixed_up = floor >= qmax, floor < -qmax  # rounding the other way would leave the narrow range
    rest = np.clip(ratio - floor, 1e-4, 1.0 - 1e-4)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)  # h(V) = the fractional part: the float weight
    nearest = np.clip(np.round(ratio), -qmax, qmax) * scale
    norm = max(layer_loss(nearest, w, a, c, h), 1e-30)
    # the loop in float32 (twice as fast as float64; the final comparison of losses is in float64)
    w, scale, a, floor = (x.astype(np.float32) for x in (w, scale, a, floor))
    v, wct = v.astype(np.float32), (w @ c.transpose(0, 2, 1).astype(np.float32))
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    warm = int(WARMUP * iterations)
    for t in range(iterations):
        soft, dsoft = _soft(v)
        soft = np.where(fixed_down, 0.0, np.where(fixed_up, 1.0, soft))
        wq = (floor + soft) * scale
        grad_h = 2.0 * (wq @ a - wct) * scale / np.float32(norm)
        if t >= warm:
            beta = BETA[0] + (BETA[1] - BETA[0]) * (t - warm) / max(iterations - warm - 1, 1)
            centered = 2.0 * soft - 1.0
            grad_h -= LAMBDA / soft.size * 2.0 * beta * np.abs(centered) ** (beta - 1.0) * np.sign(centered)
        grad = np.where(fixed_down | fixed_up, 0.0, grad_h * dsoft)
        m1 = b1 * m1 + (1 - b1) * grad
        m2 = b2 * m2 + (1 - b2) * grad * grad
        v -= LEARNING_RATE * (m1 / (1 - b1 ** (t + 1))) / (np.sqrt(m2 / (1 - b2 ** (t + 1))) + eps)
    soft = _soft(v)[0]
    up = np.where(fixed_down, False, np.where(fixed_up, True, soft >= 0.5))
    return np.clip(floor + up, -qmax, qmax)


def _products(layer: Layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, C, H) of ``layer``: A and C are H where the inputs were not quantized."""
    return (layer.h if layer.a is None else layer.a), (layer.h if layer.c is None else layer.c), layer.h


def iteration_seconds(layer: Layer, probe: int = 3) -> float:
    """Seconds one iteration of ``optimize`` takes on ``layer``: ``probe`` more iterations than one, timed, so the
    set-up both share cancels."""
    times = []
    for n in (1, 1 + probe):
        start = time.perf_counter()
        optimize(layer.w, layer.scale, layer.qmax, *_products(layer), n)
        times.append(time.perf_counter() - start)
    return max(times[1] - times[0], 1e-6) / probe


def round_layer(layer: Layer, iterations: int) -> np.ndarray:
    """The layer's codes (its weight's shape): AdaRound's after ``iterations``, or nearest rounding where the
    layer has too few input rows, ``iterations`` is below MIN_ITERATIONS (the budget allowed no more) or AdaRound's
    loss is not lower; fills ``layer.record``."""
    a, c, _ = _products(layer)
    energy = max(float(np.sum((layer.w @ layer.h) * layer.w)), 1e-30)  # the layer output's squared sum
    nearest_loss = layer_loss(layer.nearest * layer.scale, layer.w, a, c, layer.h)
    record = {"iterations": iterations, "rows": layer.rows, "loss_nearest": nearest_loss / energy}
    codes = layer.nearest
    if layer.rows < ROWS_PER_INPUT * layer.w.shape[2]:
        record.update(applied=False, reason=f"too few input rows: {layer.rows} for {layer.w.shape[2]} inputs per "
                      f"output channel (at least {ROWS_PER_INPUT} x as many; more samples give more)")
    elif iterations < MIN_ITERATIONS:
        record.update(applied=False, reason=f"time budget: {iterations} iterations possible, {MIN_ITERATIONS} needed")
    else:
        found = optimize(layer.w, layer.scale, layer.qmax, a, c, layer.h, iterations)
        loss = layer_loss(found * layer.scale, layer.w, a, c, layer.h)
        record["loss_adaround"] = loss / energy
        if loss < nearest_loss:
            codes = found
            record.update(applied=True, flipped=float(np.mean(found != layer.nearest)))
        else:
            record.update(applied=False, reason="nearest rounding's layer loss is not higher")
    layer.record = record
    return layer.back(codes).astype(np.int8)


def round_weights(prepared: onnx.ModelProto, plan: QuantizationPlan, statistics, config: QuantizationConfig,
                  samples: list[dict], make_session) -> dict[str, np.ndarray]:
    """Weight tensor -> its int8 codes (the weight's shape) chosen by AdaRound on the first
    ``advanced.adaround_samples`` of ``samples``, for the planned weights it handles; each weight's record
    (applied, flipped share, relative layer loss of nearest and AdaRound rounding, iterations) goes to
    ``plan.adaround``."""
    adv = config.advanced
    start = time.perf_counter()
    layers, skipped = layers_of(prepared, plan)
    plan.adaround.update(skipped)
    samples = samples[:adv.adaround_samples]
    if not layers or not samples:
        for layer in layers:
            plan.adaround[layer.entry.tensor] = {"applied": False, "reason": "no calibration samples"}
        return {}
    params = {}
    if adv.adaround_quantized_inputs:
        ranges = statistics.ranges(adv.mean_minmax)
        formats = NumberFormats(config.effective_activation_type(), config.weight_type.value)
        params = {p.tensor: activation_quantizer(p, ranges, formats)[:3] for p in plan.activations}
    collect(prepared, layers, samples, make_session, params, adv.adaround_quantized_inputs)
    # The budget is shared by measured cost: every layer gets the same number of iterations (at most
    # MAX_ITERATIONS), the cheapest first, each count recomputed from the time left.
    seconds = {layer.entry.tensor: iteration_seconds(layer) for layer in layers}
    layers.sort(key=lambda la: seconds[la.entry.tensor])
    left = sum(seconds.values())
    codes = {}
    for layer in layers:
        remaining = max(0.0, adv.adaround_time_budget - (time.perf_counter() - start))
        iterations = min(MAX_ITERATIONS, int(remaining / max(left, 1e-9)))
        if iterations < MIN_ITERATIONS:  # too short for all: MIN_ITERATIONS for as many as fit, the cheapest first
            iterations = MIN_ITERATIONS if remaining >= MIN_ITERATIONS * seconds[layer.entry.tensor] else 0
        left -= seconds[layer.entry.tensor]
        codes[layer.entry.tensor] = round_layer(layer, iterations)
        plan.adaround[layer.entry.tensor] = layer.record
        layer.h = layer.a = layer.c = None
    applied = [r for r in plan.adaround.values() if r.get("applied")]
    log.info("adaround: %d of %d weights rounded adaptively in %.1f s (samples %d)", len(applied), len(plan.adaround),
             time.perf_counter() - start, len(samples))
    return {t: c for t, c in codes.items() if plan.adaround[t].get("applied")}
