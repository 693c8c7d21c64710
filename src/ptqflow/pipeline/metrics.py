"""Accuracy and fidelity metrics of INT8 outputs against FP32 outputs and labels (numpy only).

validate accumulates them per sample (``OutputSums``: counts, exact sums, the largest error), so sums over shards
of the validation split merge into exactly what one process computes on all of it: the same code runs either way.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np

from ptqflow.errors import ConfigError
from ptqflow.quantization.statistics import exact

_UNIT = 1 << -exact.EXPONENT  # an exact sum counts multiples of 2**EXPONENT


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


def _rows(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float64 rows: one per index of the first axis (a scalar is one row of one value)."""
    a = np.asarray(arr, dtype=np.float64)
    return a.reshape(1, -1) if a.ndim == 0 else a.reshape(a.shape[0], -1 if a.shape[0] else 0)


def row_cosines(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of the flattened outputs (1.0 where both rows are zero)."""
    r, t = _rows(ref), _rows(test)
    num = np.sum(r * t, axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1)
    both_zero = den == 0
    return np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean per-sample cosine similarity of the flattened outputs (1.0 when both are zero)."""
    return float(np.mean(row_cosines(ref, test)))


def _sqnr(signal: float, noise: float, ratio: Callable[[], float]) -> float:
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(ratio()))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10*log10(signal power / noise power) over all elements; inf when identical."""
    r = ref.astype(np.float64)
    noise = float(np.sum((r - test.astype(np.float64)) ** 2))
    signal = float(np.sum(r**2))
    return _sqnr(signal, noise, lambda: signal / noise)


def max_abs_error(ref: np.ndarray, test: np.ndarray) -> float:
    """Largest absolute element difference."""
    return float(np.max(np.abs(ref.astype(np.float64) - test.astype(np.float64)))) if ref.size else 0.0


def fidelity(ref: np.ndarray, test: np.ndarray) -> dict:
    """Per-output fidelity figures: cosine, SQNR (dB), max abs error, and top-1 agreement for [N, C] outputs;
    computed as validate computes them (``OutputSums``), here over ``ref`` and ``test`` as one sample."""
    return OutputSums().add(ref, test).fidelity()


class ExactSum:
    """A sum of float64 values that does not depend on the order or grouping of its terms: finite values are
    summed exactly (``ptqflow.quantization.statistics.exact``) and rounded once when read; NaN and infinities
    are kept apart and added as floats, which is order-independent among themselves too."""

    def __init__(self, total: int = 0, special: float | None = None):
        self.total = total  # exact sum of the finite terms, in units of 2**exact.EXPONENT
        self.special = special  # the sum of the non-finite terms (inf, -inf or nan), None when there were none

    def add(self, values) -> "ExactSum":
        """Add every value of ``values`` (array-like); returns self."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        finite = np.isfinite(v)
        if finite.any():
            self.total += sum(exact.to_exact(v[finite]).tolist())
        for x in v[~finite].tolist():
            self.special = x if self.special is None else self.special + x
        return self

    def merge(self, other: "ExactSum") -> "ExactSum":
        """Add ``other``'s terms; returns self."""
        self.total += other.total
        if other.special is not None:
            self.special = other.special if self.special is None else self.special + other.special
        return self

    def value(self, count: int = 1) -> float:
        """The sum divided by ``count``, correctly rounded (the special sum when there was a non-finite term)."""
        return self.special if self.special is not None else float(Fraction(self.total, count * _UNIT))

    def ratio(self, other: "ExactSum") -> float:
        """self / other, correctly rounded from the exact sums (both finite and ``other`` non-zero)."""
        return float(Fraction(self.total, other.total))

    def to_json(self) -> dict:
        """JSON-ready form (hexadecimal integer; the special sum as a string)."""
        return {"hex": hex(self.total), "special": None if self.special is None else repr(self.special)}

    @classmethod
    def from_json(cls, doc: dict) -> "ExactSum":
        """The sum ``to_json`` wrote."""
        return cls(int(doc["hex"], 16), None if doc["special"] is None else float(doc["special"]))


def _nan_max(a: float | None, b: float | None) -> float | None:
    """max that keeps NaN (as numpy's max does), None meaning no value yet."""
    if a is None or b is None:
        return b if a is None else a
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _topk_counts() -> dict:
    return {"fp32": {"top1": 0, "top5": 0}, "int8": {"top1": 0, "top5": 0}}


@dataclass
class OutputSums:
    """Fidelity of one output (and its top-k accuracy, for a classifier), accumulated sample by sample: row and
    sample counts, exact sums of per-row cosines and of signal and noise power, the largest error, agreement and
    top-k counts. Sums of disjoint samples merge (``merge``) into exactly the sums of all of them."""

    samples: int = 0
    rows: int = 0
    classifier: bool = True  # every sample's output was [rows, C] with C > 1
    single_row: bool = True  # every sample's output had one row, so rows align with labels
    cosines: ExactSum = field(default_factory=ExactSum)
    signal: ExactSum = field(default_factory=ExactSum)
    noise: ExactSum = field(default_factory=ExactSum)
    max_abs: float | None = None
    agree: int = 0
    correct: dict = field(default_factory=_topk_counts)  # samples whose class label is in the top 1 / top 5

    def add(self, ref: np.ndarray, test: np.ndarray, label=None) -> "OutputSums":
        """Add one sample's FP32 (``ref``) and INT8 (``test``) output; ``label``, a class index or None, counts
        towards top-k when the output is one score vector. Returns self."""
        ref, test = np.asarray(ref), np.asarray(test)
        r, t = _rows(ref), _rows(test)
        self.samples += 1
        self.rows += r.shape[0]
        self.classifier = self.classifier and is_classifier_like(ref)
        self.single_row = self.single_row and r.shape[0] == 1
        if r.shape[0]:
            self.cosines.add(row_cosines(ref, test))
        # Per-row sums (each depends on its row alone), then exact sums over rows: no grouping decides a bit.
        self.signal.add(np.sum(r**2, axis=1))
        self.noise.add(np.sum((r - t) ** 2, axis=1))
        if r.size:
            self.max_abs = _nan_max(self.max_abs, float(np.max(np.abs(r - t))))
        if is_classifier_like(ref):
            self.agree += int(np.count_nonzero(np.argmax(ref, axis=1) == np.argmax(test, axis=1)))
            if r.shape[0] == 1 and isinstance(label, (int, np.integer)) and not isinstance(label, bool):
                for key, out in (("fp32", ref), ("int8", test)):
                    for k in (1, 5):
                        self.correct[key][f"top{k}"] += topk_correct(out, [label], k)
        return self

    def merge(self, other: "OutputSums") -> "OutputSums":
        """Add ``other``'s samples (disjoint from these); returns self."""
        self.samples += other.samples
        self.rows += other.rows
        self.classifier = self.classifier and other.classifier
        self.single_row = self.single_row and other.single_row
        for name in ("cosines", "signal", "noise"):
            getattr(self, name).merge(getattr(other, name))
        self.max_abs = _nan_max(self.max_abs, other.max_abs)
        self.agree += other.agree
        for key in self.correct:
            for k in self.correct[key]:
                self.correct[key][k] += other.correct[key][k]
        return self

    def fidelity(self) -> dict:
        """cosine (mean over rows), sqnr_db, max_abs_error, and top1_agreement for a classifier output."""
        cos = self.cosines.value(self.rows) if self.rows else math.nan
        s, n = self.signal, self.noise
        if s.special is not None or n.special is not None:
            sqnr = _sqnr(s.value(), n.value(), lambda: s.value() / n.value())
        else:
            sqnr = _sqnr(s.total, n.total, lambda: s.ratio(n))
        out = {"cosine": cos, "sqnr_db": sqnr, "max_abs_error": 0.0 if self.max_abs is None else self.max_abs}
        if self.classifier and self.samples:
            out["top1_agreement"] = self.agree / self.rows if self.rows else math.nan
        return out

    def to_json(self) -> dict:
        """JSON-ready form (exact sums in hexadecimal; floats round-trip through repr)."""
        return {"samples": self.samples, "rows": self.rows, "classifier": self.classifier,
                "single_row": self.single_row, "cosines": self.cosines.to_json(), "signal": self.signal.to_json(),
                "noise": self.noise.to_json(), "max_abs": None if self.max_abs is None else repr(self.max_abs),
                "agree": self.agree, "correct": self.correct}

    @classmethod
    def from_json(cls, doc: dict) -> "OutputSums":
        """The sums ``to_json`` wrote."""
        return cls(samples=int(doc["samples"]), rows=int(doc["rows"]), classifier=bool(doc["classifier"]),
                   single_row=bool(doc["single_row"]), cosines=ExactSum.from_json(doc["cosines"]),
                   signal=ExactSum.from_json(doc["signal"]), noise=ExactSum.from_json(doc["noise"]),
                   max_abs=None if doc["max_abs"] is None else float(doc["max_abs"]), agree=int(doc["agree"]),
                   correct={key: {k: int(v) for k, v in counts.items()} for key, counts in doc["correct"].items()})



@dataclass
class ValidationSums:
    """What validate accumulates over validation samples: sample and label counts, ``OutputSums`` per model
    output (in the model's order) and per quantized layer (per-layer sensitivity). The sums of disjoint shards of
    the split merge into exactly those of the whole split; ``accuracy``, ``fidelity`` and ``layer_rows`` read them."""

    outputs: dict[str, OutputSums] = field(default_factory=dict)
    layers: dict[str, OutputSums] = field(default_factory=dict)
    samples: int = 0
    labeled: int = 0  # samples with a label (class index or text)
    class_labeled: int = 0  # samples whose label is a class index (top-k needs every sample so)

    def add(self, fp32: dict, int8: dict, label=None, layers: dict | None = None) -> None:
        """Add one sample: its FP32 and INT8 outputs by name, its label, and ``layers``: {layer: (FP32 output,
        INT8 output)} of the per-layer rows."""
        self.samples += 1
        self.labeled += label is not None
        self.class_labeled += isinstance(label, (int, np.integer)) and not isinstance(label, bool)
        for name, sums in self.outputs.items():
            sums.add(fp32[name], int8[name], label)
        for name, (ref, test) in (layers or {}).items():
            self.layers[name].add(ref, test)

    def merge(self, other: "ValidationSums") -> None:
        """Add ``other``'s samples (disjoint from these); ValueError when it has other outputs or layers."""
        if list(other.outputs) != list(self.outputs) or list(other.layers) != list(self.layers):
            raise ValueError(f"outputs {list(other.outputs)} and layers {list(other.layers)} differ from "
                             f"{list(self.outputs)} and {list(self.layers)}")
        self.samples += other.samples
        self.labeled += other.labeled
        self.class_labeled += other.class_labeled
        for mine, theirs in ((self.outputs, other.outputs), (self.layers, other.layers)):
            for name, sums in mine.items():
                sums.merge(theirs[name])

    def accuracy(self) -> dict:
        """Top-1/top-5 of the first output that gave one score vector per sample, when every sample has a class
        label; {} otherwise. The counts ride along so that the gate compares exact drops (4 of 200 is 0.02, not
        0.02 + 1.7e-17)."""
        n = self.samples
        if not n or self.class_labeled != n:
            return {}
        for name, s in self.outputs.items():
            if s.classifier and s.single_row and s.samples:
                correct = {key: dict(counts) for key, counts in s.correct.items()}
                return {"output": name, "samples": n,
                        **{key: {k: c / n for k, c in counts.items()} for key, counts in correct.items()},
                        "correct": correct}
        return {}

    def fidelity(self) -> dict:
        """{output: fidelity figures} (``OutputSums.fidelity``)."""
        return {name: sums.fidelity() for name, sums in self.outputs.items()}

    def layer_rows(self) -> list[dict]:
        """[{layer, sqnr_db, cosine}] per quantized layer, in graph order."""
        rows = []
        for name, sums in self.layers.items():
            f = sums.fidelity()
            rows.append({"layer": name, "sqnr_db": f["sqnr_db"], "cosine": f["cosine"]})
        return rows

    def to_json(self) -> dict:
        """JSON-ready form (outputs and layers as [name, sums] lists, in order)."""
        return {"samples": self.samples, "labeled": self.labeled, "class_labeled": self.class_labeled,
                "outputs": [[n, s.to_json()] for n, s in self.outputs.items()],
                "layers": [[n, s.to_json()] for n, s in self.layers.items()]}

    @classmethod
    def from_json(cls, doc: dict) -> "ValidationSums":
        """The sums ``to_json`` wrote."""
        return cls(outputs={n: OutputSums.from_json(s) for n, s in doc["outputs"]},
                   layers={n: OutputSums.from_json(s) for n, s in doc["layers"]}, samples=int(doc["samples"]),
                   labeled=int(doc["labeled"]), class_labeled=int(doc["class_labeled"]))

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
