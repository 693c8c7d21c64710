"""The step runner's chaining, caching, gate and S3 behaviour, independent of the numerical steps.

fetch-model is the real step and collect-stats/quantize keep their real names, inputs and config sections
(their cache keys are what decide reuse); only the numerical work of the other steps is replaced by small
deterministic stand-ins that write real files, so these tests exercise ``run_pipeline`` itself.
"""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import builders
import s3server
from ptqflow.pipeline import runner as pipeline
from ptqflow.artifacts import input_digests, storage
from ptqflow.artifacts.manifest import read_manifest, write_manifest
from ptqflow.config import parse_config, section_dump
from ptqflow.errors import GateFailedError, StorageError
from ptqflow.pipeline.steps import collect_stats, quantize

CALLS: Counter = Counter()


def _stand_in(name, inputs, section, body):
    mod = types.ModuleType(f"ptqflow_test_steps.{name.replace('-', '_')}")
    mod.NAME, mod.INPUTS, mod.config_section = name, inputs, section

    def run(ins, out, cfg):
        CALLS[name] += 1
        failure = body(ins, Path(out), cfg)
        m = write_manifest(out, step=name, config=section(cfg), inputs=input_digests(ins),
                           metrics={"verdict": "fail" if failure else "pass"} if name == "validate" else {})
        if failure is not None:
            raise failure
        return m

    mod.run = run
    return mod


def _calibration(ins, out, cfg):
    (out / "calibration").mkdir()
    rng = np.random.default_rng(cfg.data.seed)
    np.save(out / "calibration" / "x.npy", rng.normal(size=(4, 16)).astype(np.float32))


def _stats(ins, out, cfg):
    x = np.load(Path(ins["calibration"]) / "calibration" / "x.npy", allow_pickle=False)
    np.savez(out / "statistics.npz", min=x.min(0), max=x.max(0))


def _quantize(ins, out, cfg):
    (out / "model.onnx").write_bytes((Path(ins["model"]) / "model.onnx").read_bytes())
    (out / "summary.json").write_text(json.dumps({"fast": cfg.quantization.fast_bias_correction}))


def _validate(ins, out, cfg):
    (out / "report.json").write_text(json.dumps({"cosine": 0.99}))
    gate = cfg.validation.gate.min_cosine
    return GateFailedError(f"cosine 0.99 < min_cosine {gate}") if gate and gate > 0.99 else None


def _export(ins, out, cfg):
    (out / "model.xml").write_text("<net/>")


@pytest.fixture
def stand_ins(monkeypatch):
    CALLS.clear()
    mods = {
        "build-calibration": _stand_in("build-calibration", ("model",), lambda c: section_dump(c.data), _calibration),
        "collect-stats": _stand_in("collect-stats", collect_stats.INPUTS, collect_stats.config_section, _stats),
        "quantize": _stand_in("quantize", quantize.INPUTS, quantize.config_section, _quantize),
        "validate": _stand_in("validate", ("model", "quantized", "calibration"),
                              lambda c: section_dump(c.validation), _validate),
        "export-ir": _stand_in("export-ir", ("quantized", "model", "calibration"),
                               lambda c: section_dump(c.export), _export),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(pipeline.STEP_MODULES, name, mod.__name__)
    return mods


def _cfg(tmp_path, output, **quant):
    model = builders.save(builders.mlp(), tmp_path / "src" / "mlp.onnx")
    (tmp_path / "data").mkdir(exist_ok=True)
    return parse_config({"model": str(model), "output": output, "data": {"source": str(tmp_path / "data")},
                         "quantization": quant})


def test_chain_reuses_upstream_when_only_an_apply_field_changes(tmp_path, stand_ins):
    out = tmp_path / "run"
    first = pipeline.run_pipeline(_cfg(tmp_path, str(out), fast_bias_correction=True))
    assert list(first) == list(pipeline.STEP_MODULES)
    assert sorted(p.name for p in out.iterdir()) == sorted(pipeline.STEP_MODULES)
    assert sum(CALLS.values()) == 5
    CALLS.clear()
    again = pipeline.run_pipeline(_cfg(tmp_path, str(out), fast_bias_correction=True))
    assert sum(CALLS.values()) == 0
    assert {k: m.digest for k, m in again.items()} == {k: m.digest for k, m in first.items()}
    second = pipeline.run_pipeline(_cfg(tmp_path, str(out), advanced={"bias_correction_threshold": 5.0}))
    assert CALLS == Counter({"quantize": 1, "validate": 1, "export-ir": 1})
    for name in ("fetch-model", "build-calibration", "collect-stats"):
        assert second[name].digest == first[name].digest
    assert second["quantize"].digest != first["quantize"].digest
    # The bias-correction mode changes what collect-stats gathers (FastBiasCorrection's input means), so it is
    # in collect-stats' key: switching it either way collects again.
    CALLS.clear()
    third = pipeline.run_pipeline(_cfg(tmp_path, str(out), fast_bias_correction=False))
    assert CALLS == Counter({"collect-stats": 1, "quantize": 1, "validate": 1, "export-ir": 1})
    assert third["build-calibration"].digest == first["build-calibration"].digest
    assert json.loads((out / "quantize" / "summary.json").read_text()) == {"fast": False}
    CALLS.clear()
    pipeline.run_pipeline(_cfg(tmp_path, str(out), fast_bias_correction=True))
    assert CALLS == Counter({"collect-stats": 1, "quantize": 1, "validate": 1, "export-ir": 1})
    CALLS.clear()
    pipeline.run_pipeline(_cfg(tmp_path, str(out), fast_bias_correction=True), force=True)
    assert sum(CALLS.values()) == 5


def test_statistics_key_ignores_apply_fields_but_not_what_is_collected(tmp_path):
    base = _cfg(tmp_path, "o")
    other = base.model_copy(deep=True)
    other.quantization.advanced.bias_correction_threshold = 9.0
    assert collect_stats.config_section(other) == collect_stats.config_section(base)
    assert quantize.config_section(other) != quantize.config_section(base)
    for field, value in (("fast_bias_correction", False), ("advanced.disable_bias_correction", True)):
        changed = base.model_copy(deep=True)
        target = changed.quantization.advanced if "." in field else changed.quantization
        setattr(target, field.split(".")[-1], value)
        assert collect_stats.config_section(changed) != collect_stats.config_section(base), field
    other = base.model_copy(deep=True)
    other.quantization.subset_size = 7
    assert collect_stats.config_section(other) != collect_stats.config_section(base)


def test_gate_failure_stops_chain_after_publishing_report(tmp_path, stand_ins):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, str(out))
    cfg.validation.gate.min_cosine = 0.995
    with pytest.raises(GateFailedError, match="min_cosine"):
        pipeline.run_pipeline(cfg)
    assert (out / "validate" / "report.json").is_file() and read_manifest(out / "validate") is not None
    assert not (out / "export-ir").exists() and CALLS["export-ir"] == 0
    # The cached failing verdict fails the same way without rerunning validate.
    with pytest.raises(GateFailedError, match="cached"):
        pipeline.run_pipeline(cfg)
    assert CALLS["validate"] == 1


def test_failed_step_leaves_no_output(tmp_path, stand_ins, monkeypatch):
    out = tmp_path / "run"

    def explode(ins, out_dir, cfg):
        (out_dir / "statistics.npz").write_bytes(b"half")
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(stand_ins["collect-stats"], "run",
                        lambda ins, o, c: explode(ins, o, c))
    with pytest.raises(RuntimeError):
        pipeline.run_pipeline(_cfg(tmp_path, str(out)))
    assert not (out / "collect-stats").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial directories left


@pytest.fixture(scope="module")
def moto_endpoint():
    with s3server.moto_server() as endpoint:
        yield endpoint


def test_chain_on_s3_with_moto(tmp_path, stand_ins, moto_endpoint, monkeypatch):
    for key, value in s3server.s3_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    storage.s3_client().create_bucket(Bucket="chain")
    first = pipeline.run_pipeline(_cfg(tmp_path, "s3://chain/runs/a"))
    keys = {o["Key"] for o in storage.s3_client().list_objects_v2(Bucket="chain")["Contents"]}
    assert {f"runs/a/{s}/manifest.json" for s in pipeline.STEP_MODULES} <= keys
    assert "runs/a/export-ir/model.xml" in keys
    CALLS.clear()
    second = pipeline.run_pipeline(_cfg(tmp_path, "s3://chain/runs/a", advanced={"bias_correction_threshold": 5.0}))
    assert CALLS == Counter({"quantize": 1, "validate": 1, "export-ir": 1})
    assert second["collect-stats"].digest == first["collect-stats"].digest
    with pytest.raises(StorageError, match="s3://missing-bucket/x"):
        pipeline.run_pipeline(_cfg(tmp_path, "s3://missing-bucket/x"))


def test_dynamic_quantization_skips_collect_stats(tmp_path, stand_ins):
    manifests = pipeline.run_pipeline(_cfg(tmp_path, str(tmp_path / "run"), static=False))
    assert "collect-stats" not in manifests and CALLS["collect-stats"] == 0
    assert CALLS["quantize"] == 1 and not (tmp_path / "run" / "collect-stats").exists()
    assert "statistics" not in read_manifest(tmp_path / "run" / "quantize").inputs


def test_qoperator_skips_export_ir(tmp_path, stand_ins):
    manifests = pipeline.run_pipeline(_cfg(tmp_path, str(tmp_path / "run"), quant_format="qoperator"))
    assert "export-ir" not in manifests and CALLS["export-ir"] == 0 and CALLS["validate"] == 1
