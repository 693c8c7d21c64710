"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network resources)."""

from __future__ import annotations

import json
from html import escape

PASS_COLOUR = "#1a7f37"
FAIL_COLOUR = "#cf222e"
FP32_COLOUR = "#57606a"
INT8_COLOUR = "#0969da"

_CSS = """body{font-family:sans-serif;margin:24px;color:#24292f}table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #d0d7de;padding:4px 10px;text-align:right}th{background:#f6f8fa}td:first-child{text-align:left}
.banner{color:#fff;font-size:28px;font-weight:bold;padding:18px 24px;border-radius:6px}
pre{background:#f6f8fa;padding:10px;font-size:12px}.bad{color:%s;font-weight:bold}""" % FAIL_COLOUR


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return escape(str(v))


def _num(v) -> float:
    return v if isinstance(v, (int, float)) else 0.0


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(title: str, groups: list[tuple[str, list[tuple[float, str, str]]]], unit: str) -> str:
    """Horizontal bars: per group label a list of (value, colour, tag) bars, as an inline SVG string (no xmlns
    attribute: HTML5 does not need it, and the page must not mention any network address)."""
    width, bar_h, gap = 760, 18, 14
    height = 40 + sum(len(bars) * bar_h + gap for _, bars in groups) + 20
    top = max([_num(v) for _, bars in groups for v, _, _ in bars] + [1e-9])
    parts = [f'<svg width="{width}" height="{height}" role="img">',
             f'<text x="10" y="20" font-size="15" font-weight="bold">{escape(title)}</text>']
    y = 36
    for label, bars in groups:
        for value, colour, tag in bars:
            w = 480 * _num(value) / top
            parts.append(f'<text x="10" y="{y + 13}" font-size="12">{escape(label)} {tag}</text>')
            parts.append(f'<rect x="220" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            parts.append(f'<text x="{226 + w:.1f}" y="{y + 13}" font-size="12">{_fmt(value)} {escape(unit)}</text>')
            y += bar_h
        y += gap
    return "".join(parts) + "</svg>"


def layer_chart(layers: list[dict]) -> str:
    """Horizontal SQNR bars per quantized layer (lowest first: the candidates for an ignored scope)."""
    rows = sorted(layers, key=lambda r: _num(r["sqnr_db"]) if r["sqnr_db"] != "inf" else 1e9)
    groups = [(r["layer"], [(r["sqnr_db"] if r["sqnr_db"] != "inf" else 99.0, INT8_COLOUR, "")]) for r in rows]
    return bar_chart("Per-layer SQNR (dB), lowest first", groups, "dB")


def render(report: dict) -> str:
    """The whole HTML page for a JSON-ready report dict."""
    ok = report["verdict"] == "pass"
    colour = PASS_COLOUR if ok else FAIL_COLOUR
    s = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ptqflow validation report</title>"
         f"<style>{_CSS}</style></head><body>",
         f'<div class="banner" style="background:{colour}">Gate: {"PASS" if ok else "FAIL"}</div>',
         f"<p>{report['samples']} validation samples ({report.get('labeled', 0)} labeled), device {escape(str(report.get('device')))}.</p>",
         "<h2>Gate</h2>",
         _table(["threshold", "limit", "value", "margin", "result"],
                [[c["name"], c["threshold"], c["value"], c["margin"], "pass" if c["passed"] else "FAIL"]
                 for c in report["gate"]])]
    if any("tolerance" in c for c in report["gate"]):
        s.append("<p>A value equal to its limit passes: each comparison allows the float-rounding tolerance in "
                 "report.json (1e-9 of the limit), and top-k accuracy drops are computed from counts.</p>")
    acc = report.get("accuracy") or {}
    if acc.get("fp32"):
        s += ["<h2>Accuracy</h2>", _table(["metric", "FP32", "INT8", "drop"],
              [[k, v, acc["int8"].get(k), _num(v) - _num(acc["int8"].get(k))] for k, v in acc["fp32"].items()])]
    s += ["<h2>Fidelity to FP32</h2>", _table(["output", "cosine", "SQNR dB", "max abs error", "top-1 agreement"],
          [[n, f["cosine"], f["sqnr_db"], f["max_abs_error"], f.get("top1_agreement", "-")]
           for n, f in report["fidelity"].items()])]
    s.append("<h2>Speed (batch 1, FP32 and INT8 measured alternately)</h2>")
    rows, groups = [], []
    for rt, sp in report["speed"].items():
        note = f" (FP32 INFERENCE_PRECISION_HINT={sp['fp32_inference_precision']})" if "fp32_inference_precision" in sp else ""
        rows.append([f"{rt} on {sp['device']}{note}", sp["fp32"]["latency_ms_median"], sp["int8"]["latency_ms_median"],
                     sp["fp32"]["latency_ms_p90"], sp["int8"]["latency_ms_p90"], sp["fp32"]["throughput_per_s"],
                     sp["int8"]["throughput_per_s"], sp["speedup"]])
        if "default_precision" in sp:
            d = sp["default_precision"]
            rows.append([f"{rt} on {sp['device']} (FP32 at the device's default precision, {d['fp32_inference_precision']})",
                         d.get("fp32_latency_ms_median", "-"), d.get("int8_latency_ms_median", "-"), "-", "-", "-", "-",
                         d["speedup"]])
        for stat in ("median", "p90"):
            key = f"latency_ms_{stat}"
            groups.append((f"{rt} {stat}", [(sp["fp32"][key], FP32_COLOUR, "FP32"), (sp["int8"][key], INT8_COLOUR, "INT8")]))
    s.append(_table(["runtime", "FP32 median ms", "INT8 median ms", "FP32 p90 ms", "INT8 p90 ms", "FP32 /s", "INT8 /s",
                     "speedup (FP32/INT8 latency)"], rows))
    s.append(bar_chart("Latency (ms, lower is better)", groups, "ms"))
    if report.get("layers"):
        s += ["<h2>Per-layer sensitivity</h2>", layer_chart(report["layers"])]
    s += ["<h2>Configuration</h2>", f"<pre>{escape(json.dumps(report['config'], indent=2))}</pre></body></html>"]
    return "".join(s)
