"""IR input against ONNX input (issue 22), side by side in one process: a bench model quantized by ptqflow from
its ONNX file and from its IR (ov.convert_model of the same file), then the FP32 model and both INT8 models run
on OpenVINO CPU on rendered validation samples.

Per model: quantization time of each path (run twice, alternating, median) and their ratio, the task metric,
FakeQuantize vs QDQ counts, and each INT8 model's OpenVINO speedup over FP32 at f32 (bench/speed.py, measured
alternately). Usage:
    PYTHONPATH=src:bench bench/.venv/bin/python bench/ir_input.py [--tasks cls,rec] [--calibration 64]
        [--validation 200] [--speed-iters 200] [--speed-rounds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import openvino as ov
from PIL import Image

import speed
import tasks
import transforms
from ptqflow import api
from ptqflow.config import QuantizationConfig


def _load(task, folder: Path, truth: dict) -> tuple[list[dict], list]:
    names = sorted(truth)
    prep = getattr(transforms, task.name)
    return [{"x": prep(Image.open(folder / n))[None]} for n in names], [truth[n] for n in names]


def _quantize_both(model_path: Path, samples: list[dict], config: QuantizationConfig) -> tuple[dict, dict]:
    """Results and quantization times of the ONNX and the IR path, each twice, alternating."""
    times: dict[str, list[float]] = {"onnx": [], "ir": []}
    results = {}
    for _ in range(2):
        for path in ("onnx", "ir"):
            model = str(model_path) if path == "onnx" else ov.convert_model(str(model_path))
            start = time.perf_counter()
            results[path] = api.quantize_with_config(model, samples, config)
            times[path].append(time.perf_counter() - start)
    return results, {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, n_cal: int, n_val: int, tmp: Path, iters: int, rounds: int) -> None:
    task = tasks.TASKS[name]()
    cal_x, _ = _load(task, tmp / f"{name}-cal", task.render(tmp / f"{name}-cal", n_cal, seed=1))
    val_x, val_y = _load(task, tmp / f"{name}-val", task.render(tmp / f"{name}-val", n_val, seed=2))
    results, times = _quantize_both(task.model_path, cal_x, QuantizationConfig(subset_size=n_cal))
    paths = {"fp32": Path(task.model_path), "onnx": tmp / f"{name}-q.onnx", "ir": tmp / f"{name}-q.xml"}
    onnx.save(results["onnx"].model, paths["onnx"])
    ov.save_model(results["ir"].model, str(paths["ir"]))  # int8-compressed weights
    core = ov.Core()
    for key, path in paths.items():
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        metrics = task.metrics([[compiled(s)[0]] for s in val_x], val_y)
        line = f"{name} {key:5s} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if key != "fp32":
            ratio = speed.compare(paths["fp32"], path, val_x[0], iters=iters, rounds=rounds)
            line += (f"  quantize {times[key]:.2f}s  OpenVINO speedup latency {ratio['latency_speedup']:.2f}x "
                     f"throughput {ratio['throughput_speedup']:.2f}x")
        print(line, flush=True)
    dq = sum(n.op_type == "DequantizeLinear" for n in results["onnx"].model.graph.node)
    fq = sum(n.get_type_name() == "FakeQuantize" for n in results["ir"].model.get_ordered_ops())
    print(f"{name} ONNX DequantizeLinear {dq}, IR FakeQuantize {fq}; quantize time IR/ONNX "
          f"{times['ir'] / times['onnx']:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="cls,rec")
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--validation", type=int, default=200)
    ap.add_argument("--speed-iters", type=int, default=200, help="inferences per model for the speed ratio")
    ap.add_argument("--speed-rounds", type=int, default=10, help="alternations of FP32 and INT8 (noise)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            bench(name, args.calibration, args.validation, Path(tmp), args.speed_iters, args.speed_rounds)


if __name__ == "__main__":
    main()
