"""collect-stats and quantize through the CLI on a tiny model with real calibration shards."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

import builders
from ptqflow.artifacts.manifest import read_manifest, verify_outputs
from ptqflow.cli import main

pytest.importorskip("ptqflow.api")
pytest.importorskip("ptqflow.pipeline.steps.build_calibration")
from test_pipeline_real import CONFIG, write_npy_dataset  # noqa: E402


@pytest.fixture
def config_file(tmp_path):
    """The shared config file (no preprocessing, small splits)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    return cfg


def _calibration(root: Path, model: Path | None = None, cfg: Path | None = None) -> Path:
    data = write_npy_dataset(root.parent / f"{root.name}-npy", n=24)
    args = ["build-calibration", "--in-model", str(model), "--data", str(data), "--out", str(root)]
    assert main([*args, "--config", str(cfg)] if cfg else args) == 0
    return root


def test_collect_stats_then_quantize_both_bias_modes(tmp_path, config_file, capsys):
    src = builders.save(builders.conv_classifier(), tmp_path / "m.onnx")
    model = tmp_path / "model"
    assert main(["fetch-model", "--model", str(src), "--out", str(model)]) == 0
    cal = _calibration(tmp_path / "cal", model, config_file)
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
    # The bias mode decides what collect-stats gathers (FastBiasCorrection's input means), so it is in the key:
    # switching it collects again, and quantize refuses statistics that lack what its mode needs (exit 3).
    assert main(["collect-stats", "--in-model", str(model), "--in-calibration", str(cal), "--out", str(stats),
                 "--subset-size", "8", "--no-fast-bias-correction"]) == 0
    assert "collect-stats: skipped" not in capsys.readouterr().err
    assert main(["quantize", "--in-model", str(model), "--in-calibration", str(cal), "--in-statistics",
                 str(stats), "--out", str(tmp_path / "q-mismatch"), "--subset-size", "8"]) == 3
    assert "lack FastBiasCorrection's per-channel input means" in capsys.readouterr().err
    assert not (tmp_path / "q-mismatch" / "manifest.json").exists()


def test_quantize_with_statistics_of_another_model_is_input_error(tmp_path, config_file, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["fetch-model", "--model", str(builders.save(builders.conv_classifier(), tmp_path / "a.onnx")),
                 "--out", str(a)]) == 0
    assert main(["fetch-model", "--model", str(builders.save(builders.conv_zero_bias(), tmp_path / "b.onnx")),
                 "--out", str(b)]) == 0
    cal = _calibration(tmp_path / "cal", a, config_file)
    stats = tmp_path / "stats"
    assert main(["collect-stats", "--in-model", str(a), "--in-calibration", str(cal), "--out", str(stats)]) == 0
    out = tmp_path / "q"
    code = main(["quantize", "--in-model", str(b), "--in-calibration", str(cal), "--in-statistics", str(stats),
                 "--out", str(out)])
    assert code == 3 and not out.exists()
    assert "statistics do not match" in capsys.readouterr().err
