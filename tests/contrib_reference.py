"""numpy definitions of the onnxruntime contrib ops (com.microsoft) the QOperator writer emits, for
onnx.reference.ReferenceEvaluator (``ReferenceEvaluator(model, new_ops=CONTRIB_OPS)``), written from the ops'
documentation (onnxruntime docs/ContribOperators.md): dequantize, compute in float, requantize."""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun


def dequantize(q, scale, zero_point, axis: int | None = None):
    """(q - zero_point) * scale, per ``axis`` when the scale is a vector."""
    q, s, z = q.astype(np.float64), np.asarray(scale, np.float64), np.asarray(zero_point, np.float64)
    if s.ndim and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return (q - z) * s


def quantize(x, scale, zero_point):
    """round-half-to-even(x / scale) + zero_point, saturated to zero_point's type."""
    info = np.iinfo(np.asarray(zero_point).dtype)
    q = np.rint(np.asarray(x, np.float64) / float(scale)) + float(zero_point)
    return np.clip(q, info.min, info.max).astype(np.asarray(zero_point).dtype)


class _Contrib(OpRun):
    op_domain = "com.microsoft"


class QLinearAdd(_Contrib):
    def _run(self, a, a_s, a_z, b, b_s, b_z, c_s, c_z):
        return (quantize(dequantize(a, a_s, a_z) + dequantize(b, b_s, b_z), c_s, c_z),)


class QLinearMul(_Contrib):
    def _run(self, a, a_s, a_z, b, b_s, b_z, c_s, c_z):
        return (quantize(dequantize(a, a_s, a_z) * dequantize(b, b_s, b_z), c_s, c_z),)


class QLinearGlobalAveragePool(_Contrib):
    def _run(self, x, x_s, x_z, y_s, y_z, channels_last=None):
        f = dequantize(x, x_s, x_z)
        return (quantize(f.mean(axis=tuple(range(2, f.ndim)), keepdims=True), y_s, y_z),)


class MatMulIntegerToFloat(_Contrib):
    def _run(self, a, b, a_s, b_s, a_z=None, b_z=None, bias=None):
        a_z = np.zeros((), a.dtype) if a_z is None else a_z
        b_z = np.zeros((), b.dtype) if b_z is None else b_z
        y = dequantize(a, a_s, a_z) @ dequantize(b, b_s, b_z, axis=1)
        return ((y if bias is None else y + bias).astype(np.float32),)


class QGemm(_Contrib):
    def _run(self, a, a_s, a_z, b, b_s, b_z, c=None, y_s=None, y_z=None, alpha=None, transA=None, transB=None):
        fa = dequantize(a, a_s, a_z)
        fb = dequantize(b, b_s, b_z, axis=0 if transB else 1)
        y = (alpha or 1.0) * ((fa.T if transA else fa) @ (fb.T if transB else fb))
        if c is not None:
            y = y + c.astype(np.float64) * float(a_s) * np.asarray(b_s, np.float64) * (alpha or 1.0)
        return (y.astype(np.float32) if y_s is None else quantize(y, y_s, y_z),)


CONTRIB_OPS = [QLinearAdd, QLinearMul, QLinearGlobalAveragePool, MatMulIntegerToFloat, QGemm]
