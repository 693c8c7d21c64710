"""Building a calibration artifact: source items -> model-ready samples -> calibration/validation shards."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx

from ptqflow.config import PipelineConfig
from ptqflow.data.preprocess import preprocess_image
from ptqflow.data.selection import plan_split, selection_order
from ptqflow.data.shards import INDEX_FILE, ShardWriter
from ptqflow.data.sources import clear_caches, list_items
from ptqflow.data.transform import fit_sample, load_transform
from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import graph_inputs
from ptqflow.logs import get_logger

log = get_logger("data")


def model_inputs(model_path: Path) -> list[dict]:
    """The model's real inputs (initializers excluded): [{name, shape (int or None per dim), dtype}]; an OpenVINO
    IR's (``.xml``) as OpenVINO reads them."""
    if str(model_path).lower().endswith(".xml"):
        from ptqflow.runtime.openvino import ir_io, read_ir

        return ir_io(read_ir(model_path))[0]
    model = onnx.load(str(model_path), load_external_data=False)
    out = []
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        out.append({"name": vi.name, "shape": shape, "dtype": str(np.dtype(dtype))})
    return out


class _Unreadable(Exception):
    """An item whose file could not be read or decoded (corrupt image, truncated file)."""


def _make_sample(item, inputs, cfg, transform):
    """One item -> arrays without batch dim, checked against the model; exceptions name the item.

    Only a failure to read the item itself is a ``_Unreadable`` (skipped and counted); anything later
    (transform, preprocessing, shape checks) is a setup problem and raises InputError.
    """
    try:
        raw = item.load()
    except InputError:
        raise
    except Exception as err:
        raise _Unreadable(f"{type(err).__name__}: {err}") from err
    if transform is not None:
        try:
            raw = transform(raw)
        except Exception as err:
            raise InputError(f"data.transform raised on item {item.source_id}: {type(err).__name__}: {err}") from err
        if not isinstance(raw, dict):
            if len(inputs) != 1:
                raise InputError(f"data.transform returned {type(raw).__name__} for {item.source_id}; expected a dict")
            raw = {inputs[0]["name"]: raw}
    elif item.kind == "text":
        raise InputError(f"{item.source_id}: text sources need data.transform (a tokenizer) to make model inputs")
    elif item.kind == "image":
        if len(inputs) != 1 or cfg.data.preprocess.method == "none":
            raise InputError(f"{item.source_id}: images need data.preprocess or data.transform for {len(inputs)} input(s)")
        try:
            raw = {inputs[0]["name"]: preprocess_image(raw, cfg.data.preprocess, inputs[0]["shape"])}
        except ValueError as err:
            raise InputError(f"item {item.source_id}: data.preprocess: {err}") from err
    return fit_sample(raw, inputs, f"item {item.source_id}")


def build(source: Path, model_path: Path, out: Path, cfg: PipelineConfig) -> dict:
    """Writes calibration/, validation/ and index.json into ``out``; returns the index. On error nothing is left."""
    written = [out / "calibration", out / "validation", out / INDEX_FILE]
    try:
        return _build(source, model_path, out, cfg)
    except BaseException:
        for p in written:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        raise
    finally:
        clear_caches()  # do not keep a large .npz in memory after the build


def _build(source: Path, model_path: Path, out: Path, cfg: PipelineConfig) -> dict:
    inputs = model_inputs(model_path)
    skipped_links: list[str] = []  # symbolic links pointing outside the data directory: not read
    items, label_names = list_items(source, inputs, skipped_links)
    label_kind = "class" if label_names else None
    if cfg.data.label_file:
        from ptqflow.data.labels import apply_text_labels, read_label_file

        if not Path(source).is_dir():
            raise InputError(f"data.label_file needs data.source to be a directory; {source} is a file")
        items, label_names = apply_text_labels(items, read_label_file(source, cfg.data.label_file))
        label_kind = "text"
    if not items:
        raise InputError(f"data.source {source}: no usable items (images, .npy/.npz, .pb or text lines)")
    # Sized before any sample is built: a data set too small for the split fails here, not at validate.
    plan = plan_split(len(items), cfg.quantization.subset_size, cfg.data.validation_size,
                      "validation_size" in cfg.data.model_fields_set)
    if plan.reason:
        log.warning(plan.reason)
    transform = load_transform(cfg.data.transform) if cfg.data.transform else None
    subset, val_size = plan.calibration, plan.validation
    # Stratify by class; text labels are nearly all distinct, so there is nothing to stratify by.
    order = selection_order([it.label if label_kind == "class" else None for it in items], cfg.data.seed)
    max_bytes = cfg.data.shard_max_mb * 1024 * 1024
    labelled = bool(label_names)
    writers = {s: ShardWriter(out / s, max_bytes, labelled) for s in ("calibration", "validation")}
    sources = {"calibration": [], "validation": []}
    skipped, shapes, attempted = [], None, 0
    for idx in order:
        split = "calibration" if writers["calibration"].count < subset else "validation"
        if split == "validation" and writers["validation"].count >= val_size:
            break
        item = items[idx]
        attempted += 1
        try:
            sample = _make_sample(item, inputs, cfg, transform)
        except _Unreadable as err:  # one corrupt file: skip and count; setup errors propagate
            skipped.append({"source": item.source_id, "reason": str(err)})
            continue
        shapes = shapes or {k: [1, *v.shape] for k, v in sample.items()}
        for k, v in sample.items():
            if [1, *v.shape] != shapes[k]:  # dynamic model dims still need equal shapes within a shard
                raise InputError(f"item {item.source_id}: input {k!r} has shape {[1, *v.shape]}, earlier samples "
                                 f"{shapes[k]}; set data.preprocess.resize or make the transform pad/crop")
        writers[split].add(sample, item.label)
        sources[split].append(item.source_id)
    for w in writers.values():
        w.flush()
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable item(s), e.g. {skipped[0]['source']}")
        if len(skipped) / max(attempted, 1) > cfg.data.max_bad_fraction:
            raise InputError(
                f"data.source {source}: {len(skipped)} of {attempted} items unreadable (more than "
                f"data.max_bad_fraction={cfg.data.max_bad_fraction}); first: {skipped[0]['source']}: {skipped[0]['reason']}"
            )
    if writers["calibration"].count == 0:
        raise InputError(f"data.source {source}: no item could be read")
    if val_size and writers["validation"].count == 0:
        raise InputError(f"data.source {source}: none of the items left for validation could be read "
                         f"({len(skipped)} unreadable of {len(items)}); validate needs at least one")
    if writers["validation"].count < val_size:
        warnings.warn(f"validation split has {writers['validation'].count} samples (asked {val_size})")
    index = {
        "counts": {s: w.count for s, w in writers.items()},
        "shards": {s: w.shards for s, w in writers.items()},
        "shapes": shapes,
        "dtypes": {i["name"]: i["dtype"] for i in inputs},
        "inputs": [i["name"] for i in inputs],
        "sources": sources,
        "label_names": label_names,
        "label_kind": label_kind,
        "labels_key": "__labels__" if labelled else None,
        "seed": cfg.data.seed,
        "split": plan.as_dict(),
        "skipped": skipped,
        "skipped_links": skipped_links,
        "total_items": len(items),
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")
    return index
