"""Writers of the INT8 model beyond QDQ: the plan is first written as QDQ (ptqflow.quantization.algorithms.minmax,
then corrected by bias correction); a writer here re-expresses each node unit of that QDQ graph (an op with
DequantizeLinear inputs and, where it has one, a QuantizeLinear output) in another format: ``qoperator``
(QLinearConv, QLinearMatMul, com.microsoft QLinearAdd, ...) or ``integer_ops`` (ConvInteger / MatMulInteger with
float rescaling; also the dynamic form, DynamicQuantizeLinear at run time). Each writer is a plain dict registry
op type -> converter; a unit whose converter declines stays QDQ.
"""

from __future__ import annotations

import onnx

from ptqflow.config import QuantFormat
from ptqflow.quantization.writers import integer_ops, qoperator
from ptqflow.quantization.writers.bias import quantize_biases


def write(model: onnx.ModelProto, quant_format: QuantFormat, int32_bias: bool = False) -> onnx.ModelProto:
    """``model`` (QDQ) in ``quant_format``, its Conv/Gemm biases first as int32 (``int32_bias``, see
    ``bias.quantize_biases``); the same model for QDQ without ``int32_bias``. Returns the model written."""
    if int32_bias:
        quantize_biases(model)
    if quant_format == QuantFormat.QOperator:
        return qoperator.write(model)
    if quant_format == QuantFormat.IntegerOps:
        return integer_ops.write(model)
    return model


__all__ = ["quantize_biases", "write"]
