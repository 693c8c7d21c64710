"""Text labels from a PaddleOCR-style label file: through build-calibration's shards into validation's metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import builders
from ptqflow.config import PipelineConfig
from ptqflow.data import iter_labeled, read_index
from ptqflow.data.build import build
from ptqflow.errors import InputError
from ptqflow.pipeline.steps.validate import load_validation


def _cfg(label_file="labels.txt", **data):
    return PipelineConfig.model_validate({"quantization": {"subset_size": 3},
                                          "data": {"source": "x", "label_file": label_file, "validation_size": 3,
                                                   **data}})


def _folder(root: Path, n: int = 6) -> dict[str, str]:
    texts = {}
    for i in range(n):
        rel = f"lines/{i}.png"
        (root / "lines").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / rel)
        texts[rel] = f"line {i % 4} text"  # two lines share a text
    (root / "labels.txt").write_text("".join(f"{k}\t{v}\n" for k, v in texts.items()), encoding="utf-8")
    return texts


@pytest.fixture
def conv(tmp_path):
    return builders.save(builders.conv_classifier(size=8), tmp_path / "m" / "model.onnx")


def test_label_file_gives_each_validation_sample_its_text(tmp_path, conv):
    texts = _folder(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    index = build(tmp_path / "data", conv, out, _cfg())
    assert index["label_kind"] == "text" and index["label_names"] == sorted(set(texts.values()))
    assert index["counts"] == {"calibration": 3, "validation": 3}
    ints = [label for _, label in iter_labeled(out, "validation")]
    assert all(isinstance(i, int) for i in ints)  # shards stay integer arrays (no object arrays, no pickle)
    _, labels = load_validation(out)
    assert labels == [texts[src] for src in read_index(out)["sources"]["validation"]]


def test_image_folder_labels_stay_class_indices(tmp_path, conv):
    for c in ("a", "b"):
        for i in range(3):
            (tmp_path / "d" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    index = build(tmp_path / "d", conv, out, _cfg(label_file=None))
    assert index["label_kind"] == "class"
    assert set(load_validation(out)[1]) <= {0, 1}


@pytest.mark.parametrize("name,content,message", [
    ("../outside.txt", None, "must be a file inside the data directory"),
    ("missing.txt", None, "no such file"),
    ("labels.txt", "lines/0.png has no tab\n", r"labels.txt:1: expected 'relative/path<TAB>label'"),
    ("labels.txt", "lines/0.png\tone\nlines/0.png\ttwo\n", r"labels.txt:2: lines/0.png is labelled twice"),
])
def test_bad_label_files_are_input_errors_naming_the_file(tmp_path, conv, name, content, message):
    _folder(tmp_path / "data")
    (tmp_path / "outside.txt").write_text("lines/0.png\tx\n")
    if content is not None:
        (tmp_path / "data" / name).write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=message):
        build(tmp_path / "data", conv, out, _cfg(label_file=name))
    assert list(out.iterdir()) == []
