"""The sensitivity search (``sensitivity_search``) on an OpenVINO model: algorithms.sensitivity's search, measured
on a gated ov.Model instead of a gated ONNX model.

The gated model is the INT8 model the FakeQuantize writer makes (algorithms.fake_quantize, so it computes what the
quantized IR computes), with every activation FakeQuantize behind a switch: its readers get
``x + g[k] * (FakeQuantize(x) - x)``, ``g`` one more Parameter (``sensitivity.GATE``, one entry per activation
quantizer, in plan order). One compiled model then measures, per calibration sample, the output error with any set
of quantizers switched off, and the choice is the ONNX path's (sensitivity.greedy, with its measurement and
error): switch off, one at a time, the quantizer whose removal cuts the error by at least ``sensitivity_min_gain``
while the error is at least ``sensitivity_min_error``.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ptqflow.quantization.algorithms.fake_quantize import insert_fake_quantize
from ptqflow.quantization.algorithms.sensitivity import GATE, greedy
from ptqflow.quantization.graph.openvino_view import OVView
from ptqflow.quantization.plan import QuantizationPlan


def gated_model(model, view: OVView, plan: QuantizationPlan, ranges: dict) -> tuple[ov.Model, list[str]]:
    """The INT8 ov.Model of ``model`` (its ``view``'s plan written with FakeQuantize) with every activation
    quantizer switchable through the Parameter GATE; and the quantized tensors in gate order."""
    q = model.clone()
    records = [r for r in insert_fake_quantize(q, view.bind(q), plan, ranges) if r["kind"] == "activation"]
    fqs = {op.get_friendly_name(): op for op in q.get_ordered_ops() if op.get_type_name() == "FakeQuantize"}
    gate = ops.parameter([len(records)], ov.Type.f32, name=GATE)
    gate.output(0).get_tensor().set_names({GATE})
    for k, record in enumerate(records):
        fq = fqs[record["output"]]
        readers = list(fq.output(0).get_target_inputs())
        x = fq.input_value(0)
        g = ops.gather(gate, ops.constant(np.array(k, np.int64)), ops.constant(np.array(0, np.int64)))
        gated = ops.add(x, ops.multiply(ops.subtract(fq.output(0), x), g))
        for reader in readers:
            reader.replace_source_output(gated.output(0))
    q.add_parameters([gate])
    q.validate_nodes_and_infer_types()
    return q, [r["tensor"] for r in records]


class _Session:
    """An ov.Model compiled for OpenVINO CPU at f32, run as sensitivity.leave_one_out runs a session:
    ``run(None, feed)`` -> the outputs in Result order."""

    def __init__(self, model):
        self.request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()

    def run(self, _, feed: dict) -> list[np.ndarray]:
        result = self.request.infer(feed)
        return [np.array(result[k], copy=True) for k in range(len(result))]


def find_sensitive(model, view: OVView, plan: QuantizationPlan, ranges: dict, samples: list[dict], *, max_points: int,
                   min_gain: float, min_error: float) -> list[tuple[str, float, float]]:
    """sensitivity.find_sensitive on the ov.Model ``model`` (``view`` its view, which ``plan`` names): (tensor,
    error before, error after) per quantizer to keep in float."""
    if not samples or len(plan.activations) < 2:
        return []
    gated, tensors = gated_model(model, view, plan, ranges)
    fp32, session = _Session(model), _Session(gated)
    refs = [fp32.run(None, s) for s in samples]
    return greedy(session, tensors, samples, refs, max_points=max_points, min_gain=min_gain, min_error=min_error)
