"""Helpers of the container tests: the repository root and containers/locks.py imported as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_locks():
    """containers/locks.py (not a package module) imported by path."""
    spec = importlib.util.spec_from_file_location("ptqflow_container_locks", ROOT / "containers" / "locks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
