"""Candidate decision measures for the bias-correction guard (issue 20 item 3), on PP-OCR rec's ONNX and IR paths
with full BiasCorrection on (guard off) and off, every model run on OpenVINO (CPU, f32): the class-balanced share
of changed argmax frames (the guard's deciding measure today), the plain share, and the share of lines whose
decoded sequence changes (argmax per frame, repeats collapsed, FP32's most frequent class dropped as CTC blank),
on bench/ir_input.py's data (64 calibration lines, seed 1: the 12 fitted, 32 held out, 20 others; 200 validation
lines, seed 2), beside exact match on the 200 lines (bench/README.md, IR input).

    cd bench && PYTHONPATH=../src:. .venv/bin/python guard_measures.py
"""
import tempfile
from pathlib import Path
import numpy as np
import onnx
import openvino as ov
import tasks
from ir_input import _load, _metrics
from ptqflow import api
from ptqflow.config import QuantizationConfig
from ptqflow.quantization.algorithms import output_error as oe
tmp = Path(tempfile.mkdtemp())
task = tasks.TASKS["rec"]()
cal, _ = _load(task, tmp / "cal", task.render(tmp / "cal", 64, seed=1))
val, val_y = _load(task, tmp / "val", task.render(tmp / "val", 200, seed=2))
core = ov.Core()
fp32 = core.compile_model(core.read_model(str(task.model_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
def run(req, ss): return [np.array(list(req.infer(s).values())[0], copy=True) for s in ss]
refs = {"fit": run(fp32, cal[:12]), "held": run(fp32, cal[12:44]), "rest": run(fp32, cal[44:]), "val": run(fp32, val)}
sets = {"fit": cal[:12], "held": cal[12:44], "rest": cal[44:], "val": val}
blank = np.bincount(np.concatenate([r.argmax(-1).ravel() for r in refs["val"]])).argmax()
def decode(a):
    out = []
    for seq in a.argmax(-1).reshape(a.shape[0], -1) if a.ndim == 3 else [a.argmax(-1)]:
        prev, s = None, []
        for c in seq:
            if c != prev and c != blank: s.append(int(c))
            prev = c
        out.append(tuple(s))
    return out
def measures(outs, ref):
    bal = oe._disagreement(outs, ref)
    plain = np.mean(np.concatenate([(o.argmax(-1) != r.argmax(-1)).ravel() for o, r in zip(outs, ref)]))
    seq = np.mean([a != b for o, r in zip(outs, ref) for a, b in zip(decode(o), decode(r))])
    return bal, plain, seq
for path in ("onnx", "ir"):
    models = {}
    for label, adv in (("off", {"disable_bias_correction": True}), ("on", {"bias_correction_guard_samples": 0})):
        cfg = QuantizationConfig.model_validate({"subset_size": 64, "fast_bias_correction": False, "advanced": adv})
        src = str(task.model_path) if path == "onnx" else ov.convert_model(str(task.model_path))
        m = api.quantize_with_config(src, cal, cfg).model
        if path == "onnx":
            f = tmp / f"{label}.onnx"
            onnx.save(m, f)
            m = core.read_model(str(f))
        models[label] = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    for name, ss in sets.items():
        r = [measures(run(models[k], ss), refs[name]) for k in ("off", "on")]
        print(f"{path} {name:4s} (n={len(ss)}): balanced {r[0][0]:.4f} -> {r[1][0]:.4f}; plain {r[0][1]:.4f} -> {r[1][1]:.4f}; "
              f"sequences changed {r[0][2]:.3f} -> {r[1][2]:.3f}", flush=True)
    for k in ("off", "on"):
        print(path, k, _metrics(task, [[o] for o in run(models[k], val)], val_y, [[o] for o in refs["val"]]), flush=True)
