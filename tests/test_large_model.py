"""A model over 2 GB through the whole pipeline, as a new user runs it (issue 24).

The model (tests/large_models.py: 9 MatMul+Add layers of 8192x8192 float32 = 2.25 GiB, external data) cannot be
serialized as one protobuf, so every session and every saved model on the way must take the large-model path
(ptqflow.runtime.model_files). `ptqflow run` runs in a subprocess whose peak RSS is measured; the limit is the
issue's (the test must fit a 24 GB machine), not a performance target: bench/large_model.py records the figures
per step (bench/README.md, "Models over 2 GB").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import large_models

pytestmark = pytest.mark.slow

GIB = 2**30
RSS_LIMIT = 12 * GIB
STEPS = ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir")


def run_measured(argv: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in bytes) of one process (and the children it waited for)."""
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    (log.parent / "stdout.json").write_text(out)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024.0


def test_ptqflow_run_on_a_model_over_2_gb(tmp_path):
    model = large_models.large_mlp(tmp_path / "model")
    weights = model.parent / large_models.DATA_FILE
    assert weights.stat().st_size > 2**31  # over protobuf's limit: no single-file form exists
    data = large_models.calibration_data(tmp_path / "data", 40)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    argv = [sys.executable, "-m", "ptqflow.cli", "run", "--model", str(model), "--data", str(data), "--output", str(out),
            "--subset-size", "30", "--validation-size", "10",
            # fewer timed runs than the default 50: the timings are not under test, each costs a 2 GB pass
            "--set", "validation.latency_iterations=3"]
    code, seconds, rss = run_measured(argv, env, tmp_path / "run.log")
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log[-3000:]
    print(f"ptqflow run: {seconds:.0f} s, peak RSS {rss / GIB:.2f} GiB "
          f"({rss / (weights.stat().st_size + model.stat().st_size):.2f}x the model)")
    assert rss < RSS_LIMIT, f"peak RSS {rss / GIB:.2f} GiB"
    for step in STEPS:
        assert (out / step / "manifest.json").is_file(), f"{step} left no manifest"

    # The INT8 model loads with whatever external data it has and runs.
    int8_path = out / "quantize" / "model.onnx"
    int8 = onnx.load(str(int8_path))
    assert sum(n.op_type == "DequantizeLinear" for n in int8.graph.node) >= 9
    del int8
    import onnxruntime as ort

    x = np.load(data / "x.npy")[:1]
    (y,) = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == (1, 8192) and np.isfinite(y).all()

    report = json.loads((out / "validate" / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert min(f["cosine"] for f in report["fidelity"].values()) > 0.99
    assert (out / "export-ir" / "model.xml").is_file() and (out / "export-ir" / "model.bin").stat().st_size > 0
