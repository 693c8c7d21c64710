"""The OpenVINO writer of the QuantizationPlan: FakeQuantize nodes, the form NNCF's OpenVINO backend produces and
OpenVINO's CPU/GPU/NPU plugins run in INT8 (beside ``minmax.insert_qdq``, the ONNX QDQ writer of the same plan).

Each quantizer is expressed on the same integer grid as its QDQ pair, so the IR path computes what the ONNX path
computes: an activation quantizer with scale s and zero point z over [qmin, qmax] is FakeQuantize(levels 256,
low (qmin - z)*s, high (qmax - z)*s); a weight quantizer's constant is replaced by its dequantized codes q*s
(float32, in OpenVINO's layout) followed by FakeQuantize(levels 2*qmax+1, +-qmax*s per output channel), which
maps those values onto themselves and lets the weight compression of export recover the int8 codes exactly.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from onnx import TensorProto, numpy_helper

from ptqflow.quantization.algorithms.minmax import activation_quantizer, weight_params, weight_record
from ptqflow.quantization.graph.openvino_view import BoundView
from ptqflow.quantization.plan import QuantizationPlan, WeightQuantizer


def _channel_shape(axis: int | None, view_shape: tuple[int, ...], ov_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape per-channel parameters take to broadcast over a weight of OpenVINO shape ``ov_shape``: channel
    ``axis`` of the view's (ONNX) layout; a grouped convolution's output channels are OpenVINO's first two axes."""
    if axis is None:
        return ()
    if ov_shape != view_shape:  # [G, C/G, ...]: the view's axis 0 spans OpenVINO's axes 0 and 1
        return ov_shape[:2] + (1,) * (len(ov_shape) - 2)
    return tuple(-1 if i == axis else 1 for i in range(len(view_shape)))


def _weight(bound: BoundView, entry: WeightQuantizer, inits: dict) -> dict:
    """Replace the weight of ``entry`` by its dequantized codes and a FakeQuantize; returns its record."""
    view = bound.view
    w = numpy_helper.to_array(inits[entry.tensor]).astype(np.float32)
    scale, q = weight_params(w, entry.axis, entry.narrow_bits)
    qmax = 2 ** (entry.narrow_bits - 1) - 1
    ov_shape = view.ov_shapes.get(entry.tensor, tuple(w.shape))
    shape = _channel_shape(entry.axis, tuple(w.shape), ov_shape)
    scales = scale.reshape(shape) if shape else scale.reshape(())
    values = (q.reshape(ov_shape).astype(np.float32) * scales).astype(np.float32)
    lo, hi = (-qmax * scales).astype(np.float32), (qmax * scales).astype(np.float32)
    fq = ops.fake_quantize(ops.constant(values), lo, hi, lo, hi, 2 * qmax + 1, name=f"{entry.tensor}/fq_weights")
    for node_name, idx in entry.nodes:
        bound.node(node_name).input(idx).replace_source_output(fq.output(0))
    return weight_record(entry, scale)


def insert_fake_quantize(model: ov.Model, bound: BoundView, plan: QuantizationPlan,
                         ranges: dict[str, tuple[float, float]]) -> list[dict]:
    """Quantize ``model`` (an ov.Model ``bound`` refers to) in place per ``plan`` and ``ranges`` (group -> (min,
    max)); returns the per-quantizer records, as insert_qdq does."""
    inits = {t.name: t for t in bound.view.view.graph.initializer}
    records = [_weight(bound, entry, inits) for entry in plan.weights]
    for point in plan.activations:
        scale, zp, dtype, record = activation_quantizer(point, ranges)
        qmin, qmax = (-128, 127) if dtype == TensorProto.INT8 else (0, 255)
        port, scale = bound.port(point.tensor), np.asarray(scale)
        if scale.ndim:  # a scale per channel of ``point.axis``: bounds shaped to broadcast along it
            rank = port.get_partial_shape().rank.get_length()
            scale = scale.reshape([-1 if i == point.axis % rank else 1 for i in range(rank)])
        lo, hi = ((qmin - zp) * scale).astype(np.float32), ((qmax - zp) * scale).astype(np.float32)
        fq = ops.fake_quantize(port, lo, hi, lo, hi, 256, name=f"{point.tensor}/fq_output")
        for node_name, idx in point.edges:
            bound.node(node_name).input(idx).replace_source_output(fq.output(0))
        records.append({**record, "output": fq.get_friendly_name()})
    model.validate_nodes_and_infer_types()
    return records
