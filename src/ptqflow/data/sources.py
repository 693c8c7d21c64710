"""Data sources: enumerate items cheaply (ids, labels) and load one raw item at a time.

An item is ``(source_id, label, loader)``: the loader returns one raw item, either a PIL image, a
string/JSON value (text sources) or a dict of input name -> array (array sources).

In a data directory, a symbolic link is read only when what it points to lies inside the directory: a link
to a file elsewhere is left out (logged, and listed in the calibration index as a skipped link). Arrays are
never unpickled: an object-dtype ``.npy``/``.npz`` is refused.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ptqflow.artifacts.storage import is_ptqflow_dir
from ptqflow.arrays import NpzError, read_npz
from ptqflow.errors import InputError
from ptqflow.logs import get_logger

log = get_logger("data")

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
TEXT_EXT = {".jsonl", ".txt", ".json"}


class Item(NamedTuple):
    source_id: str
    label: int | None
    load: Callable[[], object]
    kind: str  # "image" | "text" | "arrays"


def _load_image(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode now so a corrupt file fails here, inside the item's error handling
        return img.copy()


def data_files(root: Path) -> tuple[list[Path], list[str]]:
    """(the files under data directory ``root``, sorted; the symbolic links left out, relative to ``root``).

    A link is followed only when its target lies inside ``root`` (the data set the user named, not whatever a
    link reaches: a stray link would pull foreign files into the validation split). Linked directories are
    not descended into (one inside ``root`` is listed under its real path anyway); ptqflow's own artifact
    directories (an ``--output`` inside the data directory) are left out.
    """
    real_root = root.resolve()
    files: list[Path] = []
    links: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if (here / d).is_symlink():
                if not (here / d).resolve().is_relative_to(real_root):
                    links.append((here / d).relative_to(root).as_posix())
            elif not is_ptqflow_dir(here / d):
                kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            p = here / f
            if p.is_symlink() and not p.resolve().is_relative_to(real_root):
                links.append(p.relative_to(root).as_posix())
            elif p.is_file():
                files.append(p)
    if links:
        log.warning("data.source %s: %d symbolic link(s) pointing outside it left out, e.g. %s", root, len(links),
                    ", ".join(sorted(links)[:3]))
    return sorted(files), sorted(links)


def _image_items(root: Path, files: list[Path]) -> tuple[list[Item], list[str]]:
    files = [p for p in files if p.suffix.lower() in IMAGE_EXT]
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    # ImageFolder layout only when every image sits in a class sub-folder
    labelled = bool(classes) and all(len(p.relative_to(root).parts) > 1 for p in files)
    ids = {c: i for i, c in enumerate(classes)} if labelled else {}
    items = [
        Item(str(p.relative_to(root)), ids.get(p.relative_to(root).parts[0]) if labelled else None,
             (lambda p=p: _load_image(p)), "image")
        for p in files
    ]
    return items, (classes if labelled else [])


_PICKLED = ("holds a pickled (object dtype) array; ptqflow never loads pickles (they can run code): "
            "save numeric arrays (np.save / np.savez of float or int arrays)")


def _magic(path, expected: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(expected)) == expected


def _npy(path: Path) -> np.ndarray:
    """A memory-mapped .npy; InputError naming the file for pickled (object) arrays and unreadable files."""
    try:
        if not _magic(path, b"\x93NUMPY"):  # np.load would take it for a pickle
            raise InputError(f"{path}: not a .npy file (no NumPy header); pickles and other formats are refused")
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "Python objects" in str(err):
            raise InputError(f"{path}: {_PICKLED}") from None
        raise InputError(f"{path}: not a readable .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy file ({err})") from None


@lru_cache(maxsize=2)
def _npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz; InputError naming the file (and the key) for pickled arrays and bad archives."""
    try:
        return read_npz(path)
    except NpzError as err:
        what = f"array {err.key!r} " if err.key is not None else ""
        reason = _PICKLED if err.pickled else err.reason
        raise InputError(f"{path}: {what}{reason}") from None


def _batch_count(shape: tuple, rank: int, where: str, name: str, expected: list) -> int:
    """Samples in an array: rank == model rank -> a stacked batch; rank - 1 -> one sample."""
    if len(shape) == rank:
        return shape[0]
    if len(shape) == rank - 1:
        return 1
    raise InputError(f"{where}: input {name!r} has shape {list(shape)}, expected {expected}")


def _take(arr: np.ndarray, rank: int, i: int) -> np.ndarray:
    return np.array(arr[i]) if arr.ndim == rank else np.array(arr)


def _array_items(files: list[Path], root: Path, inputs: list[dict]) -> list[Item]:
    items: list[Item] = []
    single = inputs[0] if len(inputs) == 1 else None
    for f in files:
        rel = str(f.relative_to(root)) if f != root else f.name
        if f.suffix == ".npy":
            if single is None:
                raise InputError(f"{rel}: a .npy file feeds one input; the model has {len(inputs)}: use .npz keyed by name")
            arr = _npy(f)
            rank = len(single["shape"])
            n = _batch_count(arr.shape, rank, rel, single["name"], single["shape"])
            for i in range(n):
                def load(f=f, i=i, rank=rank):
                    return {single["name"]: _take(_npy(f), rank, i)}
                items.append(Item(f"{rel}[{i}]" if n > 1 or arr.ndim == rank else rel, None, load, "arrays"))
        else:
            data = _npz(str(f))
            if single is not None and single["name"] not in data and len(data) == 1:
                data = {single["name"]: next(iter(data.values()))}  # a lone unnamed array feeds the lone input
                key_map = {single["name"]: next(iter(_npz(str(f))))}
            else:
                key_map = {i["name"]: i["name"] for i in inputs}
            missing = [i["name"] for i in inputs if i["name"] not in data]
            if missing:
                raise InputError(f"{rel}: no array for model input(s) {missing}; keys are {sorted(data)}")
            counts = {_batch_count(data[i["name"]].shape, len(i["shape"]), rel, i["name"], i["shape"]) for i in inputs}
            if len(counts) != 1:
                raise InputError(f"{rel}: inputs hold different sample counts {sorted(counts)}")
            n = counts.pop()
            for k in range(n):
                def load(f=f, k=k):
                    z = _npz(str(f))
                    return {i["name"]: _take(z[key_map[i["name"]]], len(i["shape"]), k) for i in inputs}
                items.append(Item(f"{rel}[{k}]", None, load, "arrays"))
    return items


@lru_cache(maxsize=2)
def _read_pb_cached(path: str) -> np.ndarray:
    """A stacked .pb is parsed once for all of its samples (the cache is cleared per build)."""
    return _read_pb(Path(path))


def clear_caches() -> None:
    """Drops cached .npz/.pb contents: a file rewritten between builds must be read again."""
    _npz.cache_clear()
    _read_pb_cached.cache_clear()


def _read_pb(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    try:
        t.ParseFromString(path.read_bytes())
        return numpy_helper.to_array(t)
    except Exception as err:
        raise InputError(f"{path}: not an ONNX TensorProto ({err})") from err


def _pb_items(root: Path, inputs: list[dict], listed: list[Path] | None = None) -> list[Item]:
    listed = listed if listed is not None else [root]
    sets = sorted({p.parent for p in listed if p.parent.parent == root and p.parent.name.startswith("test_data_set_")})
    items: list[Item] = []
    if sets:  # ONNX model zoo layout: input_K.pb feeds the model's K-th input
        for d in sets:
            named = sorted(p for p in listed if p.parent == d and p.suffix == ".pb")
            files = {int(p.stem[6:]): p for p in named if p.stem.startswith("input_") and p.stem[6:].isdigit()}
            if sorted(files) != list(range(len(inputs))):
                raise InputError(f"{d.name}: has input files {[p.name for p in named]}, the model has {len(inputs)} "
                                 f"inputs (expected input_0.pb .. input_{len(inputs) - 1}.pb)")
            def load(files=files):
                return {inputs[k]["name"]: _read_pb(p) for k, p in files.items()}
            items.append(Item(d.name, None, load, "arrays"))
        return items
    if len(inputs) != 1:
        raise InputError(f"{root}: loose .pb files feed one input; the model has {len(inputs)} (use test_data_set_N/)")
    spec = inputs[0]
    rank = len(spec["shape"])
    files = [root] if root.is_file() else [p for p in listed if p.suffix == ".pb"]
    for f in files:
        rel = f.name if f == root else str(f.relative_to(root))
        arr = _read_pb(f)
        n = _batch_count(arr.shape, rank, rel, spec["name"], spec["shape"])
        for i in range(n):
            def load(f=f, i=i):
                return {spec["name"]: _take(_read_pb_cached(str(f)), rank, i)}
            items.append(Item(f"{rel}[{i}]", None, load, "arrays"))
    return items


def _text_items(path: Path) -> list[Item]:
    try:
        with open(path, encoding="utf-8") as fh:
            return _text_lines(path, fh)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err}); save text data as UTF-8") from None


def _text_lines(path: Path, fh) -> list[Item]:
    items = []
    for n, line in enumerate(fh):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path.name} line {n + 1}: not JSON ({err})") from err
        else:
            value = line.rstrip("\n")
        items.append(Item(f"{path.name}:{n + 1}", None, (lambda v=value: v), "text"))
    return items


def list_items(source: Path, inputs: list[dict], skipped_links: list[str] | None = None
               ) -> tuple[list[Item], list[str]]:
    """All items of a local source and the label names (sorted class folder names, or []).

    Symbolic links in a data directory that point outside it are left out and appended to ``skipped_links``.
    """
    source = Path(source)
    clear_caches()
    if not source.exists():
        raise InputError(f"data.source {source}: no such file or directory")
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix in (".npy", ".npz"):
            return _array_items([source], source, inputs), []
        if suffix == ".pb":
            return _pb_items(source, inputs), []
        if suffix in TEXT_EXT:
            return _text_items(source), []
        if suffix in IMAGE_EXT:
            return [Item(source.name, None, (lambda: _load_image(source)), "image")], []
        raise InputError(f"data.source {source}: unsupported file type {suffix!r}")
    files, links = data_files(source)
    if skipped_links is not None:
        skipped_links.extend(links)
    if any(p.suffix == ".pb" for p in files):
        return _pb_items(source, inputs, files), []
    arrays = [p for p in files if p.suffix in (".npy", ".npz")]
    if arrays:
        return _array_items(arrays, source, inputs), []
    return _image_items(source, files)
