"""Latency of FP32 vs INT8, measured alternately in one run so machine load hits both: OpenVINO (latency and
throughput, ``compare``) and onnxruntime's CPU provider (batch-1 latency on 2 threads, ``compare_ort``, with the
per-op profile of the fused graph on request)."""

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


def side_by_side(fp32_path: Path, int8_paths: dict[str, Path], sample: dict, iters: int, rounds: int = 5) -> dict:
    """Median OpenVINO batch-1 latency (ms, f32 hint) of the FP32 model and of every method's INT8 model, measured
    in turns in one process (the order rotating each round), so that two methods' speedups share one FP32
    baseline and the same machine load: ``{"fp32_latency_ms": ..., "methods": {method: {"int8_latency_ms",
    "latency_speedup"}}}``. A model OpenVINO cannot compile is left out."""
    import openvino as ov

    core = ov.Core()
    compiled = {"fp32": _compile(core, fp32_path, "LATENCY")}
    for method, path in int8_paths.items():
        try:
            compiled[method] = _compile(core, path, "LATENCY")
        except Exception:  # its own speed entry says why
            continue
    names = [p.get_any_name() for p in compiled["fp32"].inputs]
    inputs = {k: v for k, v in sample.items() if k in names}
    per = max(1, iters // rounds)
    keys = list(compiled)
    times: dict[str, list] = {k: [] for k in keys}
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[key] += _latency(compiled[key], inputs, per)
    ms = {k: float(np.median(v) * 1000) for k, v in times.items()}
    return {"fp32_latency_ms": ms["fp32"], "rounds": rounds, "runs_each": per * rounds,
            "methods": {k: {"int8_latency_ms": ms[k], "latency_speedup": ms["fp32"] / ms[k]} for k in keys[1:]}}


def _ort_session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if threads == 1:  # the caller's thread computes: its CPU time is the run's own cost
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare_ort(fp32_path: Path, int8_path: Path, sample: dict, iters: int, threads: int = 2, rounds: int = 5) -> dict:
    """Median batch-1 latency (ms) of both models on onnxruntime's CPU provider, ``threads`` intra-op threads,
    FP32 and INT8 alternating in rounds; ratio fp32/int8 = speedup."""
    sess = {"fp32": _ort_session(fp32_path, threads), "int8": _ort_session(int8_path, threads)}
    names = [i.name for i in sess["fp32"].get_inputs()]
    inputs = {k: v for k, v in sample.items() if k in names}
    for s in sess.values():
        s.run(None, inputs)  # warm-up
    per = max(1, iters // rounds)
    times: dict[str, list] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for key in ("fp32", "int8"):
            for _ in range(per):
                t = time.perf_counter()
                sess[key].run(None, inputs)
                times[key].append(time.perf_counter() - t)
    res = {f"{k}_latency_ms": float(np.median(v) * 1000) for k, v in times.items()}
    # On a loaded machine a run longer than a scheduler slice waits for the other processes, so the median
    # punishes the slower model beyond its own cost; the best run is what each model costs by itself.
    res.update({f"{k}_best_ms": float(np.min(v) * 1000) for k, v in times.items()})
    res["latency_speedup"] = res["fp32_latency_ms"] / res["int8_latency_ms"]
    res["best_speedup"] = res["fp32_best_ms"] / res["int8_best_ms"]
    res["threads"] = threads
    res.update(_cpu_times(fp32_path, int8_path, inputs, per * rounds, rounds))
    return res


def _cpu_times(fp32_path: Path, int8_path: Path, inputs: dict, iters: int, rounds: int) -> dict:
    """Median CPU time (ms) of a batch-1 run on one thread, FP32 and INT8 alternating: the thread's CPU time
    (time.thread_time) does not count the time other processes hold the core, so on a shared machine it is each
    model's own cost where wall-clock latency is not."""
    sess = {"fp32": _ort_session(fp32_path, 1), "int8": _ort_session(int8_path, 1)}
    for s in sess.values():
        s.run(None, inputs)
    times: dict[str, list] = {"fp32": [], "int8": []}
    for _ in range(rounds):
        for key in ("fp32", "int8"):
            for _ in range(max(1, iters // rounds)):
                t = time.thread_time()
                sess[key].run(None, inputs)
                times[key].append(time.thread_time() - t)
    res = {f"{k}_cpu_ms": float(np.median(v) * 1000) for k, v in times.items()}
    res["cpu_speedup"] = res["fp32_cpu_ms"] / res["int8_cpu_ms"]
    return res


def ort_profile(path: Path, sample: dict, iters: int = 20, threads: int = 2, top: int = 12) -> list[dict]:
    """onnxruntime's profiler on ``path`` (the fused, optimized graph): per op type, total kernel time (ms per
    run) and node count, largest first."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sess = _ort_session(path, threads, profile=os.path.join(tmp, "prof"))
        names = [i.name for i in sess.get_inputs()]
        inputs = {k: v for k, v in sample.items() if k in names}
        sess.run(None, inputs)
        for _ in range(iters):
            sess.run(None, inputs)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        d = per_op.setdefault(op, {"op": op, "ms": 0.0, "nodes": set()})
        d["ms"] += e["dur"] / 1000 / (iters + 1)
        d["nodes"].add(e["name"])
    rows = sorted(per_op.values(), key=lambda d: -d["ms"])[:top]
    return [{"op": d["op"], "ms_per_run": round(d["ms"], 3), "nodes": len(d["nodes"])} for d in rows]
