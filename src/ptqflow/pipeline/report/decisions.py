"""What report.html shows of the quantize step's decisions: the per-layer table, the bias-correction verdicts
and the ``ignored_scope`` that keeps in float what stayed float, all from the per-layer summary rows
(``summary.json``, ``quantize_with_summary(...).layers``).

Rows written before the engine measured its decisions have no ``measured``, ``output_error`` or held-out
bias-correction errors: their cells stay empty rather than the page failing.
"""

from __future__ import annotations

import re

import yaml

# Keys of a float row's ``measured`` record (the engine's error-driven decisions), in the table's order.
MEASURED_KEYS = ("error_int8", "error_float", "gain", "output", "samples")


def _weight(row: dict) -> str:
    """The weight's precision: int<bits> per-channel/per-tensor, float for a float layer, - for none."""
    w = row.get("weight")
    if not w:
        return "float" if row.get("status") == "float" and row.get("op_type") != "tensor" else "-"
    return f"int{w.get('bits', 8)} " + ("per-channel" if w.get("per_channel") else "per-tensor")


def _precision(row: dict) -> str:
    """float, int8, or int8 weights with float inputs (an activation a pass kept in float feeds the layer)."""
    if row.get("status") == "float":
        return "float"
    if row.get("weight") and not row.get("quantized_inputs"):
        return "int8 weights, float input"
    return "int8"


def layer_rows(decisions: list[dict], validation_layers: list[dict] | None = None) -> list[dict]:
    """One display row per summary row, in graph order: name, op, precision (int8/float), weight, inputs,
    decided_by, why, the measured figures (``measured`` of a float decision, ``output_error``), the validation
    SQNR of the layer when validate measured per-layer sensitivity, and the bias-correction verdict."""
    sqnr = {r.get("layer"): r.get("sqnr_db") for r in validation_layers or []}
    rows = []
    for d in decisions:
        tensor = d.get("op_type") == "tensor"
        measured = d.get("measured") or {}
        why = d.get("reason") or ""
        if tensor and d.get("consumers"):
            why += f" (read by {', '.join(map(str, d['consumers']))})"
        if d.get("input_ranges"):  # ranges by measured error (docs/algorithms.md)
            why = "; ".join(filter(None, [why, "input range by measured error: " + ", ".join(
                f"{t} {e}" for t, e in d["input_ranges"].items())]))
        if d.get("per_channel_inputs"):  # a depthwise conv's input, a scale per channel (docs/algorithms.md)
            why = "; ".join(filter(None, [why, "input scale per channel: " + ", ".join(d["per_channel_inputs"])]))
        bc = d.get("bias_correction") or {}
        rows.append({
            "name": str(d.get("name", "")), "op_type": "activation" if tensor else str(d.get("op_type", "")),
            "precision": _precision(d), "weight": _weight(d),
            "inputs": "" if d.get("status") == "float" else len(d.get("quantized_inputs") or []),
            "decided_by": d.get("decided_by") or ("" if d.get("status") == "float" else "placement"), "why": why,
            **{f"measured_{k}": measured.get(k) for k in MEASURED_KEYS},
            "output_error": d.get("output_error"), "sqnr_db": sqnr.get(d.get("name")),
            "bias": ("applied" if bc.get("applied") else "not applied") if bc else "",
        })
    return rows


def columns(rows: list[dict]) -> dict[str, bool]:
    """Which optional columns of the table any row fills: measured (a measured float decision), output_error,
    sqnr (validation per-layer SQNR), bias (a bias-correction verdict); empty columns are left out."""
    return {"measured": any(r["measured_error_int8"] is not None or r["measured_gain"] is not None for r in rows),
            "output_error": any(r["output_error"] is not None for r in rows),
            "sqnr": any(r["sqnr_db"] is not None for r in rows), "bias": any(r["bias"] for r in rows)}


def bias_rows(decisions: list[dict]) -> list[dict]:
    """The bias-correction verdict of each layer that had one: layer, applied, why not, the shift (max |shift|,
    its norm, the bias norm) and, when judged on held-out samples, the output error before and after."""
    rows = []
    for d in decisions:
        bc = d.get("bias_correction")
        if not bc:
            continue
        rows.append({"name": str(d.get("name", "")), "op_type": str(d.get("op_type", "")),
                     "applied": bool(bc.get("applied")), "method": bc.get("method") or "",
                     "reason": "; ".join(filter(None, [bc.get("reason"), bc.get("fallback")])),
                     "max_abs_shift": bc.get("max_abs_shift"), "shift_norm": bc.get("shift_norm"),
                     "bias_norm": bc.get("bias_norm"), "error_before": bc.get("error_before"),
                     "error_after": bc.get("error_after"), "held_out": bc.get("held_out")})
    return rows


def float_names(decisions: list[dict]) -> list[tuple[str, str]]:
    """(node name, deciding pass) of every node an ``ignored_scope`` must name to keep what stayed float in
    float: each float layer, and each layer reading an activation a pass kept in float (``consumers``; as the
    scope names nodes, those layers' weights then stay float too). Each name once, in graph order."""
    seen: dict[str, str] = {}
    for d in decisions:
        if d.get("status") != "float":
            continue
        by = str(d.get("decided_by") or "")
        names = (d.get("consumers") or []) if d.get("op_type") == "tensor" else [d.get("name")]
        for name in names:
            if isinstance(name, str) and name and name not in seen:
                seen[name] = by if d.get("op_type") != "tensor" else f"{by}: reads {d.get('name')}"
    return list(seen.items())


def _comment(text: str) -> str:
    """``text`` safe inside a one-line # comment of Python or YAML: no line break can end the comment and no
    unprintable character (a NUL, which Python source cannot hold) reaches it."""
    return re.sub(r"\s+", " ", "".join(c if c.isprintable() else " " for c in text)).strip()


def unscoped_tensors(decisions: list[dict]) -> list[str]:
    """Float activations without a known reader (summaries written before readers were recorded): no node name
    can keep them float, so the page lists them beside the snippet."""
    return [str(d.get("name")) for d in decisions
            if d.get("status") == "float" and d.get("op_type") == "tensor" and not d.get("consumers")]


def ignored_scope_python(names: list[tuple[str, str]]) -> str:
    """Python that builds the ``IgnoredScope`` for ``names`` ((node, deciding pass) pairs): each name a string
    literal (``repr``), so any name survives the paste."""
    lines = ["import ptqflow", "", "ignored_scope = ptqflow.IgnoredScope(names=["]
    for name, by in names:
        lines.append(f"    {name!r},  # {_comment(by)}" if by else f"    {name!r},")
    lines += ["])", "# ptqflow.quantize(model, calibration_dataset, ignored_scope=ignored_scope)"]
    return "\n".join(lines) + "\n"


def ignored_scope_yaml(names: list[tuple[str, str]]) -> str:
    """The config file's form of the same scope (``quantization.ignored_scope.names``): each name a double-quoted
    scalar written by PyYAML's emitter, which escapes whatever the name holds."""
    if not names:
        return "quantization:\n  ignored_scope:\n    names: []\n"
    lines = ["quantization:", "  ignored_scope:", "    names:"]
    for name, by in names:
        item = yaml.safe_dump([name], default_style='"', allow_unicode=True, width=float("inf")).strip()
        lines.append(f"    {item}" + (f"  # {_comment(by)}" if by else ""))
    return "\n".join(lines) + "\n"


def counts(decisions: list[dict]) -> dict:
    """How many layers are int8, float, and how many float decisions were measured."""
    layers = [d for d in decisions if d.get("op_type") != "tensor"]
    return {"int8": sum(d.get("status") != "float" for d in layers),
            "float": sum(d.get("status") == "float" for d in layers),
            "float_activations": sum(d.get("op_type") == "tensor" and d.get("status") == "float" for d in decisions),
            "measured": sum(bool(d.get("measured")) for d in decisions)}
