"""Rebuilds a results JSON/markdown from a run's console log (each model's FP32 line and each method's JSON
line), so an interrupted or still-running full run still yields a table. Usage: fromlog.py LOG [LOG...]"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402


def parse(text: str) -> list[dict]:
    models: dict[str, dict] = {}
    for line in text.splitlines():
        m = re.match(r"\[(\w+)\] (.*)$", line)
        if not m:
            continue
        name, rest = m.groups()
        model = models.setdefault(name, {"model": name, "methods": {}})
        if rest.startswith("data"):  # "data: ..." in old logs, "data (ptqflow build-calibration, seed N): ..." now
            d = re.match(r"data[^:]*: (\d+) calibration, (\d+) validation", rest)
            model["n_calibration"], model["n_validation"] = int(d.group(1)), int(d.group(2))
        elif rest.startswith("fp32 "):
            model["fp32"] = ast.literal_eval(rest[5:])
        elif rest.startswith("FAILED: "):
            model["error"] = rest[8:]
        elif ": {" in rest:
            meth, js = rest.split(": ", 1)
            model["methods"][meth] = json.loads(js)
    files = {"cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
             "det": "ch_PP-OCRv4_det_infer.onnx", "encoder": "minilm.onnx (all-MiniLM-L6-v2)"}
    out = []
    for m in models.values():
        if "fp32" in m:
            m["model_file"] = files.get(m["model"], m["model"])
            out.append(m)
    return out


NOTE = ("Run of 2026-11-22 on the shared 2-core machine, cls/rec/det and the encoder in two processes running "
        "at the same time (absolute timings inflated; ratios within a model comparable). cls peak RSS figures are "
        "not reliable (measured with ru_maxrss, which inherits the harness's peak; fixed to VmHWM before rec). "
        "det: 100 calibration / 40 validation pages.")


def main() -> None:
    """``fromlog.py [--note TEXT] LOG...``: the note replaces the one about the 2026-11-22 run."""
    args, note = sys.argv[1:], NOTE
    if args[:1] == ["--note"]:
        note, args = args[1], args[2:]
    logs = args
    models = [m for log in logs for m in parse(Path(log).read_text())]
    sys.path.insert(0, str(HERE))
    import run

    rep = {"date": __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
           .isoformat(timespec="seconds"), "quick": False, "versions": run.versions(), "models": models,
           "note": "rebuilt from console logs: " + ", ".join(Path(x).name for x in logs) + ". " + note}
    report.write(rep, HERE / "results")


if __name__ == "__main__":
    main()
