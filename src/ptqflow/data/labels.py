"""Text labels from a label file beside the data: one ``relative/path<TAB>label text`` line per item, the
layout of PaddleOCR's recognition label files (``rec_gt_*.txt``).

Shards store a label as an index into ``label_names`` (the sorted distinct texts) so that they stay plain
integer arrays; ``index.json`` says ``"label_kind": "text"`` and validation hands user metrics the strings.
"""

from __future__ import annotations

from pathlib import Path

from ptqflow.errors import InputError


def read_label_file(source: Path, name: str) -> dict[str, str]:
    """{relative item path: text} from ``source/name``; InputError naming the file and line when malformed,
    or when the name leads outside the data directory."""
    root = Path(source).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"data.label_file {name!r}: must be a file inside the data directory {root}")
    if not path.is_file():
        raise InputError(f"data.label_file {name!r}: no such file in {root}")
    labels: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        rel, sep, text = line.partition("\t")
        if not sep:
            raise InputError(f"{path}:{n}: expected 'relative/path<TAB>label', got {line[:80]!r}")
        rel = Path(rel.strip()).as_posix()
        if rel in labels and labels[rel] != text:
            raise InputError(f"{path}:{n}: {rel} is labelled twice ({labels[rel]!r} and {text!r})")
        labels[rel] = text
    if not labels:
        raise InputError(f"data.label_file {path}: no labels")
    return labels


def apply_text_labels(items: list, labels: dict[str, str]) -> tuple[list, list[str]]:
    """The items with label = index of their text in the returned sorted list of distinct texts (None for
    an item the file does not name)."""
    names = sorted(set(labels.values()))
    ids = {text: i for i, text in enumerate(names)}
    out = [it._replace(label=ids[labels[Path(it.source_id).as_posix()]])
           if Path(it.source_id).as_posix() in labels else it._replace(label=None) for it in items]
    return out, names
