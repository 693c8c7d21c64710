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
from ptqflow.pipeline.metrics import sqnr_db
from ptqflow.pipeline.steps import spec
from ptqflow.pipeline.steps.accuracy_gate import int8_artifact
from ptqflow.pipeline.steps.fetch_model import model_file

_SPEC = spec("export-ir")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs
_PARITY_SAMPLES = 32


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


def check_parity(xml_path: Path, int8_path: Path, fp32_path: Path, samples: list[dict], device: str,
                 tolerance: float) -> dict:
    """Checks that the saved IR is as faithful to the FP32 model as the validated INT8 ONNX model.

    The IR (compiled with f32 inference precision, so the check sees the conversion and not the device's
    default bf16/f16 arithmetic), the INT8 ONNX model and the FP32 ONNX model run on ``samples``. Two correct
    executions of one QDQ graph round differently (fused integer kernels, FakeQuantize, float operators between
    Quantize/DequantizeLinear), and an output that amplifies rounding (a softmax near a decision boundary, a
    logit far out in a sigmoid's tail) spreads them apart; so the IR is held neither to the INT8 ONNX model sample
    by sample nor to one execution of it, but to the spread of onnxruntime's own executions of it
    (INT8_EXECUTIONS: its graph optimization levels, from fused integer kernels, which validate measured, to
    none, QDQ's reference semantics). Per output, over all samples together: ``int8_executions_vs_fp32`` holds
    each execution's relative L2 error against FP32 and ``int8_span_vs_fp32`` the largest; the IR's
    (``ir_vs_fp32``) may exceed that by at most ``tolerance``. A broken conversion (wrong weights, lost quantizer
    parameters) fails that by far: onnxruntime's executions agree with each other. ``int8_vs_fp32`` and
    ``ir_vs_int8`` are measured against the fused execution, as validate ran it. Raises InputError naming the
    output and its worst sample; returns the figures.
    """
    from ptqflow.runtime import openvino as ov
    from ptqflow.runtime.sessions import make_session

    executions = _int8_executions(int8_path)
    fused_session = make_session(int8_path, "cpu", optimization=executions[0])
    names = [o.name for o in fused_session.get_outputs()]

    def outputs(session) -> dict[str, list[np.ndarray]]:
        runs = [session.run(names, sample) for sample in samples]
        return {name: [np.asarray(r[j]) for r in runs] for j, name in enumerate(names)}

    # one model in memory at a time
    by_level = {executions[0]: outputs(fused_session)}
    del fused_session
    ref = outputs(make_session(fp32_path, "cpu"))
    by_level.update({level: outputs(make_session(int8_path, "cpu", optimization=level)) for level in executions[1:]})
    c = ov.core()
    req = ov.compile_model(c, c.read_model(str(xml_path)), device, precision="f32").create_infer_request()
    ir_runs = [list(req.infer(sample).values()) for sample in samples]
    del req
    ir = {name: [np.asarray(r[j]) for r in ir_runs] for j, name in enumerate(names)}

    def flat(arrs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([a.ravel() for a in arrs])

    per_output = {}
    for name in names:
        flat_ref, flat_ir = flat(ref[name]), flat(ir[name])
        flat_q = {level: flat(runs[name]) for level, runs in by_level.items()}
        fused = flat_q[executions[0]]
        spread = {level: relative_l2(flat_ref, q) for level, q in flat_q.items()}
        figures = {"ir_vs_fp32": relative_l2(flat_ref, flat_ir), "int8_vs_fp32": spread[executions[0]],
                   "ir_vs_int8": relative_l2(fused, flat_ir), "int8_sqnr_db": sqnr_db(flat_ref, fused),
                   "int8_executions_vs_fp32": spread, "int8_span_vs_fp32": max(spread.values())}
        per_output[name] = figures
        excess = figures["ir_vs_fp32"] - figures["int8_span_vs_fp32"]
        if not np.isfinite(figures["ir_vs_fp32"]) or excess > tolerance:
            worst = int(np.argmax([relative_l2(r, g) for r, g in zip(ref[name], ir[name])]))
            levels = "/".join(spread)
            values = "/".join(f"{v:.4g}" for v in spread.values())
            raise InputError(
                f"IR parity check failed: output {name!r} of the IR is further from the FP32 model than the INT8 "
                f"ONNX model is (relative L2 {figures['ir_vs_fp32']:.4g} vs {figures['int8_span_vs_fp32']:.4g}, the "
                f"furthest of onnxruntime's executions of it at graph optimization levels {levels}: {values}; over "
                f"{len(samples)} validation samples, worst sample {worst}); excess {excess:.4g} > "
                f"export.parity_tolerance {tolerance}. On this output the INT8 ONNX model's own SQNR against FP32 is "
                f"{figures['int8_sqnr_db']:.3g} dB and the IR differs from it by {figures['ir_vs_int8']:.4g} "
                f"(relative L2): validate's per-output fidelity tells a degraded output from a broken conversion")
    worst_of = {key: max((f[key] for f in per_output.values()), default=0.0)
                for key in ("ir_vs_fp32", "int8_vs_fp32", "ir_vs_int8", "int8_span_vs_fp32")}
    return {**worst_of, "per_output": per_output, "samples": len(samples), "int8_executions": list(executions)}


# onnxruntime's graph optimization levels (runtime.sessions.OPTIMIZATION_LEVELS) the IR is judged against: fused
# integer kernels first (validate's execution), QDQ's reference semantics last.
INT8_EXECUTIONS = ("all", "basic", "none")


def _int8_executions(int8_path: Path) -> tuple[str, ...]:
    """The executions of the INT8 model to measure: onnxruntime's levels for an ONNX model; one for an IR (OpenVINO
    runs it) and for a model over 2 GB (without fusion its weights are dequantized to float on every run)."""
    from ptqflow.runtime import openvino as ov
    from ptqflow.runtime.model_files import PROTO_LIMIT, stored_bytes

    if ov.is_ir(int8_path) or stored_bytes(int8_path) > PROTO_LIMIT:
        return INT8_EXECUTIONS[:1]
    return INT8_EXECUTIONS


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

    from ptqflow.runtime import openvino as ov

    start = time.monotonic()
    out = Path(out)
    ec = cfg.export
    # validate's accuracy-controlled model when it published one (validation.accuracy_control), else quantize's
    int8_dir = int8_artifact(Path(inputs["quantized"]), inputs.get("report"))
    int8_path, fp32_path = model_file(int8_dir), model_file(Path(inputs["model"]))
    digests = input_digests(inputs)
    c = ov.core()
    ov.check_device(c, ec.openvino_device)  # before any work: an absent device is a clear error at once
    samples = _samples(Path(inputs["calibration"]))
    written = [out / "model.xml", out / "model.bin"]
    try:
        int8_model = ov.convert(int8_path)
        if ov.is_ir(int8_path):  # FakeQuantize over float weights: int8 weights on export, as POT's
            ov.compress_weights(int8_model)
        ov_.save_model(int8_model, str(out / "model.xml"), compress_to_fp16=False)
        del int8_model  # one model in memory at a time: for a model over 2 GB each copy is gigabytes
        ov.compile_model(c, c.read_model(str(out / "model.xml")), ec.openvino_device)
        parity = check_parity(out / "model.xml", int8_path, fp32_path, samples, ec.openvino_device,
                              ec.parity_tolerance)
        fp32_model = ov.convert(fp32_path)  # after the parity check has released its FP32 session
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
    metrics = {"parity_ir_vs_fp32": parity["ir_vs_fp32"], "parity_int8_vs_fp32": parity["int8_vs_fp32"],
               "parity_ir_vs_int8": parity["ir_vs_int8"], "parity_int8_span_vs_fp32": parity["int8_span_vs_fp32"],
               "parity_tolerance": ec.parity_tolerance,
               "fake_quantize": int8_stats["fake_quantize"], "int8_constants": int8_stats["int8_constants"],
               "bin_bytes": bin_bytes, "fp32_bin_bytes": fp32_bytes,
               "fp32_bin_bytes_source": "fp32/model.bin" if ec.export_fp32 else "constant bytes of the FP32 model",
               "size_ratio": bin_bytes / fp32_bytes if fp32_bytes else None}
    return write_manifest(out, step=NAME, config=config_section(cfg), inputs=digests, metrics=metrics,
                          timings={"total_s": round(time.monotonic() - start, 3)},
                          extra={"device": ec.openvino_device, "parity": parity,
                                 "int8_from": "validate (accuracy control)" if int8_dir != Path(inputs["quantized"])
                                 else "quantize",
                                 "weight_precisions": int8_stats["constants_by_precision"]})
