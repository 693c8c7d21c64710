"""build-calibration as a step: manifest, cache-key section, no half-written artifact, s3:// source (moto)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import builders
import s3server
from ptqflow.artifacts import storage
from ptqflow.artifacts.manifest import read_manifest, verify_outputs, write_manifest
from ptqflow.config import PipelineConfig
from ptqflow.data import iter_labeled, read_index
from ptqflow.errors import ConfigError, InputError
from ptqflow.pipeline.steps import build_calibration as step


def _model_artifact(tmp_path):
    d = tmp_path / "model"
    builders.save(builders.mlp(features=4), d / "model.onnx")
    write_manifest(d, step="fetch-model", config={}, inputs={})
    return d


def _cfg(source, **data):
    return PipelineConfig.model_validate(
        {"quantization": {"subset_size": 5, "preset": "mixed"}, "data": {"source": str(source), **data}})


def test_run_writes_shards_index_and_manifest(tmp_path):
    model = _model_artifact(tmp_path)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    out = tmp_path / "out"
    m = step.run({"model": model}, out, _cfg(tmp_path / "d.npy", validation_size=2))
    assert m.metrics == {"calibration": 5, "validation": 2, "skipped": 0, "items": 8, "split": "requested",
                         "split_reason": None}
    assert read_manifest(out).digest == m.digest and verify_outputs(out, m) == []
    assert read_index(out)["counts"] == {"calibration": 5, "validation": 2}
    assert [lbl for _, lbl in iter_labeled(out, "validation")] == [None, None]


def test_config_section_has_data_and_subset_size_only():
    sec = step.config_section(_cfg("x"))
    assert set(sec) == {"data", "subset_size", "validation_size_set"} and sec["subset_size"] == 5
    assert sec["data"]["source"] == "x" and sec["validation_size_set"] is False  # a small data set is split
    other = _cfg("x")
    other.quantization.preset = "performance"
    assert step.config_section(other) == sec  # other quantization fields do not change the cache key


def test_bad_source_leaves_no_files_and_no_manifest(tmp_path):
    model = _model_artifact(tmp_path)
    np.save(tmp_path / "bad.npy", np.zeros((4, 7), np.float32))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"bad.npy.*expected \[None, 4\]"):
        step.run({"model": model}, out, _cfg(tmp_path / "bad.npy", validation_size=0))
    assert list(out.iterdir()) == []
    with pytest.raises(ConfigError, match="data.source"):
        step.run({"model": model}, out, PipelineConfig())


def test_s3_source_is_staged(tmp_path, monkeypatch):
    with s3server.moto_server() as endpoint:
        for key, value in s3server.s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        client = storage.s3_client()
        bucket = f"b{os.urandom(4).hex()}"
        client.create_bucket(Bucket=bucket)
        data = np.arange(24, dtype=np.float32).reshape(6, 4)
        np.save(tmp_path / "d.npy", data)
        client.upload_file(str(tmp_path / "d.npy"), bucket, "sets/a/d.npy")
        out = tmp_path / "out"
        step.run({"model": _model_artifact(tmp_path)}, out, _cfg(f"s3://{bucket}/sets/a", validation_size=1))
    assert read_index(out)["counts"] == {"calibration": 5, "validation": 1}
