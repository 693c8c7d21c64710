"""NNCF's ``nncf.scopes`` import path (``from nncf.scopes import IgnoredScope, Subgraph``) for code written
against NNCF; the definitions live in ``ptqflow.config``."""

from __future__ import annotations

from ptqflow.config import IgnoredScope, Subgraph

__all__ = ["IgnoredScope", "Subgraph"]
