"""Source models in a training framework's format, converted to ONNX at fetch-model (issue 23).

ptqflow quantizes ONNX (and OpenVINO IR). A model saved by PyTorch, TensorFlow, Keras or TFLite is converted
to ONNX first, by the framework's own exporter or the best maintained converter, and the conversion is
checked: the source framework and onnxruntime run the same inputs and the largest relative difference
between their outputs is recorded in fetch-model's manifest, beside the source format, the converter and the
versions; above ``conversion.tolerance`` the model is refused, naming the tolerance and the output.

Each framework is an optional extra (``pip install ptqflow[torch]``, ``ptqflow[tensorflow]``): its module here is
imported only when a model of its format arrives, and a missing framework is a ConfigError naming the extra.
Pickled checkpoints (``.pth`` state dicts, ``.pkl``) are refused: ptqflow never unpickles.

Adding a format: write ``detect`` and ``convert`` in the framework's module and list a :class:`Frontend` in
``FRONTENDS``; the detection must read only file names and magic bytes (no framework import).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ptqflow.errors import InputError
from ptqflow.frontends import sniff
from ptqflow.frontends.base import Conversion, ConversionOptions

__all__ = ["FRONTENDS", "Conversion", "ConversionOptions", "Frontend", "convert", "detect"]


@dataclass(frozen=True)
class Frontend:
    """One source format: ``matches`` sniffs a path without importing the framework; ``converter`` names the
    ``module:function`` that converts it, ``(path, out_dir, options) -> Conversion``."""

    source_format: str  # recorded in the manifest: conversion.source_format
    extra: str  # the pip extra that brings the framework and converter
    matches: Callable[[Path], bool]
    converter: str

    def convert(self, path: Path, out_dir: Path, options: ConversionOptions) -> Conversion:
        module, function = self.converter.split(":")
        return getattr(importlib.import_module(module), function)(Path(path), Path(out_dir), options)


FRONTENDS: tuple[Frontend, ...] = (
    Frontend("torchscript", "torch", sniff.is_torchscript, "ptqflow.frontends.torch:convert_torchscript"),
    Frontend("torch_export", "torch", sniff.is_torch_export, "ptqflow.frontends.torch:convert_exported_program"),
    Frontend("tf_saved_model", "tensorflow", sniff.is_saved_model,
             "ptqflow.frontends.tensorflow:convert_saved_model"),
    Frontend("keras", "tensorflow", sniff.is_keras, "ptqflow.frontends.tensorflow:convert_keras"),
    Frontend("tflite", "tensorflow", sniff.is_tflite, "ptqflow.frontends.tensorflow:convert_tflite"),
)


def detect(path: Path, uri: str | None = None) -> Frontend | None:
    """The frontend of the model at ``path`` (a file or a SavedModel directory); None for ONNX and OpenVINO IR.
    A pickled checkpoint is an InputError saying what to export instead."""
    path = Path(path)
    sniff.refuse_pickle(path, uri or str(path))
    for frontend in FRONTENDS:
        if frontend.matches(path):
            return frontend
    return None


def is_source_model(path: Path) -> bool:
    """Whether ``path`` is a model file or directory a frontend converts (used to find the model in a directory
    or an unpacked archive)."""
    return any(frontend.matches(Path(path)) for frontend in FRONTENDS)


def convert(path: Path, out_dir: Path, options: ConversionOptions, uri: str | None = None) -> Conversion:
    """Convert the model at ``path`` into ``out_dir/model.onnx`` (plus external data for large models), checked
    against the source framework; InputError when no frontend claims it."""
    frontend = detect(path, uri)
    if frontend is None:
        raise InputError(f"{uri or path}: not a model format ptqflow converts (expected TorchScript .pt, "
                         f"torch.export .pt2, a TensorFlow SavedModel directory, Keras .keras/.h5 or .tflite)")
    return frontend.convert(Path(path), Path(out_dir), options)
