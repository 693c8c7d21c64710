"""quantize: apply the statistics to the FP32 model and write the INT8 model (in ``quantization.quant_format``;
dynamic quantization, ``quantization.static: false``, needs no statistics) with a per-layer summary."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, write_manifest
from ptqflow.config import PipelineConfig, section_dump
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION
from ptqflow.pipeline.steps import spec
from ptqflow.pipeline.steps.fetch_model import IR_FILE, model_file
from ptqflow.runtime.model_files import save_model

_SPEC = spec("quantize")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs


def config_section(cfg: PipelineConfig) -> dict:
    """All quantization parameters and the execution device."""
    return {"quantization": section_dump(cfg.quantization), "device": cfg.device.value}


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Quantize into ``out`` (model.onnx, or model.xml/.bin for an IR, + summary.json); returns the manifest."""
    from ptqflow.api import Statistics, quantize_dynamic_with_summary, quantize_with_summary
    from ptqflow.data import iter_samples

    start = time.monotonic()
    # The path, not a loaded ModelProto: graph preparation then loads the model once and works on it without
    # copying it (a copy is a model's size of memory, several GB for a model over 2 GB).
    model = model_file(Path(inputs["model"]))
    if not cfg.quantization.static:  # dynamic quantization: no statistics (collect-stats was skipped)
        result = quantize_dynamic_with_summary(model, cfg.quantization)
    else:
        stats = Statistics.load(Path(inputs["statistics"]))
        # Only full bias correction reads samples, and only a subset: no progress bar around it.
        samples = iter_samples(Path(inputs["calibration"]), "calibration")
        result = quantize_with_summary(model, stats, cfg.quantization, dataset=samples, device=cfg.device.value)
    if model.suffix == ".xml":  # an IR in, an IR out: FakeQuantize nodes over float weights, as NNCF writes it
        import openvino as ov

        from ptqflow.quantization.openvino_engine import prepare

        ov.save_model(result.model, str(Path(out) / IR_FILE), compress_to_fp16=False)
        # the summary names the IR's view (graph.openvino_view): its nodes are the float tensors' readers
        layers = with_readers(list(result.layers), prepare(model).view.view)
    else:
        result.model.ir_version = min(result.model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
        save_model(result.model, Path(out) / "model.onnx")  # over 2 GB: weights in model.onnx.data beside it
        layers = with_readers(list(result.layers), result.model)
    (Path(out) / "summary.json").write_text(json.dumps({"layers": layers}, indent=2, default=str), encoding="utf-8")
    return write_manifest(out, step=NAME, config=config_section(cfg), inputs=input_digests(inputs),
                          metrics=summary_metrics(layers), timings={"total_s": round(time.monotonic() - start, 3)})


def with_readers(layers: list[dict], model) -> list[dict]:
    """``layers`` with ``consumers`` on each activation kept in float (``op_type: tensor``): the summary's layers
    that read it in ``model``. An ignored_scope names nodes, so these are what keeps it float on another run
    (report.html's snippet)."""
    names = {r["name"] for r in layers if r.get("op_type") != "tensor"}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.name in names:
            for i in dict.fromkeys(node.input):
                readers.setdefault(i, []).append(node.name)
    for r in layers:
        if r.get("op_type") == "tensor" and r.get("status") == "float" and "consumers" not in r:
            r["consumers"] = readers.get(r["name"], [])
    return layers


def summary_metrics(layers: list[dict]) -> dict:
    """Counts of quantized / kept-float / bias-corrected layers from the per-layer summary."""
    status = Counter(str(layer.get("status", layer.get("decision", "unknown"))) for layer in layers)
    quantized = sum(n for s, n in status.items() if s.startswith("quantized") or s == "int8")
    corrected = sum(1 for layer in layers if layer.get("bias_corrected") or layer.get("bias_shift") is not None)
    return {"layers": len(layers), "quantized_layers": quantized, "float_layers": len(layers) - quantized,
            "bias_corrected_layers": corrected, "status_counts": dict(status)}
