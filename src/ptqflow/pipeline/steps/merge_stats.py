"""merge-stats: merge the partial statistics of collect-stats --shard 0/N .. N-1/N into the artifact one
collect-stats would have written on the whole calibration split (the same statistics.npz and plan.json bytes).

Not a step of the chain (``ptqflow run`` collects in one process): ``ptqflow merge-stats --in-partials P_0 ...
P_N-1 --output S``, whose output quantize takes as ``--in-statistics``. Its inputs are named ``partial-K`` in the
order given; the shard numbers recorded in them decide the merge order.
"""

from __future__ import annotations

import time
from pathlib import Path

from ptqflow.artifacts import input_digests, reproducible_zip
from ptqflow.artifacts.manifest import Manifest, read_manifest, write_manifest
from ptqflow.config import PipelineConfig
from ptqflow.errors import InputError
from ptqflow.pipeline.steps import collect_stats

NAME = "merge-stats"
INPUTS: tuple[str, ...] = ()  # one input per partial, named partial-0 .. partial-N-1 (given at run time)


def config_section(cfg: PipelineConfig) -> dict:
    """What collect-stats keys on: the merged artifact is what it would have written."""
    return collect_stats.config_section(cfg)


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Merge the partial statistics in ``inputs`` into ``out`` (statistics.npz + plan.json); returns the manifest."""
    from ptqflow.api import merge_statistics
    from ptqflow.quantization.statistics.partial import PartialStatistics

    start = time.monotonic()
    section = config_section(cfg)
    partials = []
    for name, path in inputs.items():
        manifest = read_manifest(Path(path))
        recorded = {k: v for k, v in (manifest.config if manifest else {}).items() if k != "shard"}
        if manifest is None or manifest.step != collect_stats.NAME or "shard" not in manifest.config:
            raise InputError(f"merge-stats: input {name} at {path} is not the output of collect-stats --shard")
        if recorded != section:
            raise InputError(f"merge-stats: input {name} (shard {manifest.config['shard']}) was collected with another "
                             "quantization config than this merge's; merge with the shards' config")
        partials.append(PartialStatistics.load(path))
    stats = merge_statistics(partials, cfg.quantization, device=cfg.device.value)
    stats.save(out)
    for npz in sorted(Path(out).glob("*.npz")):
        reproducible_zip(npz)
    return write_manifest(out, step=NAME, config=section, inputs=input_digests(inputs),
                          metrics={"num_samples": stats.num_samples, "num_points": stats.num_points,
                                   "shards": len(partials)},
                          timings={"total_s": round(time.monotonic() - start, 3)})
