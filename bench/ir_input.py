"""IR input against ONNX input (issue 22), side by side in one process: the PP-OCR classifier quantized by
ptqflow from its ONNX file and from its IR (ov.convert_model of the same file), then both INT8 models and the
FP32 model run on OpenVINO CPU on rendered validation crops.

Prints quantization time (each path twice, alternating, median), accuracy, FakeQuantize/QDQ counts and the
OpenVINO INT8/FP32 throughput ratio of each. Usage:
    PYTHONPATH=src:bench bench/.venv/bin/python bench/ir_input.py [--calibration 64] [--validation 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
from PIL import Image

import tasks
import transforms
from ptqflow import api
from ptqflow.config import QuantizationConfig


def _load(folder: Path, truth: dict) -> tuple[list[dict], list[str]]:
    names = sorted(truth)
    return [{"x": transforms.cls(Image.open(folder / n))[None]} for n in names], [truth[n] for n in names]


def _throughput(compiled, sample: dict, seconds: float = 2.0) -> float:
    request, n, start = compiled.create_infer_request(), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        request.infer(sample)
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--validation", type=int, default=200)
    args = ap.parse_args()
    task = tasks.Cls()
    with tempfile.TemporaryDirectory() as tmp:
        cal, val = Path(tmp) / "cal", Path(tmp) / "val"
        cal_x, _ = _load(cal, task.render(cal, args.calibration, seed=1))
        val_x, val_y = _load(val, task.render(val, args.validation, seed=2))
        config = QuantizationConfig(subset_size=args.calibration)
        times: dict[str, list[float]] = {"onnx": [], "ir": []}
        results = {}
        for _ in range(2):
            for path in ("onnx", "ir"):
                model = str(task.model_path) if path == "onnx" else ov.convert_model(str(task.model_path))
                start = time.perf_counter()
                results[path] = api.quantize_with_config(model, cal_x, config)
                times[path].append(time.perf_counter() - start)
        onnx.save(results["onnx"].model, Path(tmp) / "q.onnx")
        core = ov.Core()
        models = {"fp32": core.compile_model(ov.convert_model(str(task.model_path)), "CPU"),
                  "onnx": core.compile_model(ov.convert_model(str(Path(tmp) / "q.onnx")), "CPU"),
                  "ir": core.compile_model(results["ir"].model, "CPU")}
        fps = {k: _throughput(c, val_x[0]) for k, c in models.items()}
        for k, compiled in models.items():
            outputs = [[compiled(s)[0]] for s in val_x]
            metric = task.metrics(outputs, val_y)["accuracy"]
            line = f"{k:5s} accuracy {metric:.4f}  OpenVINO CPU {fps[k]:.0f}/s ({fps[k] / fps['fp32']:.2f}x fp32)"
            if k != "fp32":
                line += f"  quantize {statistics.median(times[k]):.2f}s"
            print(line)
        dq = sum(n.op_type == "DequantizeLinear" for n in results["onnx"].model.graph.node)
        fq = sum(n.get_type_name() == "FakeQuantize" for n in results["ir"].model.get_ordered_ops())
        print(f"ONNX QDQ pairs (DequantizeLinear) {dq}, IR FakeQuantize {fq}; quantize time IR/ONNX "
              f"{statistics.median(times['ir']) / statistics.median(times['onnx']):.2f}")


if __name__ == "__main__":
    sys.exit(main())
