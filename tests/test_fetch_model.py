"""fetch-model through the CLI: every accepted model form, and every way a model can be unusable."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import onnx
import pytest

import builders
from ptqflow.artifacts.manifest import read_manifest, verify_outputs
from ptqflow.cli import main


def fetch(tmp_path: Path, source, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "fetched"
    code = main(["fetch-model", "--model", str(source), "--out", str(out), *extra])
    return code, out


def test_single_onnx_records_io_opset_and_sha(tmp_path):
    src = builders.save(builders.conv_classifier(), tmp_path / "src" / "classifier.onnx")
    code, out = fetch(tmp_path, src)
    assert code == 0
    m = read_manifest(out)
    assert m.extra["inputs"] == [{"name": "input", "shape": ["N", 3, 16, 16], "dtype": "float32"}]
    assert m.extra["outputs"] == [{"name": "logits", "shape": ["N", 5], "dtype": "float32"}]
    assert m.extra["opset"] == 17
    assert m.extra["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert verify_outputs(out, m) == []


def test_file_uri_and_sha256_check(tmp_path):
    src = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    code, out = fetch(tmp_path, f"file://{src}", "--model-sha256", good)
    assert code == 0 and read_manifest(out).extra["sha256"] == good
    code, out2 = fetch(tmp_path / "b", src, "--model-sha256", "0" * 64)
    assert code == 3 and not (out2 / "manifest.json").exists()


def _external_model(directory: Path) -> Path:
    model = builders.conv_classifier(channels=16)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "net.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="net.weights", size_threshold=0)
    return path


def test_external_data_directory_is_copied(tmp_path):
    path = _external_model(tmp_path / "ext")
    code, out = fetch(tmp_path, path.parent)
    assert code == 0
    m = read_manifest(out)
    assert m.extra["external_data"] == ["net.weights"]
    assert (out / "net.weights").read_bytes() == (path.parent / "net.weights").read_bytes()
    onnx.checker.check_model(str(out / "model.onnx"))  # references resolve inside the artifact


def test_missing_external_data_is_input_error(tmp_path):
    path = _external_model(tmp_path / "ext")
    (path.parent / "net.weights").unlink()
    code, out = fetch(tmp_path, path)
    assert code == 3 and not out.exists()


def test_zip_and_tar_archives(tmp_path):
    path = _external_model(tmp_path / "ext")
    zpath = tmp_path / "model.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(path, "pkg/net.onnx")
        zf.write(path.parent / "net.weights", "pkg/net.weights")
    code, out = fetch(tmp_path / "z", zpath)
    assert code == 0 and read_manifest(out).extra["external_data"] == ["net.weights"]
    tpath = tmp_path / "model.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        tf.add(path, "net.onnx")
        tf.add(path.parent / "net.weights", "net.weights")
    code, out = fetch(tmp_path / "t", tpath)
    assert code == 0 and (out / "net.weights").is_file()


def test_archive_path_traversal_is_refused(tmp_path, capsys):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(model, "model.onnx")
        zf.writestr("../../escaped.txt", b"gotcha")
    code, out = fetch(tmp_path / "z", zpath)
    assert code == 3 and not out.exists()
    assert "escapes the extraction directory" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escaped.txt"))
    tpath = tmp_path / "evil.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        tf.add(model, "model.onnx")
        link = tarfile.TarInfo("weights.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    code, out = fetch(tmp_path / "t", tpath)
    assert code == 3 and not out.exists()
    assert "link" in capsys.readouterr().err


def test_truncated_and_non_onnx_files(tmp_path, capsys):
    full = builders.save(builders.conv_classifier(), tmp_path / "full.onnx").read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(full[: len(full) // 2])
    code, out = fetch(tmp_path / "a", truncated)
    assert code == 3 and not out.exists()
    assert "truncated.onnx" in capsys.readouterr().err
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    code, out = fetch(tmp_path / "b", text)
    assert code == 3 and not out.exists()


def test_two_models_in_a_directory_is_ambiguous(tmp_path, capsys):
    builders.save(builders.mlp(), tmp_path / "d" / "a.onnx")
    builders.save(builders.mlp(seed=1), tmp_path / "d" / "b.onnx")
    code, _ = fetch(tmp_path, tmp_path / "d")
    assert code == 3
    assert "a.onnx, b.onnx" in capsys.readouterr().err


def test_new_ir_version_is_lowered_for_onnxruntime(tmp_path):
    model = builders.mlp()
    model.ir_version = 12
    src = tmp_path / "ir12.onnx"
    onnx.save(model, str(src))
    code, out = fetch(tmp_path, src)
    assert code == 0
    assert onnx.load(str(out / "model.onnx")).ir_version == 10
    assert read_manifest(out).extra["ir_version_original"] == 12


def test_https_download_with_size_limit(tmp_path, monkeypatch):
    import http.server
    import threading

    src = builders.save(builders.mlp(), tmp_path / "serve" / "mlp.onnx")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(src.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mlp.onnx"
        code, out = fetch(tmp_path / "ok", url)
        assert code == 0 and (out / "model.onnx").read_bytes() == src.read_bytes()
        code, _ = fetch(tmp_path / "missing", url.replace("mlp.onnx", "nope.onnx"))
        assert code == 3
        monkeypatch.setenv("PTQFLOW_MAX_DOWNLOAD_MB", "0")
        code, out = fetch(tmp_path / "big", url, "--force")
        assert code == 3 and not out.exists()
    finally:
        server.shutdown()


def test_cli_prints_json_summary(tmp_path, capsys):
    src = builders.save(builders.mlp(), tmp_path / "m.onnx")
    code, out = fetch(tmp_path, src)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["digest"] == read_manifest(out).digest


def test_unreadable_zip(tmp_path):
    bad = tmp_path / "m.zip"
    bad.write_bytes(io.BytesIO(b"PK\x03\x04 not really").getvalue())
    code, out = fetch(tmp_path, bad)
    assert code == 3 and not out.exists()


def test_sigkill_during_download_leaves_no_manifest_and_rerun_matches(tmp_path):
    """SIGKILL a `ptqflow fetch-model` subprocess while its download stalls; the rerun completes."""
    import http.server
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    payload = builders.save(builders.conv_classifier(), tmp_path / "m.onnx").read_bytes()
    stall = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if stall.is_set():
                self.wfile.write(payload[:100])
                self.wfile.flush()
                time.sleep(60)  # the client is killed while waiting for the rest
                return
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/m.onnx"
    out = tmp_path / "out" / "fm"
    args = [sys.executable, "-m", "ptqflow.cli", "fetch-model", "--model", url, "--out", str(out)]
    try:
        stall.set()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "out").glob(".fm.partial-*")):
            time.sleep(0.02)
        time.sleep(0.5)  # inside the download now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert not out.exists()
        stall.clear()
        assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0
        assert not list((tmp_path / "out").glob(".fm.partial-*"))
        assert main(["fetch-model", "--model", url, "--out", str(tmp_path / "ref")]) == 0
        assert read_manifest(out).digest == read_manifest(tmp_path / "ref").digest
    finally:
        server.shutdown()
