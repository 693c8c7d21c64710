"""Why the bias-correction guard reverts full BiasCorrection on PP-OCR rec's IR (bench/README.md, IR section).

The IR quantized twice from the same 64 calibration lines (bench/ir_input.py's data: seed 1; 200 validation lines,
seed 2): full BiasCorrection kept (guard off) and no bias correction. On several sample sets, the guard's output
error and its parts: the class-balanced share of changed argmax decisions (what decides), the relative squared
error (tie-breaker), and the plain share of changed argmax decisions; then the task metric on the 200 lines.

    cd bench && PYTHONPATH=../src:. .venv/bin/python ir_bc_guard.py
"""
import tempfile
from pathlib import Path
import numpy as np, openvino as ov
import tasks
from ir_input import _load, _metrics
from ptqflow import api
from ptqflow.config import QuantizationConfig
from ptqflow.quantization.algorithms import output_error as oe
tmp = Path(tempfile.mkdtemp())
task = tasks.TASKS["rec"]()
cal, _ = _load(task, tmp / "cal", task.render(tmp / "cal", 64, seed=1))
val, val_y = _load(task, tmp / "val", task.render(tmp / "val", 200, seed=2))
def q(**adv):
    cfg = QuantizationConfig.model_validate({"subset_size": 64, "fast_bias_correction": False, "advanced": adv})
    return api.quantize_with_config(ov.convert_model(str(task.model_path)), cal, cfg).model
corr, unc = q(bias_correction_guard_samples=0), q(disable_bias_correction=True)
core = ov.Core()
reqs = [core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        for m in (ov.convert_model(str(task.model_path)), unc, corr)]
run = lambda k, ss: [[np.array(v, copy=True) for v in reqs[k].infer(s).values()] for s in ss]
for label, ss in (("fitted 0-12", cal[:12]), ("held-out 12-44", cal[12:44]), ("rest 44-64", cal[44:]), ("all 64", cal), ("val 200", val)):
    refs = run(0, ss)
    err = oe.OutputError(["o"], refs, {"o"}, tie_weight=1e-3)  # the default tie weight
    u, c = run(1, ss), run(2, ss)
    d = lambda outs: oe._disagreement([o[0] for o in outs], [r[0] for r in refs])
    r = lambda outs: oe._relative([o[0] for o in outs], [r[0] for r in refs])
    am = lambda outs: np.mean([np.mean(o[0].argmax(-1) != f[0].argmax(-1)) for o, f in zip(outs, refs)])
    print(f"{label}: guard error {err(u):.4f} -> {err(c):.4f}; balanced disagreement {d(u):.4f} -> {d(c):.4f}; "
          f"relative sq {r(u):.4f} -> {r(c):.4f}; plain argmax disagreement {am(u):.4f} -> {am(c):.4f}")
outs = {k: [[list(reqs[k].infer(s).values())[0]] for s in val] for k in (0, 1, 2)}
for k, name in ((1, "uncorrected"), (2, "corrected")):
    print(name, _metrics(task, outs[k], val_y, outs[0]))
