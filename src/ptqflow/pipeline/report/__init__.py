"""ptqflow.pipeline.report: the validate step's report.json (schema-checked) and self-contained report.html."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ptqflow.errors import InputError

SCHEMA_PATH = Path(__file__).with_name("schema.json")
SUMMARY = "summary.json"  # the quantize step's per-layer summary, in its artifact


def jsonable(obj):
    """``obj`` with non-finite floats as the strings "inf", "-inf", "nan" (JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def schema() -> dict:
    """The report.json JSON schema."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(data: dict) -> None:
    """jsonschema.ValidationError when ``data`` breaks the schema; a no-op when jsonschema is not installed."""
    try:
        import jsonschema
    except ImportError:  # optional dependency; the tests run with it
        return
    jsonschema.validate(data, schema())


def load_decisions(quantized_dir: Path) -> list[dict] | None:
    """The quantize step's per-layer summary rows (``summary.json``'s ``layers``) that report.html shows as the
    decisions; None when the artifact has no summary; InputError naming the file when it is damaged."""
    path = Path(quantized_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        layers = json.loads(path.read_text(encoding="utf-8"))["layers"]
        if not isinstance(layers, list) or not all(isinstance(r, dict) for r in layers):
            raise TypeError("'layers' is not a list of objects")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: per-layer summary damaged ({type(exc).__name__}: {exc}); quantize again") from None
    return layers


def write_report(out: Path, report: dict) -> dict:
    """Writes ``out/report.json`` and ``out/report.html``; returns the JSON-ready report."""
    from ptqflow.pipeline.report.html import render

    data = jsonable(report)
    validate_report(data)
    out = Path(out)
    (out / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    (out / "report.html").write_text(render(data), encoding="utf-8")
    return data
