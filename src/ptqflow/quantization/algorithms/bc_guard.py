"""Bias correction guard: keep the corrected biases only when the model's outputs do not get worse.

Each correction moves one layer's output mean back to FP32's and is right on its own; together they can still
make the model's decisions worse, e.g. on a CTC recognizer that amplifies small perturbations (evidence:
docs/algorithms.md#the-bias-correction-guard).

So after bias correction the FP32, uncorrected and corrected models run on a few calibration samples, and the
correction is reverted when it raises the output error (ptqflow.quantization.algorithms.output_error: per-channel
normalized squared error, Softmax/LogSoftmax heads judged by their class-balanced argmax decisions with the squared
error as a tie-breaker). The samples are ones the correction was not fitted on where the caller has them
(ptqflow.quantization.algorithms.bias_step).

The verdict (``verdict``) is paired, sample by sample, besides the total: the correction stays when it does not
raise the error over the samples and lowers it on at least as many samples as it raises it on. A total over a few
dozen samples is carried by the one or two it gets most wrong, and a correction can win there while it makes the
typical sample worse, which is what unseen data then shows (evidence: docs/algorithms.md#the-bias-correction-guard).
Ties keep the correction.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx

from ptqflow.quantization.algorithms.output_error import OutputError, decision_outputs, token_masks
from ptqflow.runtime.sessions import run_each

__all__ = ["Verdict", "decision_outputs", "judge", "references", "verdict"]


def references(fp32: onnx.ModelProto, samples: list[dict], device: str = "cpu") -> list[list]:
    """The FP32 model's outputs on ``samples``, which ``judge`` measures the error against."""
    return run_each(fp32, samples, device)


def judge(fp32: onnx.ModelProto, uncorrected: onnx.ModelProto, corrected: onnx.ModelProto,
          samples: list[dict], device: str = "cpu", *, tie_weight: float,
          fp32_outputs: list[list] | None = None, uncorrected_outputs: list[list] | None = None) -> Verdict:
    """The guard's ``Verdict`` on ``samples`` (keep the correction, output error without it, with it, ...);
    ``tie_weight``: the weight of a decision output's squared error next to its decisions (OutputError). ``fp32_outputs``: the FP32
    model's outputs on ``samples`` (``references``) when the caller took them already, else they are taken here;
    ``uncorrected_outputs`` likewise for the uncorrected model."""
    names = [o.name for o in fp32.graph.output]
    if fp32_outputs is None:
        fp32_outputs = references(fp32, samples, device)
    error = OutputError(names, fp32_outputs, decision_outputs(fp32), tie_weight=tie_weight,
                        masks=token_masks(samples))
    if uncorrected_outputs is None:
        uncorrected_outputs = run_each(uncorrected, samples, device)
    return verdict(error, uncorrected_outputs, run_each(corrected, samples, device))


class Verdict(NamedTuple):
    """The guard's verdict on a set of samples: keep the correction or not, the output error without and with it,
    and on how many samples it lowered / raised the error."""

    keep: bool
    before: float
    after: float
    lower: int = 0
    higher: int = 0

    def why(self, where: str) -> str:
        """The reason a reverted correction's records give."""
        if self.after > self.before:
            return (f"reverted: bias correction raised the model's output error on {where} calibration samples "
                    f"({self.before:.4g} -> {self.after:.4g})")
        return (f"reverted: bias correction raised the model's output error on {self.higher} of {where} calibration "
                f"samples and lowered it on {self.lower} (in total {self.before:.4g} -> {self.after:.4g}, carried by "
                f"a few samples)")


def verdict(error: OutputError, uncorrected: list[list], corrected: list[list]) -> Verdict:
    """The verdict from both models' runs on the samples ``error`` holds the FP32 outputs of: kept when the total
    error does not rise and the correction lowers the error on at least as many samples as it raises it on (the
    module docstring)."""
    before, after = error(uncorrected), error(corrected)
    per_before, per_after = error.per_run(uncorrected), error.per_run(corrected)
    lower, higher = int(np.sum(per_after < per_before)), int(np.sum(per_after > per_before))
    return Verdict(after <= before and lower >= higher, before, after, lower, higher)
