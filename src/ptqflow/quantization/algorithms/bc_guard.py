"""Bias correction guard: keep the corrected biases only when the model's outputs do not get worse.

Each correction moves one layer's output mean back to FP32's and is right on its own; together they can still
make the model's decisions worse, e.g. on a CTC recognizer that amplifies small perturbations (evidence:
docs/algorithms.md#the-bias-correction-guard).

So after bias correction the FP32, uncorrected and corrected models run on a few calibration samples, and the
correction is reverted when it raises the output error. The error is the relative squared error of every float
output, except for outputs produced by a Softmax/LogSoftmax (classifier and CTC heads), which are judged by
their decisions: the class-balanced share of changed argmax decisions (the disagreement rate per FP32 class,
averaged over the classes, so a frequent class such as CTC blank cannot hide flips of the rare ones), with the
squared error as a tie-breaker (squared error alone can fall while decisions get worse). Ties keep the correction.
"""

from __future__ import annotations

import numpy as np
import onnx

from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.runtime.sessions import run_each

_PASS_THROUGH = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast"}


def decision_outputs(model: onnx.ModelProto) -> set[str]:
    """Graph outputs produced by Softmax/LogSoftmax, through shape-only ops."""
    producer = GraphIndex(model).producer
    found = set()
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            found.add(out.name)
    return found


def output_error(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]], names: list[str],
                 decisions: set[str], *, tie_weight: float) -> float:
    """Mean relative squared error of the float outputs plus the class-balanced decision disagreement.

    A decision output's squared error counts ``tie_weight`` times (advanced.bias_correction_guard_tie_weight)."""
    total = 0.0
    for j, name in enumerate(names):
        ref = [r[j] for r in refs]
        out = [o[j] for o in outs]
        if not np.issubdtype(ref[0].dtype, np.floating):
            total += float(np.mean([np.mean(a != b) for a, b in zip(out, ref)]))
            continue
        rse = float(np.mean([np.sum((a.astype(np.float64) - b) ** 2) / max(np.sum(b.astype(np.float64) ** 2), 1e-12)
                             for a, b in zip(out, ref)]))
        if name in decisions and ref[0].ndim >= 1 and ref[0].shape[-1] >= 2:
            truth = np.concatenate([b.argmax(-1).ravel() for b in ref])
            pred = np.concatenate([a.argmax(-1).ravel() for a in out])
            # decisions are what a classifier head is judged by; the squared error only breaks ties
            total += float(np.mean([np.mean(pred[truth == c] != c) for c in np.unique(truth)])) + tie_weight * rse
        else:
            total += rse
    return total


def judge(fp32: onnx.ModelProto, uncorrected: onnx.ModelProto | list, corrected: onnx.ModelProto,
          samples: list[dict], device: str = "cpu", *, tie_weight: float) -> tuple[bool, float, float]:
    """(keep the correction, output error without it, output error with it) on ``samples``; ``uncorrected`` is the
    model without the correction or its outputs on ``samples`` (``run_each``'s list, run before correcting, so
    that no copy of the model is kept); ``tie_weight``: see output_error."""
    names = [o.name for o in fp32.graph.output]
    decisions = decision_outputs(fp32)
    refs = run_each(fp32, samples, device)
    outs = run_each(uncorrected, samples, device) if isinstance(uncorrected, onnx.ModelProto) else uncorrected
    before = output_error(outs, refs, names, decisions, tie_weight=tie_weight)
    after = output_error(run_each(corrected, samples, device), refs, names, decisions, tie_weight=tie_weight)
    return after <= before, before, after
