"""The model at opset >= MIN_OPSET (13), where QuantizeLinear/DequantizeLinear take per-axis scales."""

from __future__ import annotations

import logging

import onnx
from onnx import version_converter

from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.quantization.graph.prepare import MIN_OPSET, onnx_opset

log = logging.getLogger(__name__)


class UpgradeOpset(GraphPass):
    """Always on: the quantizers ptqflow writes need opset 13; when the converter fails, a warning says so."""

    name = "upgrade_opset"
    switch = None

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """The upgraded copy, or ``model`` unchanged with a warning when onnx's converter cannot upgrade it."""
        opset = onnx_opset(model)
        if opset >= MIN_OPSET:
            return model, self.result([])
        try:
            upgraded = version_converter.convert_version(model, MIN_OPSET)
            onnx.checker.check_model(upgraded)
            return upgraded, self.result([f"opset {opset} -> {MIN_OPSET}"])
        except Exception as exc:  # the converter lacks adapters for some ops
            msg = f"could not upgrade opset {opset} to {MIN_OPSET} ({exc}); weights fall back to per-tensor scales"
            log.warning(msg)
            return model, self.result([], [msg])
