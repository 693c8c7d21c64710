"""Cross-layer equalization with bias absorption (Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019), on the FP32 graph before placement and statistics.

For two convolutions with only a positively homogeneous activation between them (ReLU, LeakyReLU, or none),
``f(W1 x + b1) = S f(S^-1 (W1 x + b1))`` for any positive diagonal ``S``: channel i of the first layer's output
is divided by ``s_i`` and the second layer's input channel i multiplied by it, and the model computes the same
function. ``s_i = sqrt(r1_i / r2_i)`` (r: the channel's max |w| in the first layer's output channel and in the
second layer's input channel) gives both the same range ``sqrt(r1_i r2_i)``; chains (Conv -> depthwise Conv ->
Conv) are equalized pair by pair until the scales settle. Besides the weights, the activation between the two
layers is rescaled per channel, which is what a per-tensor activation quantizer sees.

Bias absorption moves ``c_i = max(0, beta_i - k |gamma_i|)`` (the BatchNormalization's output mean and deviation,
recorded by ``batchnorm_bounds`` before folding; k = ``advanced.bias_absorption_sigmas``) out of a ReLU input
into the next layer's bias: ``ReLU(h - c) = ReLU(h) - c`` wherever ``h >= c``, and the next layer adds ``W2 c``
back. Only into a layer without padding (a pointwise convolution), where ``W2 c`` is the same at every position;
padded zeros would no longer stand for zero.

Skipped, each with a change line: a clipping activation (ReLU6, Clip with a finite maximum) between the layers,
since ``min(x / s, 6) != min(x, 6) / s``; weights or the tensor between read by anything else; weights that are
not initializers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ptqflow.config import AdvancedParameters
from ptqflow.quantization.graph.index import GraphIndex, attr
from ptqflow.quantization.graph.passes import batchnorm_bounds
from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult

HOMOGENEOUS = {"Relu", "LeakyRelu"}  # f(a x) = a f(x) for a > 0
# Iterations over all pairs (chains converge geometrically; the paper's models settle in a few) and the scale
# change at which they stop: algorithm constants, not tuned thresholds.
MAX_ROUNDS = 50
SETTLED = 1e-4


@dataclass
class Pair:
    first: onnx.NodeProto
    act: onnx.NodeProto | None
    second: onnx.NodeProto

    def label(self) -> str:
        mid = f" -> {self.act.op_type}" if self.act is not None else ""
        return f"Conv {self.first.name or self.first.output[0]}{mid} -> Conv {self.second.name or self.second.output[0]}"


def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], list[str]]:
    """The Conv -> (ReLU | LeakyReLU | nothing) -> Conv pairs equalization may rescale, and one line per pair it
    may not (a Clip between them: ReLU6's bound would have to move per channel, a Clip's is one number)."""
    idx = GraphIndex(model.graph)
    pairs, skipped = [], []

    def only_reader(tensor: str) -> onnx.NodeProto | None:
        readers = idx.consumers.get(tensor, [])
        return readers[0][0] if len(readers) == 1 and tensor not in idx.outputs else None

    def own_weight(node: onnx.NodeProto) -> bool:
        return len(node.input) > 1 and node.input[1] in idx.inits and len(idx.consumers.get(node.input[1], [])) == 1

    for first in model.graph.node:
        if first.op_type != "Conv" or not own_weight(first):
            continue
        if len(first.input) > 2 and first.input[2] and first.input[2] not in idx.inits:
            continue
        nxt = only_reader(first.output[0])
        act = None
        if nxt is not None and nxt.op_type in HOMOGENEOUS | {"Clip"}:
            act, nxt = nxt, only_reader(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or not own_weight(nxt) or nxt.input[0] != (act or first).output[0]:
            continue
        if len(nxt.input) > 2 and nxt.input[2] and nxt.input[2] not in idx.inits:
            continue
        pair = Pair(first, act, nxt)
        if act is not None and act.op_type == "Clip":
            skipped.append(f"skipped {pair.label()}: a Clip (ReLU6) does not commute with per-channel scaling")
            continue
        pairs.append(pair)
    return pairs, skipped


class _Weights:
    """The pairs' weights and biases as float64 arrays, written back once at the end."""

    def __init__(self, model: onnx.ModelProto):
        self.inits = {t.name: t for t in model.graph.initializer}
        self.arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name]).astype(np.float64)
        return self.arrays[name]

    def write(self) -> None:
        for name, a in self.arrays.items():
            old = self.inits[name]
            old.CopyFrom(numpy_helper.from_array(a.astype(numpy_helper.to_array(old).dtype), name))


def _grouped(w2: np.ndarray, group: int) -> np.ndarray:
    """The second layer's weight as [group, out per group, in per group, rest]: input channel i is
    [i // in_per_group, :, i % in_per_group]."""
    return w2.reshape(group, w2.shape[0] // group, w2.shape[1], -1)


def _ranges(pair: Pair, w: _Weights) -> tuple[np.ndarray, np.ndarray] | None:
    w1, w2 = w[pair.first.input[1]], w[pair.second.input[1]]
    group = attr(pair.second, "group", 1)
    channels = w1.shape[0]
    if w2.shape[1] * group != channels or w2.shape[0] % group:
        return None
    r1 = np.abs(w1.reshape(channels, -1)).max(axis=1)
    r2 = np.abs(_grouped(w2, group)).max(axis=(1, 3)).reshape(channels)
    return r1, r2


def _scale(pair: Pair, w: _Weights, s: np.ndarray) -> None:
    """Channel i of the first layer's output divided by s_i, the second layer's input channel i multiplied."""
    w1 = w[pair.first.input[1]]
    w1 /= s.reshape(-1, *[1] * (w1.ndim - 1))
    if len(pair.first.input) > 2 and pair.first.input[2]:
        w[pair.first.input[2]][...] /= s
    w2 = w[pair.second.input[1]]
    group = attr(pair.second, "group", 1)
    g = _grouped(w2, group)
    g *= s.reshape(group, 1, -1, 1)
    w.arrays[pair.second.input[1]] = g.reshape(w2.shape)


def _unpadded(node: onnx.NodeProto) -> bool:
    return not any(attr(node, "pads", [])) and attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET",
                                                                                   "VALID")


def _absorb(pair: Pair, w: _Weights, scale: np.ndarray, moments, sigmas: float, model) -> bool:
    """Bias absorption from the pair's ReLU input into the second layer (see the module docstring)."""
    if pair.act is None or pair.act.op_type != "Relu" or sigmas <= 0 or not _unpadded(pair.second):
        return False
    if len(pair.first.input) < 3 or not pair.first.input[2] or pair.first.output[0] not in moments:
        return False
    beta, gamma = moments[pair.first.output[0]]
    c = np.maximum(0.0, (beta - sigmas * gamma) / scale)  # the recorded moments are of the unscaled output
    if not c.any() or c.shape != w[pair.first.input[2]].shape:
        return False
    w[pair.first.input[2]][...] -= c
    w2 = w[pair.second.input[1]]
    group = attr(pair.second, "group", 1)
    shift = np.einsum("gojk,gj->go", _grouped(w2, group), c.reshape(group, -1)).reshape(-1)
    if len(pair.second.input) < 3 or not pair.second.input[2]:
        name = f"{pair.second.output[0]}_absorbed_bias"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(w2.shape[0], np.float32), name))
        w.inits[name] = model.graph.initializer[-1]
        while len(pair.second.input) < 3:
            pair.second.input.append("")
        pair.second.input[2] = name
    w[pair.second.input[2]][...] += shift
    return True


class CrossLayerEqualization(GraphPass):
    """Switch ``cross_layer_equalization`` (off by default: bench/README.md has the figures); bias absorption's
    bound: ``bias_absorption_sigmas`` (0: none)."""

    name = "cross_layer_equalization"
    switch = "cross_layer_equalization"

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        return self.apply(model, AdvancedParameters())

    def apply(self, model: onnx.ModelProto, advanced: AdvancedParameters) -> tuple[onnx.ModelProto, GraphPassResult]:
        """``model`` (changed in place) with every pair of ``find_pairs`` equalized, and biases absorbed where
        the recorded BatchNormalization moments allow; one change line per pair, skipped pairs included."""
        moments = batchnorm_bounds.pop(model)
        pairs, changes = find_pairs(model)
        w = _Weights(model)
        usable = [p for p in pairs if _ranges(p, w) is not None]
        total = {id(p): np.ones(w[p.first.input[1]].shape[0]) for p in usable}
        spread_before = {id(p): _spread(*_ranges(p, w)) for p in usable}
        for _ in range(MAX_ROUNDS):
            moved = 0.0
            for p in usable:
                r1, r2 = _ranges(p, w)
                s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
                _scale(p, w, s)
                total[id(p)] *= s
                moved = max(moved, float(np.abs(np.log(s)).max()))
            if moved < SETTLED:
                break
        for p in usable:
            absorbed = _absorb(p, w, total[id(p)], moments, advanced.bias_absorption_sigmas, model)
            changes.append(f"equalized {p.label()}: median/max channel range {spread_before[id(p)]:.2f} -> "
                           f"{_spread(*_ranges(p, w)):.2f}" + (", bias absorbed" if absorbed else ""))
        w.write()
        return model, self.result(changes)


def _spread(r1: np.ndarray, r2: np.ndarray) -> float:
    """The smaller of the two layers' median/max channel range ratios (1: equal ranges)."""
    return float(min(np.median(r1) / max(r1.max(), 1e-30), np.median(r2) / max(r2.max(), 1e-30)))
