"""Which framework wrote a model file, from its name and its first bytes only (no framework is imported)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ptqflow.errors import InputError

_PICKLE_SUFFIXES = (".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _zip_names(path: Path) -> list[str]:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``): a zip with ``<name>/code/`` and ``<name>/data.pkl``."""
    names = _zip_names(Path(path))
    return any("/code/" in n for n in names) and any(n.endswith("/data.pkl") for n in names) and not is_torch_export(path)


def is_torch_export(path: Path) -> bool:
    """A ``torch.export.save`` program (``.pt2``): a zip holding the serialized program (``models/*.json``
    in the current format, ``serialized_exported_program.json`` in older ones)."""
    path = Path(path)
    names = _zip_names(path)
    return path.suffix.lower() == ".pt2" and bool(names) or any(
        n.endswith(("serialized_exported_program.json", "archive_format")) for n in names)


def is_saved_model(path: Path) -> bool:
    """A TensorFlow SavedModel directory: ``saved_model.pb`` (or ``.pbtxt``) at its top."""
    path = Path(path)
    return path.is_dir() and any((path / n).is_file() for n in ("saved_model.pb", "saved_model.pbtxt"))


def is_keras(path: Path) -> bool:
    """A Keras model file: ``.keras`` (a zip with ``config.json``) or an HDF5 ``.h5``/``.hdf5``."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".keras":
        return "config.json" in _zip_names(path)
    return path.suffix.lower() in (".h5", ".hdf5") and _head(path) == _HDF5_MAGIC


def is_tflite(path: Path) -> bool:
    """A TFLite flatbuffer: file identifier ``TFL3`` at bytes 4-8."""
    path = Path(path)
    return path.is_file() and _head(path)[4:8] == b"TFL3"


def is_pickle(path: Path) -> bool:
    """A pickled checkpoint: a raw pickle (protocol 2+ starts with 0x80), a ``torch.save`` zip (``data.pkl``
    without TorchScript's ``code/``), or a name that says pickle (``.pth``, ``.pkl``, ``.ckpt``...)."""
    path = Path(path)
    if not path.is_file() or is_torchscript(path) or is_torch_export(path):
        return False
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    names = _zip_names(path)
    if names:
        return any(n.endswith("data.pkl") for n in names)
    return _head(path, 1) == b"\x80"


def refuse_pickle(path: Path, uri: str) -> None:
    """InputError for a pickled checkpoint, saying what to export instead."""
    if is_pickle(Path(path)):
        raise InputError(
            f"{uri}: a pickled checkpoint (a state dict or torch.save'd object); ptqflow never unpickles. Export "
            f"the model instead: TorchScript (torch.jit.save(torch.jit.script(model) or torch.jit.trace(model, "
            f"example), 'model.pt')), a torch.export program (torch.export.save(torch.export.export(model, "
            f"example_inputs), 'model.pt2')), or ONNX; or pass the torch.nn.Module to ptqflow.quantize")
