"""Bias correction guard: keep the corrected biases only when the model's outputs do not get worse.

Each correction moves one layer's output mean back to FP32's and is right on its own; together they can still
make the model's decisions worse, e.g. on a CTC recognizer that amplifies small perturbations (evidence:
docs/algorithms.md#the-bias-correction-guard).

So after bias correction the FP32, uncorrected and corrected models run on a few calibration samples, and the
correction is reverted when it raises the output error (ptqflow.quantization.algorithms.output_error: per-channel
normalized squared error, Softmax/LogSoftmax heads judged by their class-balanced argmax decisions with the squared
error as a tie-breaker). The samples are ones the correction was not fitted on where the caller has them
(ptqflow.quantization.algorithms.bias_step). Ties keep the correction.
"""

from __future__ import annotations

import onnx

from ptqflow.quantization.algorithms.output_error import OutputError, decision_outputs, token_masks
from ptqflow.runtime.sessions import run_each

__all__ = ["decision_outputs", "judge", "references"]


def references(fp32: onnx.ModelProto, samples: list[dict], device: str = "cpu") -> list[list]:
    """The FP32 model's outputs on ``samples``, which ``judge`` measures the error against."""
    return run_each(fp32, samples, device)


def judge(fp32: onnx.ModelProto, uncorrected: onnx.ModelProto, corrected: onnx.ModelProto,
          samples: list[dict], device: str = "cpu", *, tie_weight: float,
          fp32_outputs: list[list] | None = None) -> tuple[bool, float, float]:
    """(keep the correction, output error without it, output error with it) on ``samples``; ``tie_weight``: the
    weight of a decision output's squared error next to its decisions (OutputError). ``fp32_outputs``: the FP32
    model's outputs on ``samples`` (``references``) when the caller took them already, else they are taken here."""
    names = [o.name for o in fp32.graph.output]
    if fp32_outputs is None:
        fp32_outputs = references(fp32, samples, device)
    error = OutputError(names, fp32_outputs, decision_outputs(fp32), tie_weight=tie_weight,
                        masks=token_masks(samples))
    before = error(run_each(uncorrected, samples, device))
    after = error(run_each(corrected, samples, device))
    return after <= before, before, after
