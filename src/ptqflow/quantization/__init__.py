"""NNCF's ``nncf.quantization`` import path for code written against NNCF (``import ptqflow as nncf``).

``from nncf.quantization import quantize, QuantizationPreset`` and
``from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters`` keep working with ptqflow
in place of nncf; ptqflow's own names live in ``ptqflow.config`` and ``ptqflow.api``.
"""

from __future__ import annotations

from ptqflow.config import QuantizationPreset
from ptqflow.quantization.advanced_parameters import AdvancedQuantizationParameters


def quantize(*args, **kwargs):
    """``ptqflow.quantize`` (imported when called, so that this module stays light); returns the INT8 model."""
    from ptqflow.api import quantize as _quantize

    return _quantize(*args, **kwargs)


def quantize_with_accuracy_control(*args, **kwargs):
    """``ptqflow.quantize_with_accuracy_control`` (imported when called); returns the INT8 model."""
    from ptqflow.accuracy_control import quantize_with_accuracy_control as _quantize_with_accuracy_control

    return _quantize_with_accuracy_control(*args, **kwargs)


__all__ = ["AdvancedQuantizationParameters", "QuantizationPreset", "quantize", "quantize_with_accuracy_control"]
