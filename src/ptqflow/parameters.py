"""NNCF's ``nncf.parameters`` import path (``from nncf.parameters import DropType, ModelType, TargetDevice``)
for code written against NNCF; the definitions live in ``ptqflow.config``."""

from __future__ import annotations

from ptqflow.config import DropType, ModelType, TargetDevice

__all__ = ["DropType", "ModelType", "TargetDevice"]
