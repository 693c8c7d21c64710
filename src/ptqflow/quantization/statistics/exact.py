"""Exact sums of float64 arrays: each value becomes an integer multiple of 2**EXPONENT (every finite float64 is
one), so sums are exact and independent of the order and grouping of the additions. Statistics accumulated this
way are the same whether the samples ran in one process, in stacks of any size or in shards merged later."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

EXPONENT = -1100  # below float64's smallest subnormal exponent (-1074): every finite float64 is an integer times 2**-1100


def to_exact(values) -> np.ndarray:
    """``values`` (finite floats) as an object array of Python ints, each value * 2**-EXPONENT exactly."""
    v = np.asarray(values, dtype=np.float64)
    mantissa, exponent = np.frexp(v)
    ints = (mantissa * 2.0**53).astype(np.int64)  # exact: a float64 mantissa has 53 bits
    shifts = exponent.astype(np.int64) - 53 - EXPONENT
    # numpy's object loop shifts the Python ints (flat: a 0-d object operand would be shifted as int64)
    return np.left_shift(ints.reshape(-1).astype(object), shifts.reshape(-1).astype(object)).reshape(v.shape)


def mean(total: np.ndarray, count: int) -> np.ndarray:
    """The exact sums ``total`` divided by ``count``, each correctly rounded to float64."""
    scale = count << -EXPONENT
    return np.array([float(Fraction(int(t), scale)) for t in np.asarray(total, dtype=object).reshape(-1)],
                    dtype=np.float64).reshape(np.shape(total))


def encode(total: np.ndarray) -> dict:
    """JSON-ready form of an exact-sum array (hexadecimal integers and the shape)."""
    arr = np.asarray(total, dtype=object)
    return {"shape": list(arr.shape), "hex": [hex(int(x)) for x in arr.reshape(-1)]}


def decode(doc: dict) -> np.ndarray:
    """The exact-sum array ``encode`` wrote."""
    flat = np.empty(len(doc["hex"]), dtype=object)
    for k, h in enumerate(doc["hex"]):
        flat[k] = int(h, 16)
    return flat.reshape(doc["shape"]) if doc["shape"] else flat.reshape(())
