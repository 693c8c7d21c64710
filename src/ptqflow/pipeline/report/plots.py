"""report.html's charts: matplotlib figures (Agg, no display) rendered to inline SVG text.

The page must load nothing and mention no network address, so the SVG loses what matplotlib writes for a
standalone file: the XML declaration, the DOCTYPE (which names the W3C DTD) and the xmlns attributes (HTML5
places inline <svg> in the SVG namespace without them). Text stays text (``svg.fonttype: none``): smaller, and
escaped by matplotlib's XML writer. Element ids are salted per chart, so a page's charts never share an id
and the same report renders the same bytes.
"""

from __future__ import annotations

import io
import math
import re

import matplotlib

matplotlib.use("Agg")  # no display: the steps run headless in containers

from matplotlib import rc_context  # noqa: E402 (after choosing the backend)
from matplotlib.figure import Figure  # noqa: E402

PASS_COLOUR = "#1a7f37"
FAIL_COLOUR = "#cf222e"
FP32_COLOUR = "#57606a"
INT8_COLOUR = "#0969da"
FLOAT_COLOUR = "#bf8700"  # a layer kept in float

# At most this many bars per chart: the worst ones; the tables list every layer.
MAX_BARS = 40
MAX_LABEL = 48  # characters of a bar's label
_CHAR_IN = 0.075  # inches per label character at 8 pt (DejaVu Sans, wide glyphs included)
_STANDALONE = re.compile(r'<\?xml[^>]*>\s*|<!DOCTYPE[^>]*>\s*|\s+xmlns(:\w+)?="[^"]*"')


def _short(label: str) -> str:
    """``label`` on one line, at most MAX_LABEL characters (the middle elided; the tables show the whole name)."""
    label = re.sub(r"\s+", " ", str(label))
    if len(label) <= MAX_LABEL:
        return label
    half = (MAX_LABEL - 1) // 2
    return label[:half] + "\u2026" + label[-half:]


def finite(value) -> float | None:
    """``value`` as a finite float, or None (missing, a string, inf or nan)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def to_svg(fig: Figure, salt: str) -> str:
    """``fig`` as inline SVG markup for an HTML page (no XML prolog, no namespace URLs)."""
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return _STANDALONE.sub("", buf.getvalue()).strip()


def barh(title: str, labels: list[str], values: list[float], colours: list[str], unit: str, salt: str,
         legend: dict[str, str] | None = None) -> str:
    """Horizontal bars, first label on top, each bar annotated with its value; inline SVG. ``legend``:
    {label: colour} of the colours used."""
    labels = [_short(label) for label in labels]
    width, height = 9.0, 1.0 + 0.28 * max(len(labels), 1)
    # Margins from the label lengths rather than a layout engine: constrained layout draws the figure once
    # more to measure it, which doubled the time of a chart.
    left = 0.15 + _CHAR_IN * max([len(label) for label in labels] + [4])
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=0.97, top=1 - 0.4 / height, bottom=0.45 / height)
    ax = fig.subplots()
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=colours, height=0.7)
    ax.set_yticks(ys, labels, fontsize=8, parse_math=False)  # names are text, never TeX
    for y, v in zip(ys, values):
        ax.annotate(f"{v:.4g} {unit}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_title(title, fontsize=11, loc="left", parse_math=False)
    ax.margins(x=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    if legend:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=n) for n, c in legend.items()], fontsize=8, loc="lower right")
    return to_svg(fig, salt)


def _first(items: list, title: str, what: str) -> tuple[list, str]:
    """The first MAX_BARS of ``items`` (sorted worst first) and ``title`` saying what was left out."""
    if len(items) > MAX_BARS:
        title += f": the {MAX_BARS} {what} of {len(items)}"
    return items[:MAX_BARS], title


def latency_chart(speed: dict) -> str:
    """FP32 and INT8 median and p90 latency per runtime, grouped bars (ms, lower is better)."""
    labels, values, colours = [], [], []
    for rt, sp in speed.items():
        for stat in ("median", "p90"):
            for tag, colour in (("fp32", FP32_COLOUR), ("int8", INT8_COLOUR)):
                labels.append(f"{rt} {stat} {tag.upper()}")
                values.append(finite(sp[tag][f"latency_ms_{stat}"]) or 0.0)
                colours.append(colour)
    return barh("Latency (ms, lower is better)", labels, values, colours, "ms", "latency",
                {"FP32": FP32_COLOUR, "INT8": INT8_COLOUR})


def sqnr_chart(layers: list[dict]) -> str:
    """Validation SQNR per quantized layer, lowest first (the candidates for an ignored scope); inf shows as the
    highest finite value found (exact layers)."""
    known = [(r["layer"], r["sqnr_db"]) for r in layers]
    top = max([v for _, v in known if finite(v) is not None] + [0.0])
    rows = sorted(((name, finite(v) if finite(v) is not None else top) for name, v in known), key=lambda r: r[1])
    rows, title = _first(rows, "Per-layer SQNR on the validation split (dB), lowest first", "lowest")
    return barh(title, [n for n, _ in rows], [v for _, v in rows], [INT8_COLOUR] * len(rows), "dB", "sqnr")


def error_chart(rows: list[dict]) -> str | None:
    """The engine's measured output error per layer (``output_error``; for a float decision without one, its
    measured ``error_int8``: what int8 would have cost), highest first, coloured int8/float; None when no row
    was measured."""
    measured = []
    for r in rows:
        value = finite(r.get("output_error"))
        if value is None and r["precision"] == "float":
            value = finite(r.get("measured_error_int8"))
        if value is not None:
            measured.append((r["name"], value, FLOAT_COLOUR if r["precision"] == "float" else INT8_COLOUR))
    if not measured:
        return None
    measured, title = _first(sorted(measured, key=lambda m: -m[1]),
                             "Measured output error per layer in int8, highest first", "highest")
    return barh(title, [m[0] for m in measured], [m[1] for m in measured], [m[2] for m in measured], "", "error",
                {"int8": INT8_COLOUR, "kept float": FLOAT_COLOUR})


def bias_chart(rows: list[dict]) -> str | None:
    """max |bias shift| per bias-corrected layer, largest first, coloured applied/not; None without shifts."""
    shifts = [(r["name"], finite(r["max_abs_shift"]), r["applied"]) for r in rows if finite(r["max_abs_shift"]) is not None]
    if not shifts:
        return None
    shifts, title = _first(sorted(shifts, key=lambda s: -s[1]), "Bias correction: max |shift| per layer, largest first",
                           "largest")
    return barh(title, [s[0] for s in shifts], [s[1] for s in shifts],
                [PASS_COLOUR if s[2] else FP32_COLOUR for s in shifts], "", "bias",
                {"applied": PASS_COLOUR, "not applied": FP32_COLOUR})
