"""fetch-model from registry URIs and the publish step, against a real MLflow server on loopback."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

import builders
from mlflow_server import register_onnx
from ptqflow.pipeline import runner as pipeline
from ptqflow.config import parse_config
from ptqflow.errors import ConfigError, InputError
from ptqflow.registry.client import parse_registry_uri


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _fetch(uri: str, out, **cfg):
    return pipeline.run_step("fetch-model", {}, str(out), parse_config({"model": uri, **cfg}))


def test_registry_uri_forms():
    assert parse_registry_uri("models:/resnet/3").version == "3"
    assert parse_registry_uri("models:/resnet@champion").alias == "champion"
    for bad in ("models:/resnet", "models:/resnet/latest", "models:/@x", "models:/a/b/c"):
        with pytest.raises(ConfigError, match="models:/<name>/<version>"):
            parse_registry_uri(bad)


def test_fetch_by_version_and_alias_records_the_source(mlflow_client, tmp_path):
    name = _name("fetch")
    model = builders.save(builders.conv_classifier(), tmp_path / "model.onnx")
    v1 = register_onnx(mlflow_client, name, model)
    m = _fetch(f"models:/{name}/{v1.version}", tmp_path / "a")
    reg = m.extra["registry"]
    assert (reg["name"], reg["version"], reg["run_id"]) == (name, "1", v1.run_id)
    assert reg["registry"] == mlflow_client.tracking_uri
    assert (tmp_path / "a" / "model.onnx").read_bytes() == model.read_bytes()

    register_onnx(mlflow_client, name, builders.save(builders.conv_classifier(seed=1), tmp_path / "m2.onnx"))
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    first = _fetch(f"models:/{name}@champion", tmp_path / "b")
    assert first.extra["registry"]["version"] == "1"
    # The alias moves: the cache key changes, so the same output is fetched again with version 2.
    mlflow_client.set_registered_model_alias(name, "champion", "2")
    second = _fetch(f"models:/{name}@champion", tmp_path / "b")
    assert second.extra["registry"]["version"] == "2" and second.cache_key != first.cache_key


def test_fetch_refuses_missing_versions_and_versions_without_onnx(mlflow_client, tmp_path):
    name = _name("noonnx")
    register_onnx(mlflow_client, name, None)
    with pytest.raises(InputError, match="no .onnx artifact"):
        _fetch(f"models:/{name}/1", tmp_path / "a")
    with pytest.raises(InputError, match="not found"):
        _fetch(f"models:/{name}/7", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _data(directory, n=24):
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(directory / f"s{i:02d}.npy", rng.normal(0, 1, (3, 16, 16)).astype(np.float32))
    return directory


@pytest.mark.slow
def test_run_publishes_the_int8_version_once(mlflow_client, tmp_path):
    name = _name("pub")
    v = register_onnx(mlflow_client, name, builders.save(builders.conv_classifier(), tmp_path / "model.onnx"))
    cfg = parse_config({
        "model": f"models:/{name}/{v.version}", "output": str(tmp_path / "out"),
        "quantization": {"subset_size": 16},
        "data": {"source": str(_data(tmp_path / "data")), "validation_size": 8, "preprocess": {"method": "none"}},
        "validation": {"latency_iterations": 2,
                       "gate": {"min_speedup": None, "max_accuracy_drop": None, "min_cosine": 0.5}},
        "registry": {"tracking_uri": mlflow_client.tracking_uri, "alias": "int8-candidate"}})
    manifests = pipeline.run_pipeline(cfg)
    assert list(manifests)[-1] == "publish"
    result = json.loads((tmp_path / "out" / "publish" / "registered.json").read_text())
    assert result["name"] == f"{name}-int8" and result["version"] == "1" and result["created"] is True
    int8 = mlflow_client.get_model_version(f"{name}-int8", "1")
    tags = int8.tags
    assert tags["ptqflow.source_model"] == name and tags["ptqflow.source_version"] == "1"
    assert tags["ptqflow.source_run_id"] == v.run_id and tags["ptqflow.verdict"] == "pass"
    assert tags["ptqflow.version"] and len(tags["ptqflow.config_hash"]) == 16
    assert float(tags["ptqflow.metric.min_cosine"]) >= 0.5
    assert mlflow_client.get_model_version_by_alias(f"{name}-int8", "int8-candidate").version == "1"
    files = {f.path for f in mlflow_client.list_artifacts(int8.run_id, "int8")}
    assert {"int8/model.onnx", "int8/openvino"} <= files
    assert {f.path for f in mlflow_client.list_artifacts(int8.run_id, "report")} >= {"report/report.json",
                                                                                    "report/report.html"}
    # A forced rerun of the whole chain finds the version by its tags instead of registering a duplicate.
    pipeline.run_pipeline(cfg, force=True)
    again = json.loads((tmp_path / "out" / "publish" / "registered.json").read_text())
    assert again["version"] == "1" and again["created"] is False
    assert len(mlflow_client.search_model_versions(f"name='{name}-int8'")) == 1


def test_publish_needs_a_target_name_for_plain_uris(tmp_path):
    from ptqflow.artifacts.manifest import write_manifest
    from ptqflow.pipeline.steps import publish

    dirs = {}
    for n, step, metrics in (("model", "fetch-model", {}), ("quantized", "quantize", {}),
                             ("report", "validate", {"verdict": "pass"}), ("ir", "export-ir", {})):
        d = tmp_path / n
        d.mkdir()
        write_manifest(d, step=step, config={}, inputs={}, metrics=metrics, extra={"source": "/m/model.onnx"})
        dirs[n] = d
    cfg = parse_config({"model": "/m/model.onnx", "registry": {"tracking_uri": "http://127.0.0.1:9"}})
    with pytest.raises(ConfigError, match="registry.target_name"):
        publish.run(dirs, tmp_path / "out", cfg)


def test_fetch_a_registered_openvino_ir(mlflow_client, tmp_path):
    ov = pytest.importorskip("openvino")
    name = _name("fetch-ir")
    xml = tmp_path / "src" / "net.xml"
    xml.parent.mkdir()
    ov.save_model(builders.ov_conv_block(), str(xml))
    version = register_onnx(mlflow_client, name, xml)  # logs the .xml; the .bin goes beside it
    mlflow_client.log_artifact(version.run_id, str(xml.with_suffix(".bin")), "model")
    m = _fetch(f"models:/{name}/{version.version}", tmp_path / "a")
    assert m.extra["format"] == "openvino-ir" and m.extra["registry"]["version"] == version.version
    assert (tmp_path / "a" / "model.bin").read_bytes() == xml.with_suffix(".bin").read_bytes()
