"""The model's output error against FP32, as the task sees it: the one measure behind the engine's decisions
(the error-driven mixed precision search, the bias-correction guard).

Global squared error is dominated by the widest output channel (a detector head whose box channels span 0-640
hides broken [0, 1] scores next to them), so each float output's error is normalized per channel: the squared
error of a channel over its FP32 variance (1 / SNR), averaged over the channels. The channel axis is the
non-batch axis with the fewest entries (the 4 + C of a YOLO head [N, boxes, 4 + C] or [N, 4 + C, boxes], the C of
an NCHW map). Outputs of a Softmax/LogSoftmax (classifier and CTC heads) are judged as decisions, in one of two
ways (``decisions_as``):

- ``"balanced"``: the class-balanced share of changed argmax decisions (disagreement per FP32 class, averaged
  over the classes, so a frequent class such as CTC blank cannot hide flips of the rare ones), plus
  ``tie_weight`` times the relative squared error, which only breaks ties. A verdict on a few dozen samples
  (the bias-correction guard).
- ``"mass"``: the share of changed argmax decisions plus the mean total-variation distance between the FP32 and
  the quantized class distributions (the probability mass that moved between classes, in [0, 1]): continuous,
  so it ranks candidates on a handful of samples where a rare class's one or two flips would be noise (the
  mixed precision search).

Integer outputs count their share of changed values. The model's error is the mean over its outputs;
``per_output`` says which output carries it.

Padding is not what the task sees. A transformer fed padded sequences takes a padding mask (``attention_mask``,
or ``input_mask`` as TensorFlow's BERT exports name it: [batch, sequence], 1 for a real token); its outputs at
padded positions are computed but no pooling or token head reads them, and on fixed-length inputs they can be most
of the output (60 % on the bench's sentence encoder). Where a sample has such a mask (``token_masks``), each output
whose leading axes are [batch, sequence] is judged on the real tokens only: its values there, one row a token,
normalized per channel of what is left (the hidden size of an encoder's states).
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from ptqflow.errors import ConfigError
from ptqflow.quantization.graph.index import GraphIndex

MASK_INPUTS = ("attention_mask", "input_mask")  # the padding mask's input names (transformers, TF BERT exports)
_PASS_THROUGH = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast"}
# A channel whose FP32 values hardly vary (a constant map) is normalized by this share of the output's mean
# channel variance instead of its own, so float rounding there is not read as a large relative error.
_VARIANCE_FLOOR = 1e-3


DECLARED_KEY = "ptqflow.decision_outputs"  # the prepared model's metadata: AdvancedParameters.decision_outputs


def declare_decisions(model: onnx.ModelProto, names: list[str] | None) -> None:
    """Record ``names`` (AdvancedParameters.decision_outputs) on the prepared ``model``, where every measure of
    the output error reads them (``decision_outputs``); ConfigError naming the field and the output when one is
    not an output of the model."""
    outputs = [o.name for o in model.graph.output]
    unknown = [n for n in names or [] if n not in outputs]
    if unknown:
        raise ConfigError(f"quantization.advanced.decision_outputs: {unknown[0]!r} is not an output of the model "
                          f"(its outputs: {', '.join(outputs)})")
    undeclare(model)
    if names:
        model.metadata_props.add(key=DECLARED_KEY, value=json.dumps(list(names)))


def undeclare(model: onnx.ModelProto) -> None:
    """Remove the record of ``declare_decisions`` (the INT8 model written carries none)."""
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key == DECLARED_KEY:
            del model.metadata_props[i]


def decision_outputs(model: onnx.ModelProto) -> set[str]:
    """Graph outputs produced by Softmax/LogSoftmax, through shape-only ops, and those declared
    (``declare_decisions``)."""
    producer = GraphIndex(model).producer
    found = {n for p in model.metadata_props if p.key == DECLARED_KEY for n in json.loads(p.value)}
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            found.add(out.name)
    return found


def token_masks(samples: list[dict]) -> list[np.ndarray | None]:
    """Each sample's padding mask (boolean [batch, sequence], from the first of ``MASK_INPUTS`` it has), or None
    where it has none, or one that is not 0/1 of rank 2, or one with no real token."""
    found = []
    for sample in samples:
        mask = next((np.asarray(sample[n]) for n in MASK_INPUTS if n in sample), None)
        ok = mask is not None and mask.ndim == 2 and bool(np.isin(mask, (0, 1)).all()) and bool(mask.any())
        found.append(mask.astype(bool) if ok else None)
    return found


def _real_tokens(mask: np.ndarray | None, value: np.ndarray) -> np.ndarray:
    """``value``'s rows at real tokens ([tokens, ...]) when its leading axes are ``mask``'s, else ``value``."""
    if mask is None or value.ndim < 2 or value.shape[:2] != mask.shape:
        return value
    return value[mask]


def channel_axis(shape: tuple[int, ...]) -> int | None:
    """The non-batch axis with the fewest entries above 1 (the first of equals); None for outputs of rank < 2."""
    axes = [(size, axis) for axis, size in enumerate(shape) if axis > 0 and size > 1]
    return min(axes)[1] if axes else None


class OutputError:
    """The output error of a model's runs against the FP32 reference ``refs`` (one list of outputs per run, in
    ``names`` order; a run may hold several stacked samples); see the module docstring. ``masks``: each run's
    padding mask (``token_masks`` of its samples), where outputs are judged on real tokens only."""

    def __init__(self, names: list[str], refs: list[list[np.ndarray]], decisions: set[str], *, tie_weight: float,
                 decisions_as: str = "balanced", masks: list[np.ndarray | None] | None = None):
        self.masks = masks if masks is not None and any(m is not None for m in masks) else None
        self.given = refs  # as given, before masking (an evaluator built on another's samples reuses them)
        refs = self.masked(refs)
        self.names, self.refs, self.decisions, self.tie_weight = names, refs, decisions, tie_weight
        self.decisions_as = decisions_as
        self.variances = [self._variance(j) for j in range(len(names))]
        # decision outputs whose FP32 values are not class distributions: logits (a declared output's), softmaxed
        # for the moved mass; decided once from the references, not on every evaluation
        self.logits = {name for j, name in enumerate(names) if decisions_as == "mass" and name in decisions
                       and np.issubdtype(refs[0][j].dtype, np.floating)
                       and not all(_is_distribution(r[j]) for r in refs)}

    def _variance(self, j: int) -> np.ndarray | None:
        """Per-channel FP32 variance of output ``j`` over every run (floored), or None for integer outputs."""
        refs = [r[j] for r in self.refs]
        if not np.issubdtype(refs[0].dtype, np.floating):
            return None
        axis = channel_axis(refs[0].shape)
        if axis is None or any(r.ndim != refs[0].ndim or r.shape[axis] != refs[0].shape[axis] for r in refs):
            flat = np.concatenate([r.astype(np.float64).ravel() for r in refs])
            return np.array([max(flat.var(), 1e-30)])
        moved = np.concatenate([np.moveaxis(r, axis, 0).reshape(r.shape[axis], -1) for r in refs], axis=1)
        var = moved.astype(np.float64).var(axis=1)
        return np.maximum(var, max(_VARIANCE_FLOOR * float(var.mean()), 1e-30))

    def masked(self, runs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """``runs`` with each output judged on its run's real tokens only (``masks``)."""
        if self.masks is None:
            return runs
        return [[_real_tokens(mask, v) for v in run] for mask, run in zip(self.masks, runs)]

    def per_output(self, outs: list[list[np.ndarray]]) -> np.ndarray:
        """The error of each output (``names`` order) of ``outs``, the runs of the model under test."""
        return self._errors(self.masked(outs), self.refs)

    def per_run(self, outs: list[list[np.ndarray]]) -> np.ndarray:
        """Each run's own error (the mean over its outputs), normalized as the whole set is (the same per-channel
        FP32 variances): what a paired comparison of two models, run by run, reads."""
        return np.array([float(np.mean(self._errors([o], [r]))) if self.names else 0.0
                         for o, r in zip(self.masked(outs), self.refs)])

    def _errors(self, outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> np.ndarray:
        """Per-output errors of the (masked) runs ``outs`` against the (masked) references ``refs``."""
        errors = np.zeros(len(self.names))
        for j, name in enumerate(self.names):
            ref, out = [r[j] for r in refs], [o[j] for o in outs]
            if any(a.shape != b.shape for a, b in zip(out, ref)):
                errors[j] = 1.0  # a different shape (e.g. another number of boxes) is a different answer
            elif self.variances[j] is None:
                errors[j] = float(np.mean([np.mean(a != b) for a, b in zip(out, ref)]))
            elif name in self.decisions and ref[0].ndim >= 1 and ref[0].shape[-1] >= 2:
                errors[j] = (_disagreement(out, ref) + self.tie_weight * _relative(out, ref)
                             if self.decisions_as == "balanced" else _moved_mass(out, ref, name in self.logits))
            else:
                errors[j] = self._normalized(j, out, ref)
        return errors

    def _normalized(self, j: int, out: list[np.ndarray], ref: list[np.ndarray]) -> float:
        """Mean over the channels of output ``j`` of its squared error over its FP32 variance."""
        var = self.variances[j]
        axis = channel_axis(ref[0].shape) if len(var) > 1 else None
        sq = np.zeros(len(var))
        count = 0
        for a, b in zip(out, ref):
            d = (a.astype(np.float64) - b) ** 2
            sq += d.sum() if axis is None else np.moveaxis(d, axis, 0).reshape(len(var), -1).sum(axis=1)
            count += d.size // len(var)
        return float(np.mean(sq / max(count, 1) / var))

    def __call__(self, outs: list[list[np.ndarray]]) -> float:
        """The model's error: the mean of ``per_output``."""
        return float(np.mean(self.per_output(outs))) if self.names else 0.0


def _relative(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """The mean over the runs of the relative squared error: a decision output's tie-breaker, where per-channel
    normalization would weigh the near-constant probabilities of classes never chosen as much as the chosen."""
    return float(np.mean([np.sum((a.astype(np.float64) - b) ** 2) / max(np.sum(b.astype(np.float64) ** 2), 1e-12)
                          for a, b in zip(out, ref)]))


def _distribution(x: np.ndarray, logits: bool) -> np.ndarray:
    """``x`` as class distributions over its last axis: probabilities as they are, log-probabilities (a
    LogSoftmax's, all <= 0) exponentiated, logits (``logits``: the reference is not a distribution) softmaxed."""
    x = x.astype(np.float64)
    if logits:
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    return np.exp(x) if np.max(x) <= 0 else x


def _moved_mass(out: list[np.ndarray], ref: list[np.ndarray], logits: bool) -> float:
    """The share of changed argmax decisions plus the mean total-variation distance between the distributions
    over the last axis (log-probabilities, from a LogSoftmax, are exponentiated first; ``logits``, a declared
    decision output's, softmaxed)."""
    changed, moved, count = 0, 0.0, 0
    for a, b in zip(out, ref):
        p, q = (_distribution(x, logits) for x in (a, b))
        changed += int(np.sum(a.argmax(-1) != b.argmax(-1)))
        moved += float(0.5 * np.abs(p - q).sum(-1).sum())
        count += b[..., 0].size
    return (changed + moved) / max(count, 1)


def _is_distribution(x: np.ndarray) -> bool:
    """True for probabilities (in [0, 1], summing to 1 over the last axis) or log-probabilities (all <= 0, whose
    exponentials sum to 1)."""
    p = _distribution(x, logits=False)
    return bool(np.min(p) >= 0 and np.max(p) <= 1 + 1e-4 and np.allclose(p.sum(-1), 1.0, atol=1e-3))


def _disagreement(out: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """The class-balanced share of argmax decisions (over the last axis) that differ from FP32's."""
    truth = np.concatenate([b.argmax(-1).ravel() for b in ref])
    pred = np.concatenate([a.argmax(-1).ravel() for a in out])
    return float(np.mean([np.mean(pred[truth == c] != c) for c in np.unique(truth)]))
