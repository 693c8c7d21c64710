"""Deterministic, stratified ordering of items for the calibration/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptqflow.errors import ConfigError, InputError


def selection_order(labels: list[int | None], seed: int) -> list[int]:
    """A seeded permutation of item indices; with labels, every prefix is stratified by label.

    Each item gets key (rank within its class + u) / class size, u uniform in [0, 1): sorting by it spreads
    each class evenly along the order, so the first k items hold each class in proportion to its size.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    perm = rng.permutation(n)
    if n == 0 or all(lbl is None for lbl in labels):
        return [int(i) for i in perm]
    keys = np.empty(n)
    u = rng.random(n)
    seen: dict = {}
    sizes: dict = {}
    for i in perm:
        sizes[labels[i]] = sizes.get(labels[i], 0) + 1
    for i in perm:
        r = seen.get(labels[i], 0)
        seen[labels[i]] = r + 1
        keys[i] = (r + u[i]) / sizes[labels[i]]
    return [int(i) for i in np.argsort(keys, kind="stable")]


# A small data set is split rather than spent on calibration alone: validation must not end up empty after
# the expensive steps have run. These floors are what a split may leave, not recommendations (300 is).
MIN_CALIBRATION = 10  # calibration samples a split keeps (or subset_size, when that is smaller)
MIN_VALIDATION = 1  # validate needs at least one held-out sample
VALIDATION_SHARE = 3  # with default sizes, a small data set holds out 1/3 for validation


@dataclass(frozen=True)
class Split:
    """How many samples go to each split, and why when that differs from what the config asks."""

    calibration: int
    validation: int
    rule: str  # "requested": the config's sizes; "auto": a small data set split by share; "validation_size_set"
    reason: str | None = None  # the log line explaining a departure from subset_size / validation_size

    def as_dict(self) -> dict:
        """JSON-ready {calibration, validation, rule, reason}."""
        return {"calibration": self.calibration, "validation": self.validation, "rule": self.rule,
                "reason": self.reason}


def plan_split(n_items: int, subset_size: int, validation_size: int, validation_size_set: bool) -> Split:
    """The calibration/validation sizes for ``n_items`` items; raises before any sample is built.

    Enough items for ``subset_size + validation_size``: exactly those. Fewer:

    * ``validation_size`` left at its default: validation gets a third of the items (but at least what
      calibration cannot use, at most ``validation_size``), calibration the rest, never fewer than
      ``min(subset_size, MIN_CALIBRATION)``; fewer items than that plus ``MIN_VALIDATION`` is an InputError
      (the data set is too small).
    * ``validation_size`` set explicitly: validation gets exactly that, calibration the rest; if that leaves
      calibration under its floor, a ConfigError names the numbers. ``validation_size: 0`` puts every item
      into calibration (validation deliberately off).

    ``subset_size`` is an upper bound in every case, as in NNCF.
    """
    s, v, n = subset_size, validation_size, n_items
    if n >= s + v:
        return Split(s, v, "requested")
    if validation_size_set and v == 0:
        return Split(n, 0, "requested", f"data.source has {n} items, fewer than subset_size {s}: all used for "
                     "calibration (data.validation_size is 0: no validation split)")
    floor = min(s, MIN_CALIBRATION)
    minimum = floor + MIN_VALIDATION
    if n < minimum:
        raise InputError(
            f"data.source has {n} item(s): too small a data set to both calibrate and validate; at least "
            f"{minimum} are needed ({floor} for calibration, {MIN_VALIDATION} held out for validation). "
            "Add items to the data set")
    if validation_size_set:
        if n - v < floor:
            raise ConfigError(
                f"data.validation_size={v} was set, but data.source has {n} items: holding out {v} leaves "
                f"{max(n - v, 0)} for calibration, fewer than the {floor} it needs. Set data.validation_size to at "
                f"most {n - floor}, or leave it unset to hold out a share of a small data set automatically")
        cal = min(s, n - v)
        return Split(cal, v, "validation_size_set",
                     f"data.source has {n} items, fewer than subset_size {s} + validation_size {v}: validation "
                     f"gets the {v} set, calibration the other {cal}")
    val = min(v, max(n - s, min(n // VALIDATION_SHARE, n - floor)))
    cal = n - val
    return Split(cal, val, "auto",
                 f"data.source has {n} items, fewer than subset_size {s} + validation_size {v}: {val} held out "
                 f"for validation, {cal} for calibration (data.validation_size unset: a third of a small data set "
                 f"is held out, calibration keeps at least {floor}); set data.validation_size to choose")
