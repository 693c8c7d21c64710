"""Loading a user transform given as 'module:function' and checking its output against the model."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

import numpy as np

from ptqflow.errors import ConfigError, InputError


def load_transform(spec: str) -> Callable:
    """The callable named by 'module:function', importable from sys.path or the current directory."""
    if ":" not in spec:
        raise ConfigError(f"data.transform must be 'module:function', got {spec!r}")
    mod_name, func_name = spec.split(":", 1)
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)  # users keep transforms next to their config
    try:
        module = importlib.import_module(mod_name)
    except Exception as err:
        raise ConfigError(f"data.transform {spec!r}: cannot import {mod_name!r} ({err})") from err
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)  # leave the interpreter's path as it was
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"data.transform {spec!r}: {mod_name!r} has no callable {func_name!r}")
    return fn


def fit_sample(values: dict, inputs: list[dict], where: str) -> dict[str, np.ndarray]:
    """``values`` checked against the model inputs (names, rank, static dims, dtype kind) and returned as
    arrays without batch dim; InputError naming ``where``, the input and the expected shape otherwise."""
    names = [i["name"] for i in inputs]
    if set(values) != set(names):
        raise InputError(f"{where}: got inputs {sorted(values)}, the model expects {names}")
    out = {}
    for spec in inputs:
        name, shape, dtype = spec["name"], spec["shape"], np.dtype(spec["dtype"])
        arr = np.asarray(values[name])
        if arr.ndim == len(shape):
            if arr.shape[0] != 1:
                raise InputError(f"{where}: input {name!r} has batch {arr.shape[0]}, expected one sample of {shape}")
            arr = arr[0]
        if arr.ndim != len(shape) - 1 or any(
            isinstance(d, int) and d > 0 and d != a for d, a in zip(shape[1:], arr.shape)
        ):
            raise InputError(f"{where}: input {name!r} has shape {list(arr.shape)}, expected {shape}")
        if arr.dtype != dtype:
            if arr.dtype.kind != dtype.kind and not (arr.dtype.kind in "iu" and dtype.kind in "iu"):
                raise InputError(f"{where}: input {name!r} has dtype {arr.dtype}, expected {dtype}")
            arr = arr.astype(dtype)  # same kind (float64 -> float32, int32 -> int64): a safe-enough cast
        out[name] = np.ascontiguousarray(arr)
    return out
