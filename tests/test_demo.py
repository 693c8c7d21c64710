"""The demo setup: rendered ImageFolder of known orientation and the bundled PP-OCR cls model."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rapidocr_onnxruntime")

from ptqflow import demo  # noqa: E402
from ptqflow.config import parse_config  # noqa: E402
from ptqflow.errors import InputError  # noqa: E402


def test_prepare_writes_balanced_imagefolder(tmp_path: Path):
    setup = demo.prepare(tmp_path, n_images=40, seed=1)
    assert setup.model_path.is_file() and "cls" in setup.model_path.name
    counts = {lab: len(list((setup.data_dir / lab).glob("*.png"))) for lab in demo.CLS_LABELS}
    assert counts == {"0": 20, "180": 20}
    assert setup.data_dir.resolve().is_relative_to(tmp_path.resolve())
    cfg = parse_config(setup.config)
    assert cfg.data.preprocess.resize == [48, 192] and cfg.data.preprocess.channel_order == "BGR"


def test_prepare_is_deterministic(tmp_path: Path):
    a = demo.prepare(tmp_path / "a", n_images=6, seed=3)
    b = demo.prepare(tmp_path / "b", n_images=6, seed=3)
    for f in sorted(a.data_dir.rglob("*.png")):
        g = b.data_dir / f.relative_to(a.data_dir)
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(g)))


def test_fp32_model_reads_rendered_orientation(tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    setup = demo.prepare(tmp_path, n_images=60, seed=0)
    sess = ort.InferenceSession(str(setup.model_path))
    name = sess.get_inputs()[0].name
    correct = total = 0
    for label in demo.CLS_LABELS:
        for f in sorted((setup.data_dir / label).glob("*.png")):
            probs = sess.run(None, {name: demo.cls_input(Image.open(f))[None]})[0]
            correct += demo.CLS_LABELS[int(probs.argmax())] == label
            total += 1
    assert correct / total > 0.9


def test_prepare_rejects_too_few_images(tmp_path: Path):
    with pytest.raises(InputError, match="n_images"):
        demo.prepare(tmp_path, n_images=1)
