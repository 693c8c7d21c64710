"""collect-stats and quantize through the CLI on a tiny model with a hand-made calibration artifact.

The calibration artifact here is minimal (one ``.npy`` per sample plus a manifest); when ptqflow.data
provides its own reader the real build-calibration step is used instead (test_pipeline_real.py), so this
module then only checks that the engine and data modules are importable together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from ptqflow.artifacts.manifest import read_manifest, verify_outputs, write_manifest
from ptqflow.cli import main

pytest.importorskip("ptqflow.api")
import ptqflow.data as data_module  # noqa: E402


@pytest.fixture
def hand_made_data(monkeypatch):
    """A reader for the minimal artifact below, installed only where ptqflow.data has none yet."""
    if hasattr(data_module, "iter_samples"):
        pytest.skip("ptqflow.data has its own reader: covered by test_pipeline_real.py")

    def iter_samples(artifact_dir, split="calibration"):
        for p in sorted((Path(artifact_dir) / split).glob("*.npy")):
            yield {"input": np.load(p, allow_pickle=False)[None]}

    def read_index(artifact_dir):
        return json.loads((Path(artifact_dir) / "index.json").read_text())

    monkeypatch.setattr(data_module, "iter_samples", iter_samples, raising=False)
    monkeypatch.setattr(data_module, "read_index", read_index, raising=False)


def _calibration(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    (root / "calibration").mkdir(parents=True)
    for i in range(n):
        np.save(root / "calibration" / f"{i:03d}.npy", rng.normal(0, 1, (3, 16, 16)).astype(np.float32))
    (root / "index.json").write_text(json.dumps({"counts": {"calibration": n, "validation": 0}}))
    write_manifest(root, step="build-calibration", config={}, inputs={})
    return root


def test_collect_stats_then_quantize_both_bias_modes(tmp_path, hand_made_data, capsys):
    src = builders.save(builders.conv_classifier(), tmp_path / "m.onnx")
    model, cal = tmp_path / "model", _calibration(tmp_path / "cal")
    assert main(["fetch-model", "--model", str(src), "--out", str(model)]) == 0
    stats = tmp_path / "stats"
    assert main(["collect-stats", "--in-model", str(model), "--in-calibration", str(cal), "--out", str(stats),
                 "--subset-size", "8"]) == 0
    m = read_manifest(stats)
    assert {"statistics.npz", "plan.json"} <= set(m.outputs) and verify_outputs(stats, m) == []
    assert m.inputs == {"model": read_manifest(model).digest, "calibration": read_manifest(cal).digest}
    assert "collect-stats: 8/8 done" in capsys.readouterr().err  # progress bounded by subset_size
    digests = {}
    for mode in ("--fast-bias-correction", "--no-fast-bias-correction"):
        out = tmp_path / f"q{mode}"
        assert main(["quantize", "--in-model", str(model), "--in-calibration", str(cal), "--in-statistics",
                     str(stats), "--out", str(out), "--subset-size", "8", mode]) == 0
        q = onnx.load(str(out / "model.onnx"))
        assert q.ir_version <= 10 and any(n.op_type == "QuantizeLinear" for n in q.graph.node)
        layers = json.loads((out / "summary.json").read_text())["layers"]
        metrics = read_manifest(out).metrics
        assert metrics["quantized_layers"] == sum(1 for layer in layers if layer["status"] == "quantized") > 0
        digests[mode] = read_manifest(out).digest
    assert len(set(digests.values())) == 2
    # Statistics collected with one bias mode serve both: the collect-stats cache key ignores it.
    assert main(["collect-stats", "--in-model", str(model), "--in-calibration", str(cal), "--out", str(stats),
                 "--subset-size", "8", "--no-fast-bias-correction"]) == 0
    assert "collect-stats: skipped" in capsys.readouterr().err


def test_quantize_with_statistics_of_another_model_is_input_error(tmp_path, hand_made_data, capsys):
    cal = _calibration(tmp_path / "cal")
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["fetch-model", "--model", str(builders.save(builders.conv_classifier(), tmp_path / "a.onnx")),
                 "--out", str(a)]) == 0
    assert main(["fetch-model", "--model", str(builders.save(builders.conv_zero_bias(), tmp_path / "b.onnx")),
                 "--out", str(b)]) == 0
    stats = tmp_path / "stats"
    assert main(["collect-stats", "--in-model", str(a), "--in-calibration", str(cal), "--out", str(stats)]) == 0
    out = tmp_path / "q"
    code = main(["quantize", "--in-model", str(b), "--in-calibration", str(cal), "--in-statistics", str(stats),
                 "--out", str(out)])
    assert code == 3 and not out.exists()
    assert "statistics do not match" in capsys.readouterr().err
