"""onnxruntime speed of the INT8 models a bench run left in its work directory, measured again side by side with
the FP32 model: batch-1 latency on 2 threads (median and best run) and the one-thread CPU time per run, which a
shared machine does not distort. One JSON line per method.

Usage: ort_speed.py WORK_DIR MODEL [METHOD ...] [--iters N]   (e.g. ort_speed.py bench/.work rec ptqflow_ort ort_qop)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnxruntime as ort

ort.set_default_logger_severity(3)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import speed  # noqa: E402
from run import TASKS  # noqa: E402  (the PP-OCR tasks and the families)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("model")
    ap.add_argument("methods", nargs="*")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--profile", action="store_true", help="also onnxruntime's per-op profile of each model")
    args = ap.parse_args()
    from ptqflow.data.shards import iter_samples

    mwork = Path(args.work) / args.model
    task = TASKS[args.model]() if args.model != "encoder" else __import__("encoder").Encoder(Path(args.work))
    sample = next(iter(iter_samples(mwork / "data", "validation")))
    methods = args.methods or sorted(p.stem for p in mwork.glob("*.onnx"))
    if args.profile:
        print(json.dumps({"model": args.model, "method": "fp32",
                          "ort_profile": speed.ort_profile(Path(task.model_path), sample)}), flush=True)
    for method in methods:
        res = {"model": args.model, "method": method,
               **speed.compare_ort(Path(task.model_path), mwork / f"{method}.onnx", sample, args.iters)}
        if args.profile:
            res["ort_profile"] = speed.ort_profile(mwork / f"{method}.onnx", sample)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
