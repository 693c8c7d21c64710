"""Without the tensorflow extra, a TensorFlow-family model is a ConfigError naming the extra. Runs whether or
not TensorFlow is installed: where it is, importing it is made to fail as it does where it is absent."""

from __future__ import annotations

import sys
import zipfile

import pytest

from ptqflow.cli import main


def keras_file(path):
    """A ``.keras`` archive as far as detection reads one (a zip holding ``config.json``)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
    return path


def tflite_file(path):
    """A flatbuffer with TFLite's file identifier (``TFL3`` at bytes 4-8)."""
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))
    return path


@pytest.mark.parametrize("make", [keras_file, tflite_file], ids=["keras", "tflite"])
def test_missing_tensorflow_names_the_extra(tmp_path, monkeypatch, capsys, make):
    source = make(tmp_path / ("net.keras" if make is keras_file else "net.tflite"))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError, as when absent
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(source), "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "pip install 'ptqflow[tensorflow]'" in err
