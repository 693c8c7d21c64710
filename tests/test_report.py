"""report.json schema and report.html: self-contained, and rendered by headless Chromium as a person sees it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptqflow.pipeline.report import SCHEMA_PATH, write_report
from ptqflow.pipeline.report.html import FAIL_COLOUR, INT8_COLOUR, PASS_COLOUR

jsonschema = pytest.importorskip("jsonschema")
CHROMIUM = "/usr/bin/chromium"


def _timing(ms):
    return {"latency_ms_median": ms, "latency_ms_p90": ms * 1.2, "throughput_per_s": 1000 / ms, "samples_ms": [ms] * 3}


def sample_report(verdict: str = "pass") -> dict:
    speed = {rt: {"runtime": rt, "device": "CPU" if rt == "openvino" else "cpu", "fp32": _timing(2.0),
                  "int8": _timing(1.0), "speedup": 2.0, "latency_ratio_p90": 0.5} for rt in ("onnxruntime", "openvino")}
    speed["openvino"]["fp32_inference_precision"] = "f32"
    return {"verdict": verdict, "samples": 10, "labeled": 10, "device": "cpu",
            "gate": [{"name": "min_cosine", "threshold": 0.98, "value": 0.99 if verdict == "pass" else 0.9,
                      "passed": verdict == "pass", "margin": 0.01 if verdict == "pass" else -0.08}],
            "accuracy": {"output": "logits", "fp32": {"top1": 0.8}, "int8": {"top1": 0.79}},
            "fidelity": {"logits": {"cosine": 0.99, "sqnr_db": float("inf"), "max_abs_error": 0.0, "top1_agreement": 1.0}},
            "speed": speed, "layers": [{"layer": "conv1", "sqnr_db": 31.0}, {"layer": "fc", "sqnr_db": 12.5}],
            "config": {"metric": None, "see": "http://example.invalid/config"}}


def test_report_json_follows_schema_and_html_has_no_network(tmp_path):
    data = write_report(tmp_path, sample_report())
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == data and on_disk["fidelity"]["logits"]["sqnr_db"] == "inf"  # JSON has no Infinity
    jsonschema.validate(on_disk, json.loads(SCHEMA_PATH.read_text()))
    html = (tmp_path / "report.html").read_text()
    # A URL inside the config is shown as text (escaped in <pre>), never as a resource to load.
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"url\((?!#)", html)  # only references inside the page (matplotlib's clip paths)
    assert html.count("<svg") == 2  # latency chart + per-layer chart


def test_schema_rejects_a_broken_report(tmp_path):
    bad = sample_report()
    bad["verdict"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        write_report(tmp_path, bad)
    assert not (tmp_path / "report.json").exists()


def _chromium_or_skip():
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], capture_output=True,
                       timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed and could not be installed with apt-get (needs root)")


def _screenshot(html: Path, tmp_path: Path) -> np.ndarray:
    png = tmp_path / f"{html.parent.name}.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1200,1600",
                    html.as_uri()], capture_output=True, timeout=120, check=False)
    assert png.is_file(), "chromium wrote no screenshot"
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int32)


def _has_colour(img: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i: i + 2], 16) for i in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(img - rgb) <= 6, axis=-1)))


@pytest.mark.slow
@pytest.mark.parametrize("verdict", ["pass", "fail"])
def test_chromium_renders_verdict_and_charts(tmp_path, verdict):
    _chromium_or_skip()
    out = tmp_path / verdict
    out.mkdir()
    write_report(out, sample_report(verdict))
    img = _screenshot(out / "report.html", tmp_path)
    assert img.shape[:2] == (1600, 1200) and img.std() > 20  # not a blank page
    shown, hidden = (PASS_COLOUR, FAIL_COLOUR) if verdict == "pass" else (FAIL_COLOUR, PASS_COLOUR)
    assert _has_colour(img, shown) > 5000  # the verdict banner
    assert _has_colour(img, hidden) < 50
    assert _has_colour(img, INT8_COLOUR) > 500  # chart bars drawn
