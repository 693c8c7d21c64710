"""Deterministic, stratified ordering of items for the calibration/validation split."""

from __future__ import annotations

import numpy as np


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
