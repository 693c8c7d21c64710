"""validate --shard I/N and merge-validation through the CLI: the merged report is the one validate writes in one
process on the same data (speed aside: measured once, by shard 0), and so is the gate verdict."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from ptqflow.artifacts.manifest import read_manifest
from ptqflow.cli import main
from ptqflow.errors import ConfigError, GateFailedError, InputError
from test_validate import make_artifacts

pytest.importorskip("jsonschema")

CONFIG = """validation:
  latency_iterations: 2
  per_layer_sensitivity: true
  gate:
    min_speedup: null
    min_cosine: 0.99
    max_accuracy_drop: 0.05
    min_top1_agreement: 0.5
"""
# Measured where the models run, so never equal between two runs: the speed section, and the manifest's speedups.
SPEED_METRICS = ("speedup_openvino", "speedup_onnxruntime", "speedup_openvino_default_precision")


def _validate(dirs, out, cfg, *extra):
    return main(["validate", "--in-model", str(dirs["model"]), "--in-quantized", str(dirs["quantized"]),
                 "--in-calibration", str(dirs["calibration"]), "--out", str(out), "--config", str(cfg), *extra])


def _merge(parts, out, cfg, *extra):
    return main(["merge-validation", "--in-partials", *map(str, parts), "--out", str(out), "--config", str(cfg),
                 *extra])


def _without_speed(out):
    report = json.loads((out / "report.json").read_text())
    speed = report.pop("speed")
    assert set(speed) == {"onnxruntime", "openvino"}
    metrics = {k: v for k, v in read_manifest(out).metrics.items() if k not in SPEED_METRICS}
    return report, metrics


@pytest.mark.parametrize("levels,sqnr,code", [(255, None, 0), (3, 60.0, GateFailedError.exit_code)])
def test_three_uneven_shards_merge_to_the_one_process_report(tmp_path, capsys, levels, sqnr, code):
    dirs = make_artifacts(tmp_path, n=14, levels=levels)  # shards of 4, 5 and 5 samples
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG + (f"    min_sqnr_db: {sqnr}\n" if sqnr else ""))
    whole = tmp_path / "whole"
    assert _validate(dirs, whole, cfg) == code
    parts = [tmp_path / f"part-{i}" for i in range(3)]
    for i, part in enumerate(parts):
        assert _validate(dirs, part, cfg, "--shard", f"{i}/3") == 0  # a shard has no gate
        assert not (part / "report.json").exists() and read_manifest(part).config["shard"] == f"{i}/3"
    assert [read_manifest(p).metrics["num_samples"] for p in parts] == [4, 5, 5]
    assert [p.speed is not None for p in map(_partial, parts)] == [True, False, False]  # speed: shard 0 only
    merged = tmp_path / "merged"
    order = [parts[2], parts[0], parts[1]]
    assert _merge(order, merged, cfg) == code  # any order
    expected, got = _without_speed(whole), _without_speed(merged)
    assert got == expected  # verdict, gate rows, accuracy, fidelity, layers, samples, config: equal values
    report = expected[0]
    assert report["accuracy"]["correct"]["fp32"]["top1"] == 10 and report["samples"] == 14  # labels: 3 of 4 right
    assert {row["layer"] for row in report["layers"]} == {"conv1", "conv2", "fc"}
    assert report["verdict"] == ("pass" if code == 0 else "fail") and "Gate: " in (merged / "report.html").read_text()
    assert read_manifest(merged).extra["shards"] == 3
    capsys.readouterr()
    assert _merge(order, merged, cfg) == code  # cached: the same verdict, the same exit code
    assert "skipped" in capsys.readouterr().err


def _partial(path):
    from ptqflow.pipeline.steps.merge_validation import Partial

    return Partial.load(path)


def test_refusals(tmp_path, capsys, monkeypatch):
    dirs = make_artifacts(tmp_path, n=10)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    parts = [tmp_path / f"part-{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert _validate(dirs, part, cfg, "--shard", f"{i}/2") == 0
    other = tmp_path / "other"
    assert _validate(dirs, other, cfg, "--shard", "1/2", "--min-cosine", "0.5") == 0
    capsys.readouterr()
    assert _merge([parts[0], other], tmp_path / "m1", cfg) == InputError.exit_code
    assert "another config" in capsys.readouterr().err
    assert _merge([parts[0]], tmp_path / "m2", cfg) == InputError.exit_code
    assert "shards 0..1 of 2 once each" in capsys.readouterr().err
    assert _merge([parts[0], parts[1], parts[1]], tmp_path / "m3", cfg) == InputError.exit_code
    assert "shards 0..1 of 2 once each" in capsys.readouterr().err
    assert _merge([parts[0], dirs["model"]], tmp_path / "m4", cfg) == InputError.exit_code
    assert "not the output of validate --shard" in capsys.readouterr().err
    assert not any((tmp_path / f"m{k}").exists() for k in range(1, 5))
    mod = types.ModuleType("ptqflow_sharded_metric")
    mod.mean_first = lambda outputs, labels: float(np.mean(outputs["logits"][:, 0]))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    metric = f"validation.metric={mod.__name__}:mean_first"
    assert _validate(dirs, tmp_path / "s", cfg, "--shard", "0/2", "--set", metric) == ConfigError.exit_code
    assert f"validation.metric '{mod.__name__}:mean_first' is computed on all outputs" in capsys.readouterr().err
    assert _merge(parts, tmp_path / "m5", cfg, "--set", metric) == ConfigError.exit_code
    assert "validation.metric" in capsys.readouterr().err


def test_sums_do_not_depend_on_how_samples_are_grouped():
    from ptqflow.pipeline import metrics as M

    rng = np.random.default_rng(0)
    samples = [(rng.normal(0, 10.0 ** rng.integers(-3, 4), (1, 7)).astype(np.float32), rng.integers(0, 7))
               for _ in range(23)]
    samples = [(ref, ref + rng.normal(0, 0.01, ref.shape).astype(np.float32), int(label)) for ref, label in samples]

    def sums(chunk):
        s = M.ValidationSums(outputs={"y": M.OutputSums()})
        for ref, test, label in chunk:
            s.add({"y": ref}, {"y": test}, label)
        return M.ValidationSums.from_json(json.loads(json.dumps(s.to_json())))  # through the partial's JSON

    whole = sums(samples)
    for cuts in ([0, 23], [0, 5, 6, 23], [0, 0, 11, 12, 23]):
        merged = sums(samples[cuts[-2]:cuts[-1]])  # merged in reverse order
        for lo, hi in reversed(list(zip(cuts[:-2], cuts[1:-1]))):
            merged.merge(sums(samples[lo:hi]))
        assert (merged.fidelity(), merged.accuracy()) == (whole.fidelity(), whole.accuracy())
    nan = [(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]), None)]
    assert np.isnan(sums(samples + nan).fidelity()["y"]["max_abs_error"])
