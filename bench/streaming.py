"""Peak RSS of collect-stats and validate as the number of samples grows (issue 24: calibration and validation
stream shard by shard, so memory must stay flat in the number of samples).

PP-OCR cls (rapidocr's bundled model): 300 calibration + 300 validation text-line crops are rendered once
(tasks.Cls, ptqflow's build-calibration with the bench transform); the splits of N samples are those samples
repeated in order, written as ordinary shards (what rendering N images would give, without rendering them). The
model is fetched, collected and quantized once on 300 samples; then for each N one `ptqflow collect-stats
--subset-size N` and one `ptqflow validate` process run on the N-sample artifact, each measured with wait4
(peak RSS) and a wall clock.

    bench/.venv/bin/python bench/streaming.py [--sizes 300,3000,10000] [--work DIR] [--out bench/results]

Writes streaming-<date>.json and .md into --out; bench/README.md ("Memory flat in the number of samples") records
the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from large_model import run_step  # noqa: E402

PTQFLOW = [sys.executable, "-m", "ptqflow.cli"]
BASE = 300  # rendered samples per split


def build_artifact(task, n_cal: int, n_val: int, work: Path, env: dict) -> Path:
    """``work/data``: ``n_cal`` calibration and ``n_val`` validation items of ``task`` rendered into
    ``work/source`` and built by `ptqflow build-calibration` (the task's transform; needs ``work/fetch-model``).
    Reused when it exists. Returns its path."""
    data = work / "data"
    if (data / "manifest.json").is_file():
        return data
    task.render(work / "source", n_cal + n_val, seed=1)
    config = work / "build.yaml"
    config.write_text(f"quantization:\n  subset_size: {n_cal}\n"
                      f"data:\n  transform: {task.transform}\n  validation_size: {n_val}\n  seed: 0\n")
    step("build-calibration", data, env, "--config", str(config), "--in-model", str(work / "fetch-model"),
         "--data", str(work / "source"))
    return data


def tiled(base: Path, out: Path, n: int) -> Path:
    """An artifact like ``base`` whose calibration and validation splits hold ``n`` samples each: ``base``'s
    samples (and labels) repeated in order, in shards of the default size. Returns ``out``."""
    from ptqflow.artifacts.manifest import write_manifest
    from ptqflow.data.shards import INDEX_FILE, ShardWriter, iter_labeled, read_index

    index = read_index(base)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("calibration", "validation"):
        writer = ShardWriter(out / split, 64 * 1024 * 1024, index["labels_key"] is not None)
        for sample, label in islice(cycle(list(iter_labeled(base, split))), n):
            writer.add({k: v[0] for k, v in sample.items()}, label)
        writer.flush()
        index["counts"][split] = writer.count
        index["shards"][split] = writer.shards
        index["sources"][split] = list(islice(cycle(index["sources"][split]), n))
    (out / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    write_manifest(out, step="build-calibration", config={"tiled_from": str(base), "samples": n}, inputs={})
    return out


def step(name: str, out: Path, env: dict, *args: str) -> dict:
    """Run ``ptqflow <name> --output out args``; its exit code, seconds and peak RSS (MiB). Raises on failure."""
    code, wall, rss, err = run_step([*PTQFLOW, name, "--output", str(out), *args], env)
    if code:
        raise RuntimeError(f"{name} exited {code}: {err}")
    return {"seconds": round(wall, 1), "peak_rss_mib": round(rss / 2**20, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="300,3000,10000")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--src", type=Path, default=HERE.parent / "src",
                    help="the ptqflow sources the steps run (another checkout's src/ measures it side by side)")
    ap.add_argument("--label", default="", help="added to the result files' names")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="ptqflow-streaming-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.src.resolve()), str(HERE)]))
    work.mkdir(parents=True, exist_ok=True)
    try:
        import tasks

        task = tasks.Cls()
        config = work / "config.yaml"
        # speed is not under test here, and on a loaded machine the speed gate may fail
        config.write_text("validation:\n  latency_iterations: 20\n  gate:\n    min_speedup: null\n")
        cfg = ["--config", str(config)]
        model, stats, quantized = work / "fetch-model", work / "collect-stats", work / "quantize"
        for path in (stats, quantized):
            shutil.rmtree(path, ignore_errors=True)
        if not (model / "manifest.json").is_file():
            step("fetch-model", model, env, *cfg, "--model", str(task.model_path))
        build_artifact(task, BASE, BASE, work, env)
        step("collect-stats", stats, env, *cfg, "--in-model", str(model), "--in-calibration", str(work / "data"))
        step("quantize", quantized, env, *cfg, "--in-model", str(model), "--in-calibration", str(work / "data"),
             "--in-statistics", str(stats))
        rows = []
        for n in sizes:
            data = tiled(work / "data", work / f"data-{n}", n)
            row = {"samples": n}
            row["collect-stats"] = step("collect-stats", work / f"stats-{n}", env, *cfg, "--subset-size", str(n),
                                        "--in-model", str(model), "--in-calibration", str(data))
            row["validate"] = step("validate", work / f"validate-{n}", env, *cfg, "--in-model", str(model),
                                   "--in-quantized", str(quantized), "--in-calibration", str(data))
            done = json.loads((work / f"stats-{n}" / "manifest.json").read_text())["metrics"]["num_samples"]
            if done != n:
                raise RuntimeError(f"collect-stats saw {done} samples, asked {n}")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            shutil.rmtree(data)
        result = {"model": "PP-OCR cls (rapidocr)", "cpu": platform.processor() or platform.machine(),
                  "cores": os.cpu_count(), "src": str(args.src.resolve()), "rows": rows}
        stamp = time.strftime("%Y-%m-%dT%H%M") + (f"-{args.label}" if args.label else "")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"streaming-{stamp}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"streaming-{stamp}.md").write_text(table(rows))
        print(table(rows))
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """The figures as a markdown table."""
    lines = ["| samples | collect-stats peak RSS | collect-stats time | validate peak RSS | validate time |",
             "|---|---|---|---|---|"]
    for r in rows:
        c, v = r["collect-stats"], r["validate"]
        lines.append(f"| {r['samples']} | {c['peak_rss_mib']} MiB | {c['seconds']} s | {v['peak_rss_mib']} MiB | "
                     f"{v['seconds']} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
