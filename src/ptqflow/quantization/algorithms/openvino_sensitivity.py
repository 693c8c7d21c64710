"""The measured searches on an OpenVINO model: the sensitivity search (``sensitivity_search``, algorithms.sensitivity)
and the error-driven mixed-precision search (``safeguard_mixed_precision``, algorithms.error_search), each the ONNX
path's own search measured on a gated ov.Model instead of a gated ONNX model.

The gated model is the INT8 model the FakeQuantize writer makes (algorithms.fake_quantize, so it computes what the
quantized IR computes), with every activation FakeQuantize behind a switch: its readers get
``x + g[k] * (FakeQuantize(x) - x)``, ``g`` one more Parameter (``sensitivity.GATE``, one entry per activation
quantizer, in plan order); for the mixed-precision search each weight quantizer too, after the activations (the
ONNX gated model's order): the writer replaces a weight by FakeQuantize of its dequantized codes, and the layers
read ``w + g[k] * (codes - w)`` with the FP32 constant kept beside. One compiled model then measures, per
calibration sample, the output error with any set of quantizers switched off. The sensitivity choice is
sensitivity.greedy's (switch off, one at a time, the quantizer whose removal cuts the error by at least
``sensitivity_min_gain`` while the error is at least ``sensitivity_min_error``); the mixed-precision one is
error_search.search's, run unchanged with the model's view standing for the ONNX model it reads names from."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ptqflow.quantization.algorithms import error_search
from ptqflow.quantization.algorithms.fake_quantize import insert_fake_quantize
from ptqflow.quantization.algorithms.sensitivity import GATE, greedy
from ptqflow.quantization.graph.openvino_view import BoundView, OVView
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.quantization.statistics.runner import OpenVINORunner


def gated_model(model, view: OVView, plan: QuantizationPlan, ranges: dict,
                weights: bool = False) -> tuple[ov.Model, list[str]]:
    """The INT8 ov.Model of ``model`` (its ``view``'s plan written with FakeQuantize) with every activation
    quantizer switchable through the Parameter GATE; and the quantized tensors in gate order. With ``weights``,
    each planned weight quantizer has a gate too, after the activations' (sensitivity.gated_model's order): its
    layers read ``w + g * (codes - w)``, the FP32 weight kept beside its dequantized codes (the model holds the
    gated weights twice). The view's output names are the model's output names (``named``)."""
    q = model.clone()
    bound = view.bind(q)
    # the FP32 weight each planned weight's layers read, before the writer replaces it (the node stays alive)
    floats = [bound.node(w.nodes[0][0]).input(w.nodes[0][1]).get_source_output() for w in plan.weights] \
        if weights else []
    records = [r for r in insert_fake_quantize(q, bound, plan, ranges) if r["kind"] == "activation"]
    fqs = {op.get_friendly_name(): op for op in q.get_ordered_ops() if op.get_type_name() == "FakeQuantize"}
    switches = [(fqs[r["output"]].input_value(0), fqs[r["output"]].output(0)) for r in records]
    switches += [(w, bound.node(entry.nodes[0][0]).input(entry.nodes[0][1]).get_source_output())
                 for w, entry in zip(floats, plan.weights)]  # (FP32 value, its quantized value)
    gate = ops.parameter([len(switches)], ov.Type.f32, name=GATE)
    gate.output(0).get_tensor().set_names({GATE})
    for k, (x, quantized) in enumerate(switches):
        readers = list(quantized.get_target_inputs())
        g = ops.gather(gate, ops.constant(np.array(k, np.int64)), ops.constant(np.array(0, np.int64)))
        gated = ops.add(x, ops.multiply(ops.subtract(quantized, x), g))
        for reader in readers:
            reader.replace_source_output(gated.output(0))
    q.add_parameters([gate])
    q.validate_nodes_and_infer_types()
    name_outputs(bound)
    return q, [r["tensor"] for r in records] + ([w.tensor for w in plan.weights] if weights else [])


def named(model, view: OVView) -> ov.Model:
    """A clone of ``model`` whose outputs carry the view's output names (a view names an output by one of its
    tensor names, or by its producer when it has none): what a runner asked for them finds."""
    q = model.clone()
    name_outputs(view.bind(q))
    return q


def name_outputs(bound: BoundView) -> None:
    """Give the outputs of the model ``bound`` refers to the view's output names."""
    for out in bound.view.view.graph.output:
        bound.port(out.name).get_tensor().add_names({out.name})


class _Session:
    """An ov.Model compiled for OpenVINO CPU at f32, run as sensitivity.leave_one_out runs a session:
    ``run(None, feed)`` -> the outputs in Result order, or those named ``outputs`` in their order."""

    def __init__(self, model, outputs: list[str] | None = None):
        self.request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        self.outputs = outputs

    def run(self, _, feed: dict) -> list[np.ndarray]:
        result = self.request.infer(feed)
        return [np.array(result[k], copy=True) for k in (self.outputs or range(len(result)))]


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


def mixed_precision_search(model, view: OVView, plan: QuantizationPlan, ranges: dict, samples: list[dict],
                           **bounds) -> error_search.SearchResult:
    """error_search.search (the mixed-precision search, ``bounds`` its keyword arguments) on the ov.Model ``model``
    (``view`` its view, which ``plan`` names), on OpenVINO CPU at f32, the view standing for the ONNX model the
    search reads its inputs, outputs and Softmax heads from. With weight gates (``bounds["weights"]``) every gate
    off is the FP32 model, so the FP32 references come from the gated model itself: one model compiled, not two,
    and the references computed by the kernels the search's measurements use."""
    outputs = [o.name for o in view.view.graph.output]
    built: dict[bool, tuple] = {}

    def gated_runner(weights: bool):
        if weights not in built:
            gated, tensors = gated_model(model, view, plan, ranges, weights=weights)
            built[weights] = OpenVINORunner(gated, outputs), tensors
        return built[weights]

    def fp32_session(_):
        if bounds.get("weights"):
            runner, tensors = gated_runner(True)
            return _GatesOff(runner, len(tensors))
        return _Session(named(model, view), outputs)

    return error_search.search(view.view, plan, ranges, samples, fp32_session, None, gated_runner=gated_runner,
                               **bounds)


class _GatesOff:
    """A gated model's runner with every gate off (every quantizer float), run as a session: ``run(None, feed)`` ->
    the runner's outputs in its order."""

    def __init__(self, runner: OpenVINORunner, gates: int):
        self.runner, self.gate = runner, np.zeros(gates, np.float32)

    def run(self, _, feed: dict) -> list[np.ndarray]:
        values, _ = next(iter(self.runner.map([{"arrays": {**feed, GATE: self.gate}, "count": 1}])))
        return [values[n] for n in self.runner.outputs]


def activation_values(model, view: OVView, tensors: list[str], samples: list[dict]):
    """The FP32 values of the view's ``tensors`` on each of ``samples`` (a dict per sample), ``model`` run on
    OpenVINO CPU at f32 with one more Result per tensor (the range search's values, algorithms.range_search)."""
    probe = model.clone()
    bound = view.bind(probe)
    results = []
    for i, tensor in enumerate(tensors):
        node = ops.convert(bound.port(tensor), ov.Type.f32)
        node.output(0).get_tensor().set_names({f"ptqflow_value_{i}"})
        results.append(ops.result(node.output(0)))
    session = _Session(ov.Model(results, probe.get_parameters(), "ptqflow-values"),
                       [f"ptqflow_value_{i}" for i in range(len(tensors))])
    for s in samples:
        yield dict(zip(tensors, session.run(None, s)))


def outputs_of(model, view: OVView, samples: list[dict]) -> list[list]:
    """The outputs (the view's output order, which ``model`` names: ``name_outputs``) on each of ``samples`` of
    ``model`` on OpenVINO CPU at f32."""
    session = _Session(model, [o.name for o in view.view.graph.output])
    return [session.run(None, s) for s in samples]


def fp32_outputs(model, view: OVView, samples: list[dict]) -> list[list]:
    """The FP32 model's outputs (the view's output order) on each of ``samples``, OpenVINO CPU at f32."""
    return outputs_of(named(model, view), view, samples)
