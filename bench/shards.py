"""Wall time of collect-stats and validate run as N local shard processes (issue 24), on PP-OCR det.

The calibration and validation splits are rendered once (tasks.Det, ptqflow's build-calibration); the model is
fetched and quantized once. Then for each N: N = 1 runs the step as one process, as `ptqflow run` does; N > 1
starts `ptqflow collect-stats --shard I/N` (or `validate --shard I/N`) for I = 0..N-1 as concurrent processes
and, when all have finished, `merge-stats` (`merge-validation`). The wall time is from the first start to the end
of the merge. Each merged artifact is checked against N = 1: the same statistics.npz and plan.json bytes, the same
report values (speed and timings aside: shard 0 measures speed on its own). The rounds run one after another,
each N once per round, so a change of load on the machine falls on every N alike.

    bench/.venv/bin/python bench/shards.py [--shards 1,2,4] [--cal 100] [--val 40] [--rounds 1] [--work DIR]

Writes shards-<date>.json and .md into --out (default bench/results); bench/README.md ("Sharded steps on one
machine") records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from streaming import build_artifact  # noqa: E402

PTQFLOW = [sys.executable, "-m", "ptqflow.cli"]
MERGE = {"collect-stats": "merge-stats", "validate": "merge-validation"}


def run_all(argvs: list[list[str]], env: dict) -> list[int]:
    """Start every argv at once and wait for all; their peak RSS in bytes. Raises naming a failed one."""
    procs = [subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    peaks = []
    for argv, proc in zip(argvs, procs):
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.stderr.close()
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"{' '.join(argv[3:5])} failed: {err[-2000:]}")
        peaks.append(usage.ru_maxrss * 1024)
    return peaks


def sharded(step: str, n: int, out: Path, inputs: list[str], env: dict) -> dict:
    """Run ``step`` as ``n`` shard processes and merge them into ``out`` (``n`` = 1: the step alone); seconds and
    the shards' peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    if n == 1:
        peaks = run_all([[*PTQFLOW, step, "--output", str(out), *inputs]], env)
    else:
        parts = [out.parent / f"{out.name}-part{i}" for i in range(n)]
        for p in parts:
            shutil.rmtree(p, ignore_errors=True)
        peaks = run_all([[*PTQFLOW, step, "--shard", f"{i}/{n}", "--output", str(p), *inputs]
                         for i, p in enumerate(parts)], env)
        cfg = inputs[:2]  # --config FILE
        run_all([[*PTQFLOW, MERGE[step], *cfg, "--in-partials", *map(str, parts), "--output", str(out)]], env)
    return {"seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mib_max": round(max(peaks) / 2**20, 1), "peak_rss_mib_sum": round(sum(peaks) / 2**20, 1)}


def same_statistics(a: Path, b: Path) -> bool:
    """True when both statistics artifacts hold the same statistics.npz and plan.json bytes."""
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ("statistics.npz", "plan.json"))


def report_values(directory: Path) -> dict:
    """report.json without what is measured per run (speed, timings) rather than computed from the data."""
    report = json.loads((directory / "report.json").read_text())
    for key in ("speed", "timings", "created", "gate"):
        report.pop(key, None)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--cal", type=int, default=100)
    ap.add_argument("--val", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    counts = [int(s) for s in args.shards.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="ptqflow-shards-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE)]))
    work.mkdir(parents=True, exist_ok=True)
    try:
        import tasks

        task = tasks.Det()
        config = work / "config.yaml"
        config.write_text(f"quantization:\n  subset_size: {args.cal}\n"  # speed is not compared: no speed gate
                          "validation:\n  latency_iterations: 10\n  gate:\n    min_speedup: null\n")
        cfg = ["--config", str(config)]
        model = work / "fetch-model"
        if not (model / "manifest.json").is_file():
            run_all([[*PTQFLOW, "fetch-model", "--output", str(model), *cfg, "--model", str(task.model_path)]], env)
        data = build_artifact(task, args.cal, args.val, work, env)
        stats_in = [*cfg, "--in-model", str(model), "--in-calibration", str(data)]
        val_in = [*cfg, "--in-model", str(model), "--in-quantized", str(work / "quantize"), "--in-calibration", str(data)]
        rows = []
        for r in range(args.rounds):
            for n in counts:
                row = {"round": r, "shards": n,
                       "collect-stats": sharded("collect-stats", n, work / f"stats-{n}", stats_in, env)}
                if n == counts[0] and r == 0:  # the model validate compares with, from the first statistics
                    run_all([[*PTQFLOW, "quantize", "--output", str(work / "quantize"), *stats_in,
                              "--in-statistics", str(work / f"stats-{n}")]], env)
                row["validate"] = sharded("validate", n, work / f"validate-{n}", val_in, env)
                row["statistics_identical"] = same_statistics(work / f"stats-{n}", work / f"stats-{counts[0]}")
                row["report_identical"] = (report_values(work / f"validate-{n}")
                                           == report_values(work / f"validate-{counts[0]}"))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        result = {"model": "PP-OCR det (rapidocr)", "calibration": args.cal, "validation": args.val,
                  "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "rows": rows}
        stamp = time.strftime("%Y-%m-%dT%H%M")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"shards-{stamp}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"shards-{stamp}.md").write_text(table(rows))
        print(table(rows))
        return 0 if all(r["statistics_identical"] and r["report_identical"] for r in rows) else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """The figures as a markdown table (time relative to N = 1 of the same round)."""
    first = {r["round"]: r for r in rows if r is rows[0] or r["shards"] == rows[0]["shards"]}
    lines = ["| round | N | collect-stats | vs N=1 | validate | vs N=1 | max / total peak RSS (collect-stats) | "
             "identical (statistics bytes, report values) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = first[r["round"]]
        c, v = r["collect-stats"], r["validate"]
        lines.append(f"| {r['round']} | {r['shards']} | {c['seconds']} s | {c['seconds'] / base['collect-stats']['seconds']:.2f}x "
                     f"| {v['seconds']} s | {v['seconds'] / base['validate']['seconds']:.2f}x | "
                     f"{c['peak_rss_mib_max']:.0f} / {c['peak_rss_mib_sum']:.0f} MiB | "
                     f"{r['statistics_identical']}, {r['report_identical']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
