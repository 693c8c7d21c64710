"""collect-stats --shard I/N and merge-stats through the CLI: the merged artifact is byte for byte what one
collect-stats writes, and quantize gives the same INT8 model from it."""

from __future__ import annotations

import json
from pathlib import Path

import builders
from ptqflow.artifacts.manifest import read_manifest
from ptqflow.cli import main
from ptqflow.errors import ConfigError, InputError
from test_pipeline_steps import _calibration, config_file  # noqa: F401  (fixture)


def _setup(tmp_path, config_file):  # noqa: F811
    src = builders.save(builders.conv_classifier(), tmp_path / "m.onnx")
    model = tmp_path / "model"
    assert main(["fetch-model", "--model", str(src), "--out", str(model)]) == 0
    return model, _calibration(tmp_path / "cal", model, config_file)


def _collect(model, cal, out, *extra):
    return main(["collect-stats", "--in-model", str(model), "--in-calibration", str(cal), "--out", str(out), *extra])


def test_sharded_collect_and_merge_equal_one_collect(tmp_path, config_file, capsys):  # noqa: F811
    model, cal = _setup(tmp_path, config_file)
    whole = tmp_path / "whole"
    assert _collect(model, cal, whole) == 0
    parts = [tmp_path / f"part-{i}" for i in range(3)]
    for i, part in enumerate(parts):
        assert _collect(model, cal, part, "--shard", f"{i}/3") == 0
        assert read_manifest(part).metrics["shard"] == i and read_manifest(part).config["shard"] == f"{i}/3"
    counts = [read_manifest(p).metrics["num_samples"] for p in parts]
    assert sum(counts) == read_manifest(whole).metrics["num_samples"] and len(set(counts)) > 1  # uneven shards
    merged = tmp_path / "merged"
    assert main(["merge-stats", "--in-partials", *map(str, reversed(parts)), "--out", str(merged)]) == 0
    for name in ("statistics.npz", "plan.json"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    assert read_manifest(merged).metrics["shards"] == 3
    models = []
    for stats in (whole, merged):
        out = tmp_path / f"q-{stats.name}"
        assert main(["quantize", "--in-model", str(model), "--in-calibration", str(cal), "--in-statistics",
                     str(stats), "--out", str(out)]) == 0
        models.append((out / "model.onnx").read_bytes())
    assert models[0] == models[1]
    capsys.readouterr()
    assert _collect(model, cal, parts[0], "--shard", "0/3") == 0  # the shard is in the key: a rerun is cached
    assert json.loads(capsys.readouterr().out)["digest"] == read_manifest(parts[0]).digest


def test_shard_refusals(tmp_path, config_file, capsys):  # noqa: F811
    model, cal = _setup(tmp_path, config_file)
    parts = [tmp_path / f"part-{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert _collect(model, cal, part, "--shard", f"{i}/2") == 0
    other = tmp_path / "other"
    assert _collect(model, cal, other, "--shard", "1/2", "--preset", "mixed") == 0
    capsys.readouterr()
    assert main(["merge-stats", "--in-partials", str(parts[0]), str(other), "--out", str(tmp_path / "m1")]) == \
        InputError.exit_code
    assert "another quantization config" in capsys.readouterr().err
    assert main(["merge-stats", "--in-partials", str(parts[0]), "--out", str(tmp_path / "m2")]) == InputError.exit_code
    assert "shards 0..1 of 2 once each" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    assert _collect(model, cal, tmp_path / "s", "--shard", "0/2", "--set",
                    "quantization.advanced.sensitivity_search=true") == ConfigError.exit_code
    assert "sensitivity_search" in capsys.readouterr().err
