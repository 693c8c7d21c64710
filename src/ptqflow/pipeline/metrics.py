"""Accuracy and fidelity metrics of INT8 outputs against FP32 outputs and labels (numpy only)."""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from ptqflow.errors import ConfigError


def is_classifier_like(arr: np.ndarray) -> bool:
    """True for [N, C] outputs with C > 1 (one score vector per sample)."""
    return arr.ndim == 2 and arr.shape[1] > 1


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Number of rows whose label is among the k highest scores."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return int(np.count_nonzero(np.any(top == np.asarray(labels).reshape(-1, 1), axis=1)))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    return topk_correct(logits, labels, k) / logits.shape[0]


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    """Fraction of rows whose argmax is the same in both outputs."""
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(test, axis=1)))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean per-sample cosine similarity of the flattened outputs (1.0 when both are zero)."""
    r = ref.reshape(ref.shape[0], -1).astype(np.float64)
    t = test.reshape(test.shape[0], -1).astype(np.float64)
    num = np.sum(r * t, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1)
    both_zero = den == 0
    sims = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return float(np.mean(sims))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10*log10(signal power / noise power) over all elements; inf when identical."""
    r = ref.astype(np.float64)
    noise = float(np.sum((r - test.astype(np.float64)) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def max_abs_error(ref: np.ndarray, test: np.ndarray) -> float:
    """Largest absolute element difference."""
    return float(np.max(np.abs(ref.astype(np.float64) - test.astype(np.float64)))) if ref.size else 0.0


def fidelity(ref: np.ndarray, test: np.ndarray) -> dict:
    """Per-output fidelity figures: cosine, SQNR (dB), max abs error, and top-1 agreement for [N, C] outputs."""
    out = {"cosine": cosine(ref, test), "sqnr_db": sqnr_db(ref, test), "max_abs_error": max_abs_error(ref, test)}
    if is_classifier_like(ref):
        out["top1_agreement"] = top1_agreement(ref, test)
    return out


def load_metric(spec: str) -> Callable:
    """The callable named by 'module:function'; ConfigError naming validation.metric otherwise."""
    if ":" not in spec:
        raise ConfigError(f"validation.metric {spec!r}: expected 'module:function'")
    mod, func = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod), func)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"validation.metric {spec!r}: cannot load ({err})") from err
    if not callable(fn):
        raise ConfigError(f"validation.metric {spec!r}: not callable")
    return fn


def user_metric(fn: Callable, outputs: dict[str, np.ndarray], labels) -> dict[str, float]:
    """Calls a user metric (outputs, labels) -> float or dict and returns a {name: float} dict."""
    value = fn(outputs, labels)
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {"metric": float(value)}
