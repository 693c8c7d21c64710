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


def test_summary_reads_the_figures_of_the_manifests(tmp_path: Path):
    from ptqflow.artifacts.manifest import write_manifest

    assert demo.summary(tmp_path) == []  # nothing has run yet
    (tmp_path / "validate").mkdir()
    write_manifest(tmp_path / "validate", step="validate", config={}, inputs={},
                   metrics={"samples": 200, "fp32_top1": 0.97, "int8_top1": 0.965, "min_cosine": 0.99541,
                            "speedup_openvino": 1.734})
    (tmp_path / "export-ir").mkdir()
    write_manifest(tmp_path / "export-ir", step="export-ir", config={}, inputs={},
                   metrics={"fake_quantize": 12, "bin_bytes": 150 * 1024, "size_ratio": 0.2951,
                            "parity_ir_vs_fp32": 0.0458})
    lines = demo.summary(tmp_path)
    assert lines == [
        "top-1 accuracy on 200 held-out images: FP32 0.970, INT8 0.965; output cosine >= 0.9954",
        "OpenVINO CPU speedup of INT8 over FP32 (f32 precision), batch-1 latency: 1.73x on this machine",
        "INT8 IR: 12 FakeQuantize, weights 150 KiB (0.30 of FP32); IR vs FP32 relative L2 0.046",
    ]
