"""The demo setup: rendered text lines with a label file, the bundled PP-OCR rec model, the OCR metric."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rapidocr_onnxruntime")

from ptqflow import demo  # noqa: E402
from ptqflow.config import parse_config  # noqa: E402
from ptqflow.errors import InputError  # noqa: E402


def test_prepare_writes_lines_and_their_label_file(tmp_path: Path):
    setup = demo.prepare(tmp_path, n_images=12, seed=1)
    assert setup.model_path.is_file() and "rec" in setup.model_path.name
    lines = (setup.data_dir / demo.LABEL_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    for line in lines:
        rel, text = line.split("\t")
        img = Image.open(setup.data_dir / rel)
        assert text.strip() == text and text
        assert img.width / img.height <= demo.REC_WIDTH / demo.REC_HEIGHT  # the resize never squeezes a line
    assert setup.data_dir.resolve().is_relative_to(tmp_path.resolve())
    cfg = parse_config(setup.config)
    assert cfg.data.preprocess.resize == [48, 320] and cfg.data.preprocess.channel_order == "BGR"
    assert cfg.data.label_file == demo.LABEL_FILE and cfg.validation.gate.accuracy_metric == "char_accuracy"


def test_prepare_is_deterministic_and_ignores_system_fonts(tmp_path: Path, monkeypatch):
    a = demo.prepare(tmp_path / "a", n_images=6, seed=3)
    # A machine with other fonts installed must render the same lines: the demo draws with Pillow's own font.
    monkeypatch.setattr(demo, "find_fonts", lambda: ["/nonexistent/font.ttf"])
    b = demo.prepare(tmp_path / "b", n_images=6, seed=3)
    assert (a.data_dir / demo.LABEL_FILE).read_bytes() == (b.data_dir / demo.LABEL_FILE).read_bytes()
    for f in sorted(a.data_dir.rglob("*.png")):
        g = b.data_dir / f.relative_to(a.data_dir)
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(g)))


def test_fp32_model_reads_the_rendered_lines(tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    setup = demo.prepare(tmp_path, n_images=40, seed=0)
    cfg = parse_config({**setup.config, "data": {**setup.config["data"], "source": str(setup.data_dir)}})
    from ptqflow.data.preprocess import preprocess_image

    sess = ort.InferenceSession(str(setup.model_path))
    name = sess.get_inputs()[0].name
    labels = dict(line.split("\t") for line in (setup.data_dir / demo.LABEL_FILE).read_text().splitlines())
    probs = np.concatenate([
        sess.run(None, {name: preprocess_image(Image.open(setup.data_dir / rel), cfg.data.preprocess,
                                               [1, 3, 48, None])[None]})[0] for rel in labels])
    m = demo.text_metrics({"out": probs}, list(labels.values()))
    assert m["char_accuracy"] > 0.95 and m["exact_match"] > 0.8


def test_text_metrics_decode_ctc():
    chars = demo._rec_characters()
    full = ("",) + chars + (" ",)
    idx = {c: i for i, c in enumerate(full)}

    def probs(seq):  # one-hot rows; "_" is the blank
        out = np.zeros((len(seq), len(full)), dtype=np.float32)
        for t, c in enumerate(seq):
            out[t, 0 if c == "_" else idx[c]] = 1.0
        return out

    assert demo.ctc_decode(probs("_hh_e_ll_l_oo_")) == "hello"
    batch = np.stack([probs("_ab__"), probs("_ax__")])
    m = demo.text_metrics({"o": batch}, ["ab", "ab"])
    assert m == {"exact_match": 0.5, "char_accuracy": 0.75}
    assert demo.edit_distance("kitten", "sitting") == 3


def test_prepare_rejects_too_few_images(tmp_path: Path):
    with pytest.raises(InputError, match="n_images"):
        demo.prepare(tmp_path, n_images=1)


def test_summary_reads_the_figures_of_the_manifests(tmp_path: Path):
    from ptqflow.artifacts.manifest import write_manifest

    assert demo.summary(tmp_path) == []  # nothing has run yet
    (tmp_path / "validate").mkdir()
    write_manifest(tmp_path / "validate", step="validate", config={}, inputs={},
                   metrics={"samples": 200, "fp32_exact_match": 0.935, "int8_exact_match": 0.93,
                            "fp32_char_accuracy": 0.994, "int8_char_accuracy": 0.9925, "min_cosine": 0.95341,
                            "speedup_openvino": 2.237, "openvino_fp32_precision": "f32",
                            "speedup_openvino_default_precision": 1.161, "openvino_default_precision": "bf16"})
    (tmp_path / "export-ir").mkdir()
    write_manifest(tmp_path / "export-ir", step="export-ir", config={}, inputs={},
                   metrics={"fake_quantize": 59, "bin_bytes": 2743 * 1024, "size_ratio": 0.2611,
                            "parity_ir_vs_fp32": 0.336})
    lines = demo.summary(tmp_path)
    assert lines == [
        "on 200 held-out samples: char_accuracy FP32 0.994 / INT8 0.993, exact_match FP32 0.935 / INT8 0.930; "
        "output cosine >= 0.9534",
        "OpenVINO CPU speedup of INT8 over the FP32 IR, batch-1 latency: 2.24x against f32, 1.16x against this "
        "CPU's default bf16 on this machine",
        "INT8 IR: 59 FakeQuantize, weights 2743 KiB (0.26 of FP32); IR vs FP32 relative L2 0.336",
    ]
