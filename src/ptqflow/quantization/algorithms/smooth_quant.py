"""SmoothQuant for the linear layers of transformers: move activation outliers into the weights.

Transformer activations carry a few channels far larger than the rest, and one per-tensor int8 scale then
leaves the ordinary channels a handful of codes; the weights are easy to quantize per output channel. For each
activation ``x`` feeding MatMuls with a constant 2-D weight ``W[K, N]``, a per-channel factor
``s_k = max|x_k|^alpha / max_n |W[k, n]|^(1 - alpha)`` divides the activation (a Mul inserted before the
MatMuls, kept in float) and multiplies the weight rows, which leaves the FP32 function unchanged. MatMuls that
read the same activation share one factor, computed from the largest of their weight rows.

The factors come from a short pass over the first calibration samples (advanced.smooth_quant_samples), before
placement and statistics, which
then see the smoothed graph. They are recorded in the plan, so another process re-applies them exactly.
The default, "auto", measures each activation's strength (``choose_alphas``: of 0.5, 0.65, 0.8, 0.95, the one
whose smoothing leaves its MatMuls the least quantization error); no single alpha is best for all of a model's
activations. The smoothed tensor is typed as the one it scales, so that placement gives it its activation
quantizer (evidence: docs/algorithms.md#smoothquant).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqflow.quantization.algorithms.minmax import _topological_insert
from ptqflow.quantization.algorithms.output_error import token_masks
from ptqflow.quantization.statistics.collector import augment
from ptqflow.quantization.statistics.points import Reducer, observation_id, parse_observation

_MIN_SCALE = 1e-5  # floor on a factor, so 1/s stays finite
AUTO = "auto"


def candidates(model: onnx.ModelProto, nodes: set[str]) -> dict[str, list[onnx.NodeProto]]:
    """Activation tensor -> the MatMuls among ``nodes`` that read it against a constant 2-D weight."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        if (n.op_type == "MatMul" and n.name in nodes and len(n.input) == 2 and n.input[1] in inits
                and len(inits[n.input[1]].dims) == 2 and n.input[0] not in inits):
            out.setdefault(n.input[0], []).append(n)
    return out


def channel_absmax(model: onnx.ModelProto, tensors: list[str], samples: list[dict], runner_factory) -> dict:
    """Per tensor, the per-channel (last axis) max |x| over ``samples``."""
    aug, out_map = augment(model, [observation_id(t, Reducer.ABSMAX, -1) for t in tensors], per_sample=False)
    runner = runner_factory(aug, list(out_map))
    found: dict[str, np.ndarray] = {}
    for outs, _ in runner.map({"arrays": s, "count": 1} for s in samples):
        for out, value in outs.items():
            key = parse_observation(out_map[out])[0]
            v = np.asarray(value, np.float64).reshape(-1)
            found[key] = np.maximum(found[key], v) if key in found else v
    return found


def factors(model: onnx.ModelProto, groups: dict[str, list[onnx.NodeProto]], absmax: dict[str, np.ndarray],
            alpha: float) -> dict[str, np.ndarray]:
    """Per activation tensor, the smoothing factors s (float32 [K]); tensors without statistics are skipped."""
    inits = {t.name: t for t in model.graph.initializer}
    table = {}
    for tensor, users in groups.items():
        amax = absmax.get(tensor)
        if amax is None or not np.all(np.isfinite(amax)):
            continue
        wmax = np.max([np.abs(numpy_helper.to_array(inits[u.input[1]])).max(axis=1) for u in users], axis=0)
        if wmax.shape != amax.shape:
            continue
        s = np.power(np.maximum(amax, 0.0), alpha) / np.power(np.maximum(wmax, 1e-12), 1.0 - alpha)
        s = np.where(amax > 0, np.maximum(s, _MIN_SCALE), 1.0)
        table[tensor] = s.astype(np.float32)
    return table


def apply(model: onnx.ModelProto, table: dict[str, dict]) -> None:
    """For each tensor of ``table`` ({"scales": s, "nodes": MatMul names}): insert ``x * (1/s)`` before those
    MatMuls and scale their weight rows by s, in place (a weight shared with other nodes is copied first). Other
    readers of the tensor keep reading it unchanged."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    by_name = {n.name: n for n in g.node}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    typed = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    new_nodes = []
    for tensor, entry in table.items():
        s = np.asarray(entry["scales"], np.float32)
        inv_name, out = f"{tensor}_ptqflow_smooth_inv", f"{tensor}_ptqflow_smoothed"
        g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        new_nodes.append(helper.make_node("Mul", [tensor, inv_name], [out], name=f"{tensor}_ptqflow_smooth"))
        # The smoothed tensor is typed as the one it scales: placement takes an untyped tensor downstream of shape
        # arithmetic (a transformer's Reshape targets come from Shape) for an integer one and would not quantize it.
        vi = g.value_info.add()
        if tensor in typed:
            vi.CopyFrom(typed[tensor])
        else:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        vi.name = out
        for name in entry["nodes"]:
            u = by_name[name]
            w_name = u.input[1]
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32) * s[:, None]
            if readers.get(w_name, 0) > 1:
                w_name = f"{w_name}_ptqflow_smoothed_{u.name}"
                u.input[1] = w_name
                g.initializer.append(numpy_helper.from_array(w, w_name))
            else:
                inits[w_name].CopyFrom(numpy_helper.from_array(w, w_name))
            u.input[0] = out
    _topological_insert(g, new_nodes)


ALPHAS = (0.5, 0.65, 0.8, 0.95)  # the strengths measured for each activation when the alpha is "auto"
SAMPLES = 16  # of the SmoothQuant samples, the first ones whose rows the alphas are compared on
_ROWS = 1024  # at most this many rows of each activation


def activation_rows(model: onnx.ModelProto, tensors: list[str], samples: list[dict], runner_factory,
                    max_rows: int = _ROWS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor, up to ``max_rows`` of its rows over ``samples`` ([rows, channels], the last axis the channel)
    and whether each row is a real token (False at the positions a sample's padding mask marks padded, where the
    tensor's leading axes are the mask's: output_error.token_masks)."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    known = {o.name for o in aug.graph.output}
    aug.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors if t not in known)
    runner = runner_factory(aug, list(tensors))
    found: dict[str, list] = {t: [] for t in tensors}
    for (outs, _), mask in zip(runner.map({"arrays": s, "count": 1} for s in samples), token_masks(samples)):
        for t, value in outs.items():
            v = np.asarray(value, np.float32)
            real = (mask.reshape(-1) if mask is not None and v.ndim >= 2 and v.shape[:2] == mask.shape
                    else np.ones(v.size // v.shape[-1], bool))
            found[t].append((v.reshape(-1, v.shape[-1]), np.repeat(real, v.size // v.shape[-1] // real.size)))
    del runner, aug
    rng = np.random.default_rng(0)
    picked = {}
    for t, parts in found.items():
        if not parts:
            continue
        rows, real = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if len(rows) > max_rows:
            keep = np.sort(rng.choice(len(rows), max_rows, replace=False))
            rows, real = rows[keep], real[keep]
        picked[t] = (rows, real)
    return picked


def _fake_quant_tensor(x: np.ndarray) -> np.ndarray:
    """``x`` through an asymmetric per-tensor uint8 quantizer over its own range (0 included)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_columns(w: np.ndarray) -> np.ndarray:
    """``w`` [K, N] through symmetric per-output-channel int8 quantizers."""
    scale = np.maximum(np.abs(w).max(axis=0, keepdims=True), 1e-12) / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def layer_error(rows: np.ndarray, real: np.ndarray, weights: list[np.ndarray], s: np.ndarray) -> float:
    """The relative squared error, at the real-token rows, of the MatMuls ``rows @ W`` when ``rows / s`` (one
    range over every row, padded ones included, as the activation quantizer sees them) and ``W * s`` are
    quantized; the mean over the MatMuls."""
    qx = _fake_quant_tensor(rows / s)[real]
    x = rows[real]
    err = 0.0
    for w in weights:
        ref = x @ w
        err += float(np.sum((qx @ _fake_quant_columns(w * s[:, None]) - ref) ** 2) / max(float(np.sum(ref ** 2)), 1e-30))
    return err / len(weights)


def choose_alphas(model: onnx.ModelProto, groups: dict[str, list[onnx.NodeProto]], absmax: dict[str, np.ndarray],
                  samples: list[dict], runner_factory) -> dict[str, tuple[float, dict[float, float]]]:
    """Per activation tensor, the alpha of ``ALPHAS`` whose smoothing leaves its MatMuls the least output error
    when activation and weights are quantized (``layer_error`` on rows of the first ``SAMPLES`` samples), and
    the error of each alpha measured."""
    rows = activation_rows(model, sorted(groups), samples[:SAMPLES], runner_factory)
    inits = {t.name: t for t in model.graph.initializer}
    chosen = {}
    for t, users in groups.items():
        if t not in rows or not rows[t][1].any():
            continue
        weights = [numpy_helper.to_array(inits[u.input[1]]).astype(np.float32) for u in users]
        errors = {}
        for a in ALPHAS:
            s = factors(model, {t: users}, absmax, a).get(t)
            if s is not None:
                errors[a] = layer_error(rows[t][0], rows[t][1], weights, s)
        if errors:
            chosen[t] = (min(errors, key=errors.get), errors)
    return chosen


def smooth(model: onnx.ModelProto, nodes: set[str], samples: list[dict], alpha: float | str, runner_factory) -> dict:
    """Compute and apply the factors on ``model`` (in place); ``alpha`` a number, or "auto": each activation's
    measured (``choose_alphas``). Returns the table for the plan (JSON: per tensor its scales, the MatMuls, the
    alpha and, where measured, each alpha's error)."""
    groups = candidates(model, nodes)
    if not groups or not samples:
        return {}
    absmax = channel_absmax(model, sorted(groups), samples, runner_factory)
    measured = choose_alphas(model, groups, absmax, samples, runner_factory) if alpha == AUTO else {}
    table = {}
    for t, users in groups.items():
        a, errors = measured.get(t, (ALPHAS[0] if alpha == AUTO else float(alpha), {}))
        s = factors(model, {t: users}, absmax, a).get(t)
        if s is not None:
            table[t] = {"scales": [float(v) for v in s], "nodes": [u.name for u in users], "alpha": a}
            if errors:
                table[t]["errors"] = {str(k): v for k, v in errors.items()}
    apply(model, table)
    return table
