"""What the slow end-to-end tests run: the S3 bucket they use, the base config for the tiny model, and the
task table they print."""

from datetime import datetime
from pathlib import Path

BUCKET = "ptqflow-rest"
DAG_ID = "ptqflow_quantize"
STEPS = ("fetch_model", "build_calibration", "collect_stats", "quantize", "validate", "export_ir")
# The base config of every run on the tiny model (small subsets, a lenient gate, no speed threshold).
TINY_CONFIG = {"quantization": {"subset_size": 16},
               "data": {"validation_size": 8, "preprocess": {"method": "none"}},
               "validation": {"latency_iterations": 2,
                              "gate": {"min_speedup": None, "max_accuracy_drop": None, "min_cosine": 0.5}}}


def seed_bucket(client, bucket: str, tmp: Path) -> Path:
    """Create ``bucket`` with the tiny classifier at in/model.onnx and 24 samples under in/data/; returns the
    local model path."""
    import numpy as np

    import builders

    client.create_bucket(Bucket=bucket)
    model = builders.save(builders.conv_classifier(), tmp / "model.onnx")
    client.upload_file(str(model), bucket, "in/model.onnx")
    rng = np.random.default_rng(0)
    for i in range(24):
        path = tmp / f"s{i:02d}.npy"
        np.save(path, rng.normal(0, 1, (3, 16, 16)).astype(np.float32))
        client.upload_file(str(path), bucket, f"in/data/s{i:02d}.npy")
    return model


def _seconds(ti: dict) -> float | None:
    if ti.get("duration") is not None:
        return round(float(ti["duration"]), 1)
    if ti.get("start_date") and ti.get("end_date"):
        return round((datetime.fromisoformat(ti["end_date"]) - datetime.fromisoformat(ti["start_date"])).total_seconds(), 1)
    return None


def task_table(run: dict, tis: list[dict]) -> str:
    """A plain-text table of the run's task states and durations."""
    lines = [f"dag_id={run['dag_id']} run_id={run['dag_run_id']} state={run['state']} "
             f"triggered_by={run.get('triggered_by')} start={run.get('start_date')} end={run.get('end_date')}",
             f"{'task':<22} {'state':<10} {'try':>3} {'seconds':>8}"]
    statistics = ("statistics_needed", "statistics_unsharded", "statistics_shards", "collect_stats_shard",
                  "merge_stats")
    validation = ("validation_unsharded", "validation_shards", "validate_shard", "merge_validation")
    order = {t: i for i, t in enumerate((*STEPS[:2], *statistics, *STEPS[2:4], *validation, *STEPS[4:], "publish",
                                         "publish_registry"))}
    for ti in sorted(tis, key=lambda t: (order.get(t["task_id"], 99), t.get("map_index", -1))):
        name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
        lines.append(f"{name:<22} {str(ti['state']):<10} {ti.get('try_number', 0):>3} "
                     f"{_seconds(ti) if _seconds(ti) is not None else '-':>8}")
    return "\n".join(lines)
