"""Shard files of a calibration artifact: a bounded-size writer and streaming readers.

Layout of an artifact directory::

    index.json                      counts, shapes, dtypes, source ids, labels, seed, skipped items
    calibration/shard-00000.npz     one array per model input, leading sample axis
    validation/shard-00000.npz      (+ ``__labels__`` when labels are known)

Readers open one shard at a time, so memory stays at one shard however large the split is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ptqflow.arrays import NpzError, read_npz
from ptqflow.errors import InputError

# Reserved key for labels inside a shard: a model input may itself be called "labels".
LABELS_KEY = "__labels__"
INDEX_FILE = "index.json"
SPLITS = ("calibration", "validation")


def read_index(artifact_dir) -> dict:
    """The artifact's index.json as a dict (counts, shapes, dtypes, sources, label_names, seed, skipped)."""
    path = Path(artifact_dir) / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{path}: no index.json; not a build-calibration artifact")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable index ({err})") from err


def _shard_paths(artifact_dir, split: str) -> list[Path]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(artifact_dir) / split
    if not folder.is_dir():
        raise InputError(f"{folder}: split folder missing in the calibration artifact")
    return sorted(folder.glob("shard-*.npz"))


def _read_shard(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one shard; InputError naming it when it is damaged or holds pickled (object) arrays."""
    try:
        return read_npz(path)
    except NpzError as err:
        raise InputError(f"{path}: damaged calibration shard ({err}); rebuild it with build-calibration --force") from None


def iter_labeled(artifact_dir, split: str = "calibration") -> Iterator[tuple[dict[str, np.ndarray], int | None]]:
    """Yields (sample, label) per sample of a split; sample values carry a batch dim of 1, label may be None.

    Samples are copies, not views of their shard, and a shard is let go before the next is read: a consumer that
    keeps a few samples (the first, for speed; the first few, for bias correction) does not keep their whole
    shard alive, so memory stays at one shard however many samples the split holds."""
    for path in _shard_paths(artifact_dir, split):
        arrays = _read_shard(path)
        labels = arrays.pop(LABELS_KEY, None)
        count = len(next(iter(arrays.values()))) if arrays else 0
        for i in range(count):
            sample = {name: arr[i : i + 1].copy() for name, arr in arrays.items()}
            label = None if labels is None or int(labels[i]) < 0 else int(labels[i])
            yield sample, label
        del arrays, labels


def iter_samples(artifact_dir, split: str = "calibration") -> Iterator[dict[str, np.ndarray]]:
    """Yields one dict per sample of a split, keyed by model input name, each array with batch dim 1."""
    for sample, _ in iter_labeled(artifact_dir, split):
        yield sample


class ShardWriter:
    """Accumulates samples of one split and flushes a shard when it reaches ``max_bytes``.

    Labels are stored under ``LABELS_KEY`` (``-1`` for unknown) when ``with_labels`` is set.
    """

    def __init__(self, folder: Path, max_bytes: int, with_labels: bool):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max(1, int(max_bytes))
        self.with_labels = with_labels
        self._buffer: list[dict[str, np.ndarray]] = []
        self._labels: list[int] = []
        self._bytes = 0
        self.shards = 0
        self.count = 0

    def add(self, sample: dict[str, np.ndarray], label: int | None) -> None:
        """Buffers one sample (arrays without batch dim) and flushes when the shard is full."""
        size = sum(a.nbytes for a in sample.values())
        if self._buffer and self._bytes + size > self.max_bytes:
            self.flush()
        self._buffer.append(sample)
        self._labels.append(-1 if label is None else int(label))
        self._bytes += size
        self.count += 1

    def flush(self) -> None:
        """Writes buffered samples as the next shard file (no-op when empty)."""
        if not self._buffer:
            return
        arrays = {name: np.stack([s[name] for s in self._buffer]) for name in self._buffer[0]}
        if self.with_labels:
            arrays[LABELS_KEY] = np.asarray(self._labels, dtype=np.int64)
        path = self.folder / f"shard-{self.shards:05d}.npz"
        np.savez(path, **arrays)
        self.shards += 1
        self._buffer, self._labels, self._bytes = [], [], 0
