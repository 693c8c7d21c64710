"""export-ir: OpenVINO IR (model.xml/model.bin, INT8 weights) from the INT8 QDQ model, checked before publishing."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, write_manifest
from ptqflow.config import PipelineConfig, section_dump
from ptqflow.errors import InputError

NAME = "export-ir"
INPUTS = ("quantized", "model", "calibration")
_PARITY_SAMPLES = 16


def config_section(cfg: PipelineConfig) -> dict:
    """The export section (device, FP32 IR, parity tolerance)."""
    return {"export": section_dump(cfg.export)}


def ir_stats(model) -> dict:
    """FakeQuantize count, Constant element types ({"i8": n, "f32": m, ...}) and constant bytes of an ov.Model."""
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    consts = Counter()
    const_bytes = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            et = op.get_output_element_type(0)
            consts[et.get_type_name()] += 1
            const_bytes += int(np.prod(list(op.get_output_shape(0)), dtype=np.int64)) * et.size
    return {"fake_quantize": ops.get("FakeQuantize", 0), "constants_by_precision": dict(consts),
            "int8_constants": consts.get("i8", 0) + consts.get("u8", 0), "constant_bytes": const_bytes}


def relative_l2(ref: np.ndarray, got: np.ndarray) -> float:
    """||got - ref|| / ||ref|| (absolute norm when ref is all zeros)."""
    ref, got = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    denom = np.linalg.norm(ref)
    err = np.linalg.norm(got - ref)
    return float(err / denom) if denom > 0 else float(err)


def check_parity(xml_path: Path, onnx_path: Path, samples: list[dict], device: str, tolerance: float) -> dict:
    """Runs the saved IR and the INT8 ONNX model on ``samples``; returns {"max_relative_l2", "per_output"}.

    Raises InputError naming the output and sample when the IR's relative L2 error exceeds ``tolerance``.
    """
    from ptqflow import ov
    from ptqflow.runtime import make_session

    c = ov.core()
    req = ov.compile_model(c, c.read_model(str(xml_path)), device).create_infer_request()
    sess = make_session(onnx_path, "cpu")
    names = [o.name for o in sess.get_outputs()]
    worst: dict[str, float] = {}
    for i, sample in enumerate(samples):
        ref = sess.run(names, sample)
        res = req.infer(sample)
        got = list(res.values())
        for j, name in enumerate(names):
            err = relative_l2(np.asarray(ref[j]), np.asarray(got[j]))
            worst[name] = max(worst.get(name, 0.0), err)
            if not np.isfinite(err) or err > tolerance:
                raise InputError(f"IR parity check failed: output {name!r} on validation sample {i} differs from the "
                                 f"INT8 ONNX model by relative L2 {err:.4g} > export.parity_tolerance {tolerance}")
    return {"max_relative_l2": max(worst.values(), default=0.0), "per_output": worst, "samples": len(samples)}


def _samples(calibration_dir: Path) -> list[dict]:
    from ptqflow.data import iter_samples

    out = []
    for s in iter_samples(calibration_dir, "validation"):
        out.append(s)
        if len(out) >= _PARITY_SAMPLES:
            break
    if not out:
        raise InputError(f"{calibration_dir}/validation: no validation samples for the IR parity check")
    return out


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Export into ``out`` (model.xml/.bin, optional fp32/); removes them and raises on a failed check."""
    import openvino as ov_

    from ptqflow import ov

    start = time.monotonic()
    out = Path(out)
    ec = cfg.export
    int8_path, fp32_path = Path(inputs["quantized"]) / "model.onnx", Path(inputs["model"]) / "model.onnx"
    for p in (int8_path, fp32_path):
        if not p.is_file():
            raise InputError(f"{p}: model.onnx missing")
    digests = input_digests(inputs)
    c = ov.core()
    ov.check_device(c, ec.openvino_device)  # before any work: an absent device is a clear error at once
    samples = _samples(Path(inputs["calibration"]))
    int8_model = ov.convert(int8_path)
    fp32_model = ov.convert(fp32_path)
    written = [out / "model.xml", out / "model.bin"]
    try:
        ov_.save_model(int8_model, str(out / "model.xml"), compress_to_fp16=False)
        ov.compile_model(c, c.read_model(str(out / "model.xml")), ec.openvino_device)
        parity = check_parity(out / "model.xml", int8_path, samples, ec.openvino_device, ec.parity_tolerance)
        if ec.export_fp32:
            (out / "fp32").mkdir(exist_ok=True)
            written += [out / "fp32" / "model.xml", out / "fp32" / "model.bin"]
            ov_.save_model(fp32_model, str(out / "fp32" / "model.xml"), compress_to_fp16=False)
    except BaseException:
        # No half-written artifact: a failed check leaves no IR behind.
        for p in written:
            p.unlink(missing_ok=True)
        raise
    int8_stats, fp32_stats = ir_stats(c.read_model(str(out / "model.xml"))), ir_stats(fp32_model)
    bin_bytes = (out / "model.bin").stat().st_size
    fp32_bytes = (out / "fp32" / "model.bin").stat().st_size if ec.export_fp32 else fp32_stats["constant_bytes"]
    metrics = {"parity_max_relative_l2": parity["max_relative_l2"], "parity_tolerance": ec.parity_tolerance,
               "fake_quantize": int8_stats["fake_quantize"], "int8_constants": int8_stats["int8_constants"],
               "bin_bytes": bin_bytes, "fp32_bin_bytes": fp32_bytes,
               "fp32_bin_bytes_source": "fp32/model.bin" if ec.export_fp32 else "constant bytes of the FP32 model",
               "size_ratio": bin_bytes / fp32_bytes if fp32_bytes else None}
    return write_manifest(out, step=NAME, config=config_section(cfg), inputs=digests, metrics=metrics,
                          timings={"total_s": round(time.monotonic() - start, 3)},
                          extra={"device": ec.openvino_device, "parity": parity,
                                 "weight_precisions": int8_stats["constants_by_precision"]})
