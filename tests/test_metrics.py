"""Metrics against hand-computed values."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from ptqflow.pipeline import metrics as M
from ptqflow.errors import ConfigError


def test_topk_accuracy_hand_computed():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = np.array([1, 1, 2, 2])
    assert M.topk_accuracy(logits, labels, 1) == 0.5  # rows 0 and 2
    assert M.topk_accuracy(logits, labels, 2) == 0.75  # row 3's label 2 is its lowest score
    assert M.topk_accuracy(logits, labels, 5) == 1.0  # k beyond C: every label counts


def test_top1_agreement_cosine_sqnr_max_error():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]])
    test = np.array([[4.0, 3.0], [2.0, 0.0]])
    assert M.top1_agreement(ref, test) == 0.5
    # Row 0: (12+12)/(5*5) = 0.96; row 1: parallel -> 1.0.
    assert M.cosine(ref, test) == pytest.approx((0.96 + 1.0) / 2)
    # signal = 9+16+1 = 26, noise = 1+1+1 = 3.
    assert M.sqnr_db(ref, test) == pytest.approx(10 * math.log10(26 / 3))
    assert M.max_abs_error(ref, test) == 1.0
    assert M.sqnr_db(ref, ref) == math.inf
    assert M.cosine(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0


def test_fidelity_adds_agreement_only_for_classifier_like():
    f = M.fidelity(np.ones((2, 3)), np.ones((2, 3)))
    assert f["top1_agreement"] == 1.0 and f["max_abs_error"] == 0.0
    assert "top1_agreement" not in M.fidelity(np.ones((2, 3, 4)), np.ones((2, 3, 4)))


def test_user_metric_loading(monkeypatch):
    mod = types.ModuleType("ptqflow_test_metric_mod")
    mod.mean_out = lambda outputs, labels: float(np.mean(outputs["y"]))
    mod.both = lambda outputs, labels: {"a": 1, "b": len(labels)}
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    fn = M.load_metric(f"{mod.__name__}:mean_out")
    assert M.user_metric(fn, {"y": np.array([1.0, 3.0])}, [None]) == {"metric": 2.0}
    assert M.user_metric(M.load_metric(f"{mod.__name__}:both"), {}, [0, 1, 2]) == {"a": 1.0, "b": 3.0}
    with pytest.raises(ConfigError, match="validation.metric"):
        M.load_metric("no_colon")
    with pytest.raises(ConfigError, match="missing"):
        M.load_metric(f"{mod.__name__}:missing")
