"""Models over 2 GB: build the issue's model (MatMul+Add layers of 8192x8192 float32 with external data, 9
layers = 2.25 GiB) and run the pipeline's steps on it, each as its own `ptqflow <step>` process, recording
every step's wall time and peak RSS (as GiB and as a multiple of the model's size).

    bench/.venv/bin/python bench/large_model.py [--layers 9] [--work DIR] [--keep]

Prints one JSON object; bench/README.md ("Models over 2 GB") records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

import large_models  # noqa: E402

PTQFLOW = [sys.executable, "-m", "ptqflow.cli"]
STEPS = [  # (step, its inputs as (flag, producing step) or the data/model URI)
    ("fetch-model", [("--model", "@model")]),
    ("build-calibration", [("--in-model", "fetch-model"), ("--data", "@data")]),
    ("collect-stats", [("--in-model", "fetch-model"), ("--in-calibration", "build-calibration")]),
    ("quantize", [("--in-model", "fetch-model"), ("--in-calibration", "build-calibration"),
                  ("--in-statistics", "collect-stats")]),
    ("validate", [("--in-model", "fetch-model"), ("--in-quantized", "quantize"),
                  ("--in-calibration", "build-calibration")]),
    ("export-ir", [("--in-quantized", "quantize"), ("--in-model", "fetch-model"),
                   ("--in-calibration", "build-calibration")]),
]


def run_step(argv: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak RSS in bytes, stderr tail) of one step's process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss * 1024.0, err[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ptqflow-large-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        model = large_models.large_mlp(work / "model", layers=args.layers)
        large_models.calibration_data(work / "data", 40)
        size = model.stat().st_size + (model.parent / large_models.DATA_FILE).stat().st_size
        built = time.perf_counter() - t0
        config = work / "config.yaml"
        config.write_text("quantization:\n  subset_size: 30\ndata:\n  validation_size: 10\n")
        env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
        out = work / "out"
        rows = []
        for step, inputs in STEPS:
            argv = [*PTQFLOW, step, "--config", str(config), "--output", str(out / step)]
            for flag, src in inputs:
                argv += [flag, str(model if src == "@model" else work / "data" if src == "@data" else out / src)]
            code, wall, rss, err = run_step(argv, env)
            rows.append({"step": step, "exit": code, "seconds": round(wall, 1), "peak_rss_gib": round(rss / 2**30, 2),
                         "peak_rss_x_model": round(rss / size, 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if code:
                rows[-1]["error"] = err
                break
        print(json.dumps({"model_gib": round(size / 2**30, 3), "layers": args.layers, "build_seconds": round(built, 1),
                          "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "steps": rows}, indent=1))
        return 0 if all(r["exit"] == 0 for r in rows) and len(rows) == len(STEPS) else 1
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
