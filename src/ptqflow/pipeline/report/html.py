"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network resources), rendered from
report.json's data by a Jinja2 template (``templates/report.html.j2``, autoescaped: every name and reason
from a model is text, never markup) with matplotlib charts (``plots``)."""

from __future__ import annotations

import json

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup

from ptqflow.pipeline.report import decisions as D
from ptqflow.pipeline.report import plots
from ptqflow.pipeline.report.plots import FAIL_COLOUR, FP32_COLOUR, INT8_COLOUR, PASS_COLOUR  # noqa: F401 (tests)

_ENV = Environment(loader=PackageLoader("ptqflow.pipeline.report", "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True), trim_blocks=True,
                   lstrip_blocks=True, keep_trailing_newline=True)


def fmt(value) -> str:
    """A table cell: floats to 4 significant digits, nothing for a missing value, anything else as text."""
    if value is None or isinstance(value, Undefined):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_ENV.filters["fmt"] = fmt


def _num(v) -> float:
    return v if isinstance(v, (int, float)) else 0.0


def _speed_rows(speed: dict) -> list[list]:
    """The speed table: one row per runtime, and one more where OpenVINO's FP32 default precision differs."""
    rows = []
    for rt, sp in speed.items():
        note = f" (FP32 INFERENCE_PRECISION_HINT={sp['fp32_inference_precision']})" if "fp32_inference_precision" in sp else ""
        rows.append([f"{rt} on {sp['device']}{note}", sp["fp32"]["latency_ms_median"], sp["int8"]["latency_ms_median"],
                     sp["fp32"]["latency_ms_p90"], sp["int8"]["latency_ms_p90"], sp["fp32"]["throughput_per_s"],
                     sp["int8"]["throughput_per_s"], sp["speedup"]])
        if "default_precision" in sp:
            d = sp["default_precision"]
            rows.append([f"{rt} on {sp['device']} (FP32 at the device's default precision, {d['fp32_inference_precision']})",
                         d.get("fp32_latency_ms_median", "-"), d.get("int8_latency_ms_median", "-"), "-", "-", "-", "-",
                         d["speedup"]])
    return rows


def _decision_context(report: dict) -> dict:
    """The template's decision tables, charts and ignored_scope snippets (empty without ``decisions``)."""
    summary = report.get("decisions") or []
    rows = D.layer_rows(summary, report.get("layers"))
    bias = D.bias_rows(summary)
    names = D.float_names(summary)
    charts = {"error": plots.error_chart(rows), "bias": plots.bias_chart(bias)}
    return {"decisions": rows, "columns": D.columns(rows), "bias": bias, "counts": D.counts(summary), "float_names": names,
            "scope_python": D.ignored_scope_python(names), "scope_yaml": D.ignored_scope_yaml(names),
            "unscoped": D.unscoped_tensors(summary), "charts": charts}


def render(report: dict) -> str:
    """The whole HTML page for a JSON-ready report dict (``report.json``'s content)."""
    acc = report.get("accuracy") or {}
    accuracy = [{"metric": k, "fp32": v, "int8": acc["int8"].get(k), "drop": _num(v) - _num(acc["int8"].get(k))}
                for k, v in (acc.get("fp32") or {}).items()]
    ctx = _decision_context(report)
    charts = {k: Markup(v) for k, v in ctx.pop("charts").items() if v}  # matplotlib's SVG: escaped by its writer
    charts["latency"] = Markup(plots.latency_chart(report["speed"]))
    if report.get("layers"):
        charts["sqnr"] = Markup(plots.sqnr_chart(report["layers"]))
    return _ENV.get_template("report.html.j2").render(
        r=report, ok=report["verdict"] == "pass", pass_colour=PASS_COLOUR, fail_colour=FAIL_COLOUR,
        tolerance_note=any("tolerance" in c for c in report["gate"]), accuracy=accuracy,
        speed=_speed_rows(report["speed"]), charts=charts, config_json=json.dumps(report["config"], indent=2), **ctx)
