"""OpenVINO latency/throughput of FP32 vs INT8, measured alternately in one run so machine load hits both."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _compile(core, path: Path, hint: str):
    # FP32 baseline pinned to f32 (no bf16/f16 down-conversion), the INT8 model under the same hint.
    return core.compile_model(core.read_model(str(path)), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": hint})


def _latency(compiled, inputs: dict, n: int) -> list[float]:
    req = compiled.create_infer_request()
    req.infer(inputs)  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        req.infer(inputs)
        times.append(time.perf_counter() - t)
    return times


def _throughput(compiled, inputs: dict, n: int) -> float:
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled)
    t = time.perf_counter()
    for _ in range(n):
        queue.start_async(inputs)
    queue.wait_all()
    return n / (time.perf_counter() - t)


def compare(fp32_path: Path, int8_path: Path, sample: dict, iters: int, rounds: int = 5) -> dict:
    """Median latency (ms) and throughput (inferences/s) of both models; ratio fp32/int8 = speedup."""
    import openvino as ov

    core = ov.Core()
    lat = {"fp32": _compile(core, fp32_path, "LATENCY"), "int8": _compile(core, int8_path, "LATENCY")}
    thr = {"fp32": _compile(core, fp32_path, "THROUGHPUT"), "int8": _compile(core, int8_path, "THROUGHPUT")}
    names = [p.get_any_name() for p in lat["fp32"].inputs]
    inputs = {k: v for k, v in sample.items() if k in names}
    per = max(1, iters // rounds)
    times: dict[str, list] = {"fp32": [], "int8": []}
    tps: dict[str, list] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for key in ("fp32", "int8"):
            times[key] += _latency(lat[key], inputs, per)
            tps[key].append(_throughput(thr[key], inputs, per * 2))
    res = {f"{k}_latency_ms": float(np.median(v) * 1000) for k, v in times.items()}
    res.update({f"{k}_throughput": float(np.median(v)) for k, v in tps.items()})
    res["latency_speedup"] = res["fp32_latency_ms"] / res["int8_latency_ms"]
    res["throughput_speedup"] = res["int8_throughput"] / res["fp32_throughput"]
    res["fp32_precision_hint"] = "f32"
    return res
