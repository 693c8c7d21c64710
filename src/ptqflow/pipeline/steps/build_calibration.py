"""build-calibration: turn the user's data into model-ready calibration and validation shards."""

from __future__ import annotations

import time
from pathlib import Path

from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, write_manifest
from ptqflow.artifacts.storage import scratch_dir
from ptqflow.config import PipelineConfig, section_dump
from ptqflow.errors import ConfigError
from ptqflow.pipeline.steps import spec
from ptqflow.pipeline.steps.fetch_model import model_file

_SPEC = spec("build-calibration")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs


def config_section(cfg: PipelineConfig) -> dict:
    """The data section plus quantization.subset_size (the only quantization field that changes the shards)
    and whether data.validation_size was set: a small data set is split differently when it was not."""
    return {"data": section_dump(cfg.data), "subset_size": cfg.quantization.subset_size,
            "validation_size_set": "validation_size" in cfg.data.model_fields_set}


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Writes calibration/, validation/ and index.json into ``out``, then the manifest; returns it."""
    from ptqflow.data.build import build

    if not cfg.data.source:
        raise ConfigError("data.source is required for build-calibration")
    start = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with scratch_dir("ptqflow-data-") as tmp:
        source = cfg.data.source
        if "://" in source:
            from ptqflow.artifacts.storage import stage_in

            local = stage_in(source, Path(tmp))
        else:
            local = Path(source)
        index = build(local, model_file(Path(inputs["model"])), out, cfg)
    metrics = {"calibration": index["counts"]["calibration"], "validation": index["counts"]["validation"],
               "skipped": len(index["skipped"]), "items": index["total_items"],
               "split": index["split"]["rule"], "split_reason": index["split"]["reason"]}
    if index.get("skipped_links"):
        metrics["skipped_links"] = len(index["skipped_links"])  # symbolic links leading outside data.source
    return write_manifest(out, step=NAME, config=config_section(cfg), inputs=input_digests(inputs),
                          metrics=metrics, timings={"total_s": time.monotonic() - start})
