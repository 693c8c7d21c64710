"""What report.html costs: the Jinja2 + matplotlib renderer against the hand-built one it replaced, side by side.

    PYTHONPATH=src python bench/report_render.py [--layers 300] [--reps 5] [--old-ref 9300044]

Loads the old renderer from git (``--old-ref``'s src/ptqflow/pipeline/report/html.py) and renders, alternating,
the same report without decisions with both (like for like), then the new page with ``--layers`` decision rows
(measured errors, bias corrections, float layers). Prints the median CPU time per render, its ratio to the old one, page sizes,
and the CPU time of a cold start with each renderer (a fresh interpreter importing it and rendering once, which
includes matplotlib's import). CPU time, not wall time: on a shared machine wall time mostly measures the
neighbours.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sample(layers: int) -> dict:
    """A JSON-ready report: two runtimes' speed, ``layers`` validation SQNR rows and as many decision rows."""
    timing = {"latency_ms_median": 2.0, "latency_ms_p90": 2.4, "throughput_per_s": 500.0}
    speed = {rt: {"runtime": rt, "device": "cpu", "fp32": timing, "int8": {**timing, "latency_ms_median": 1.0},
                  "speedup": 2.0} for rt in ("onnxruntime", "openvino")}
    report = {"verdict": "pass", "samples": 100, "labeled": 100, "device": "cpu",
              "gate": [{"name": "min_cosine", "threshold": 0.98, "value": 0.99, "passed": True, "margin": 0.01}],
              "accuracy": {"fp32": {"top1": 0.8}, "int8": {"top1": 0.79}},
              "fidelity": {"logits": {"cosine": 0.99, "sqnr_db": 30.0, "max_abs_error": 0.1}}, "speed": speed,
              "layers": [{"layer": f"conv_{i}", "sqnr_db": 10.0 + i % 30} for i in range(layers)], "config": {}}
    decisions = []
    for i in range(layers):
        row = {"name": f"conv_{i}", "op_type": "Conv", "status": "quantized", "quantized_inputs": [f"t{i}"],
               "weight": {"tensor": f"w{i}", "per_channel": True, "bits": 8}, "output_error": 1e-3 * (i % 17),
               "bias_correction": {"applied": i % 3 > 0, "reason": "", "max_abs_shift": 0.01 * (i % 7),
                                   "shift_norm": 0.02, "bias_norm": 1.0}}
        if i % 25 == 0:
            row = {"name": f"conv_{i}", "op_type": "Conv", "status": "float", "reason": "measured",
                   "decided_by": "error_driven", "measured": {"error_int8": 0.2, "error_float": 0.05, "gain": 0.15,
                                                              "output": "logits", "samples": 8}}
        decisions.append(row)
    return report, decisions


def _load_old(ref: str):
    text = subprocess.run(["git", "show", f"{ref}:src/ptqflow/pipeline/report/html.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_report_html.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_report_html", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def _timed(fn, arg) -> tuple[float, str]:
    """CPU seconds of this process for fn(arg) (wall time on a shared machine mostly measures the neighbours)."""
    t0 = time.process_time()
    page = fn(arg)
    return time.process_time() - t0, page


def _cold(code: str) -> float:
    """CPU seconds (user + system) of a fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--old-ref", default="9300044")
    args = ap.parse_args()
    old, old_path = _load_old(args.old_ref)
    from ptqflow.pipeline.report.html import render

    report, decisions = sample(args.layers)
    render(report)  # warm: imports, font cache
    times = {"old": [], "new": [], "new+decisions": []}
    pages = {}
    for _ in range(args.reps):
        for key, fn, arg in (("old", old.render, report), ("new", render, report),
                             ("new+decisions", render, {**report, "decisions": decisions})):
            t, pages[key] = _timed(fn, arg)
            times[key].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in times:
        print(f"{k:14s} median CPU {med[k] * 1000:8.1f} ms  x{med[k] / med['old']:6.1f} of old  "
              f"page {len(pages[k]):>9,d} B")
    cold_old = statistics.median(_cold(f"import sys; sys.path.insert(0, 'src'); import ptqflow.pipeline.report; "
                                       f"import importlib.util as u; "
                                       f"s = u.spec_from_file_location('o', {str(old_path)!r}); m = u.module_from_spec(s); "
                                       f"s.loader.exec_module(m); sys.path.insert(0, 'bench'); import report_render as b; "
                                       f"m.render(b.sample({args.layers})[0])") for _ in range(3))
    cold_new = statistics.median(_cold(f"import sys; sys.path[:0] = ['src', 'bench']; import report_render as b; "
                                       f"from ptqflow.pipeline.report.html import render; r, d = b.sample({args.layers}); "
                                       f"render({{**r, 'decisions': d}})") for _ in range(3))
    print(f"cold start, CPU of a fresh interpreter importing ptqflow and rendering once: old {cold_old:.2f} s, "
          f"new with decisions {cold_new:.2f} s, difference {cold_new - cold_old:+.2f} s")


if __name__ == "__main__":
    main()
