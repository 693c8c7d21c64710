"""IR input against ONNX input (issue 22), side by side in one process: a bench model quantized by ptqflow from
its ONNX file and from its IR (ov.convert_model of the same file), then the FP32 model and both INT8 models run
on OpenVINO CPU on rendered validation samples; the ONNX path's INT8 model also on onnxruntime.

Per model: quantization time of each path (run twice, alternating, median) and their ratio, the task metric,
FakeQuantize vs QDQ counts, each INT8 model's OpenVINO speedup over FP32 at f32 (bench/speed.py, measured
alternately), and what the error-driven mixed-precision search kept float on each path, with its summary. The models: PP-OCR cls, rec and det, and the encoder (all-MiniLM-L6-v2, exported by the bench,
quantized as a transformer as the bench's other methods are). Usage:
    PYTHONPATH=src:bench bench/.venv/bin/python bench/ir_input.py [--tasks cls,rec,det,encoder] [--calibration 64]
        [--validation 200] [--speed-iters 200] [--speed-rounds 10] [--full-bc] [--work DIR]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import openvino as ov
from PIL import Image

import speed
import tasks
import transforms
from encoder import Encoder
from ptqflow import api
from ptqflow.config import ModelType, QuantizationConfig


def _load(task, folder: Path, truth: dict) -> tuple[list[dict], list]:
    """The model inputs of the rendered items in ``folder`` (the package's own preprocessing) and what the task's
    metrics compare them with: the truth, or for the encoder each sentence's attention mask."""
    if task.kind == "encoder":
        samples = [transforms.encoder(line) for line in (folder / "sentences.txt").read_text().splitlines() if line]
        return samples, task.labels(samples, [], truth)
    names = sorted(truth)
    prep = getattr(transforms, task.name)
    batched = task.kind == "det"  # DetPreProcess adds the batch dim itself
    return [{"x": prep(Image.open(folder / n)) if batched else prep(Image.open(folder / n))[None]}
            for n in names], [truth[n] for n in names]


def _metrics(task, outputs: list, labels: list, refs: list) -> dict:
    """The task's metrics; det and the encoder also measure agreement with the FP32 outputs ``refs``."""
    return task.metrics(outputs, labels) if task.kind in ("cls", "rec") else task.metrics(outputs, labels, refs)


class _SearchLines(logging.Handler):
    """Keeps the mixed-precision pass's summary lines (errors all int8 and after, evaluations, why it stopped)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("mixed_precision: output error"):
            _SEARCH.append(message.removeprefix("mixed_precision: "))


_SEARCH: list[str] = []
logging.getLogger("ptqflow").addHandler(_SearchLines())
logging.getLogger("ptqflow").setLevel(logging.INFO)


def _quantize_both(model_path: Path, samples: list[dict], config: QuantizationConfig) -> tuple[dict, dict]:
    """Results and quantization times of the ONNX and the IR path, each twice, alternating."""
    times: dict[str, list[float]] = {"onnx": [], "ir": []}
    results = {}
    for _ in range(2):
        for path in ("onnx", "ir"):
            _SEARCH.clear()
            model = str(model_path) if path == "onnx" else ov.convert_model(str(model_path))
            start = time.perf_counter()
            results[path] = api.quantize_with_config(model, samples, config)
            times[path].append(time.perf_counter() - start)
            results[path].search = list(_SEARCH)  # the last run's search summary
    return results, {k: statistics.median(v) for k, v in times.items()}


def _onnxruntime_line(name: str, task, path: Path, val_x: list[dict], val_y: list, refs: list) -> None:
    """The ONNX path's INT8 model on onnxruntime (CPU) on the same samples: its metric beside OpenVINO's reading
    of the same file (``refs``: the FP32 model's outputs on OpenVINO)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    outs = [[sess.run(None, {k: v for k, v in s.items() if k in names})[0]] for s in val_x]
    metrics = _metrics(task, outs, val_y, refs)
    print(f"{name} onnx on onnxruntime " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


def bench(name: str, args, tmp: Path) -> None:
    task = Encoder(args.work) if name == "encoder" else tasks.TASKS[name]()
    n_cal, n_val = args.calibration, args.validation
    if name == "det":  # a det inference costs ~20x a cls one on two cores (bench/run.py caps it likewise)
        n_cal, n_val = min(n_cal, 64), min(n_val, 40)
    cal_x, _ = _load(task, tmp / f"{name}-cal", task.render(tmp / f"{name}-cal", n_cal, seed=1))
    val_x, val_y = _load(task, tmp / f"{name}-val", task.render(tmp / f"{name}-val", n_val, seed=2))
    config = QuantizationConfig(subset_size=n_cal, fast_bias_correction=not args.full_bc,
                                model_type=ModelType.TRANSFORMER if name == "encoder" else None)
    results, times = _quantize_both(task.model_path, cal_x, config)
    paths = {"fp32": Path(task.model_path), "onnx": tmp / f"{name}-q.onnx", "ir": tmp / f"{name}-q.xml"}
    onnx.save(results["onnx"].model, paths["onnx"])
    ov.save_model(results["ir"].model, str(paths["ir"]))  # int8-compressed weights
    core = ov.Core()
    refs = None
    for key, path in paths.items():
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        names = {p.get_any_name() for p in compiled.inputs}
        outs = [[compiled({k: v for k, v in s.items() if k in names})[0]] for s in val_x]
        refs = outs if key == "fp32" else refs
        metrics = _metrics(task, outs, val_y, refs)
        line = f"{name} {key:5s} " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        if key != "fp32":
            ratio = speed.compare(paths["fp32"], path, val_x[0], iters=args.speed_iters, rounds=args.speed_rounds)
            line += (f"  quantize {times[key]:.2f}s  OpenVINO speedup latency {ratio['latency_speedup']:.2f}x "
                     f"throughput {ratio['throughput_speedup']:.2f}x")
        print(line, flush=True)
    _onnxruntime_line(name, task, paths["onnx"], val_x, val_y, refs)
    dq = sum(n.op_type == "DequantizeLinear" for n in results["onnx"].model.graph.node)
    fq = sum(n.get_type_name() == "FakeQuantize" for n in results["ir"].model.get_ordered_ops())
    floats = {k: sum(row["status"] == "float" for row in r.layers) for k, r in results.items()}
    print(f"{name} ONNX DequantizeLinear {dq}, IR FakeQuantize {fq}; float layers ONNX {floats['onnx']}, IR "
          f"{floats['ir']}; quantize time IR/ONNX {times['ir'] / times['onnx']:.2f}", flush=True)
    for key, r in results.items():
        print(f"{name} {key} kept float by mixed precision: {_decisions(r.plan)}; search: {r.search}", flush=True)
    if args.full_bc:
        _compare_shifts(name, results)


def _decisions(plan) -> str:
    """The mixed-precision search's float decisions in ``plan`` (tensor, or layer and its weight, with the measured
    gain and the output that drove it)."""
    found = [(f.tensor, f.measured) for f in plan.float_tensors if f.by == "mixed_precision"]
    found += [(f"layer {f.node}", f.measured) for f in plan.float_layers if f.by == "mixed_precision"]
    return "; ".join(f"{what} gain {m['gain']:.4g} ({m['error_int8']:.4g} -> {m['error_float']:.4g}, output "
                     f"{m['output']})" for what, m in found) or "none"


def _compare_shifts(name: str, results: dict) -> None:
    """Full BiasCorrection's shifts of the two paths, layer by layer. A layer of one is the other's with the same FP32
    bias (convert_model orders parallel branches differently and folds some biases into others: those layers have
    no counterpart)."""
    rows = {k: [row["bias_correction"] for row in r.layers if "bias_correction" in row] for k, r in results.items()}
    by_bias = {round(r["bias_norm"], 5): r for r in rows["ir"] if r["bias_norm"]}
    pairs = [(a, by_bias[round(a["bias_norm"], 5)]) for a in rows["onnx"] if a["bias_norm"]
             and round(a["bias_norm"], 5) in by_bias and a["shift_norm"] and by_bias[round(a["bias_norm"], 5)]["shift_norm"]]
    rel = [abs(a["shift_norm"] - b["shift_norm"]) / a["shift_norm"] for a, b in pairs]
    kept = {k: sum(r["applied"] for r in v) for k, v in rows.items()}
    print(f"{name} BiasCorrection layers ONNX {len(rows['onnx'])} IR {len(rows['ir'])}, applied {kept['onnx']} / "
          f"{kept['ir']}; {len(pairs)} layers with the same bias, shift norm IR vs ONNX: median relative difference "
          f"{statistics.median(rel):.4f}, first {min(10, len(rel))} of them max {max(rel[:10]):.4f}, all max "
          f"{max(rel):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="cls,rec")
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--validation", type=int, default=200)
    ap.add_argument("--speed-iters", type=int, default=200, help="inferences per model for the speed ratio")
    ap.add_argument("--speed-rounds", type=int, default=10, help="alternations of FP32 and INT8 (noise)")
    ap.add_argument("--full-bc", action="store_true", help="full BiasCorrection instead of FastBiasCorrection")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work",
                    help="where the encoder's exported ONNX model is kept (encoder/minilm.onnx)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            bench(name, args, Path(tmp))


if __name__ == "__main__":
    main()
