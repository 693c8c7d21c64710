"""export-ir: INT8 IR from a hand-made QDQ model, int8 weights in the .bin, parity and device checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import builders
from ptqflow.artifacts.manifest import read_manifest, write_manifest
from ptqflow.config import PipelineConfig
from ptqflow.data.shards import INDEX_FILE, ShardWriter
from ptqflow.errors import DeviceUnavailableError, InputError
from ptqflow.pipeline.steps import export_ir

FEATURES, HIDDEN, OUT = 64, 128, 16


def qdq_mlp(seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]]:
    """(FP32 model, hand-made QDQ model, int8 weight codes): input -> Q/DQ -> MatMul(int8 W1 via DQ) -> Relu
    -> Q/DQ -> MatMul(int8 W2 via DQ) -> output. The FP32 model uses the dequantized weights."""
    rng = np.random.default_rng(seed)
    codes = {"w1": rng.integers(-127, 128, (FEATURES, HIDDEN), dtype=np.int8),
             "w2": rng.integers(-127, 128, (HIDDEN, OUT), dtype=np.int8)}
    scales = {"w1": np.float32(0.002), "w2": np.float32(0.003)}
    init = builders._init
    inits = [init("a_scale", np.float32(8 / 255)), init("a_zp", np.uint8(128)),
             init("h_scale", np.float32(4 / 255)), init("h_zp", np.uint8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "a_scale", "a_zp"], ["in_q"], name="in_quant"),
             helper.make_node("DequantizeLinear", ["in_q", "a_scale", "a_zp"], ["in_dq"], name="in_dequant")]
    for w in ("w1", "w2"):
        inits += [init(f"{w}_q", codes[w]), init(f"{w}_scale", scales[w]), init(f"{w}_zp", np.int8(0))]
        nodes.append(helper.make_node("DequantizeLinear", [f"{w}_q", f"{w}_scale", f"{w}_zp"], [f"{w}_dq"],
                                      name=f"{w}_dequant"))
    nodes += [helper.make_node("MatMul", ["in_dq", "w1_dq"], ["mm1"], name="fc1"),
              helper.make_node("Relu", ["mm1"], ["r1"], name="relu1"),
              helper.make_node("QuantizeLinear", ["r1", "h_scale", "h_zp"], ["r1_q"], name="r1_quant"),
              helper.make_node("DequantizeLinear", ["r1_q", "h_scale", "h_zp"], ["r1_dq"], name="r1_dequant"),
              helper.make_node("MatMul", ["r1_dq", "w2_dq"], ["output"], name="fc2")]
    io = ([helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", OUT])])
    int8 = builders.make_model(nodes, *io, inits, name="qdq_mlp")
    fp32 = builders.make_model(
        [helper.make_node("MatMul", ["input", "w1"], ["mm1"], name="fc1"), helper.make_node("Relu", ["mm1"], ["r1"]),
         helper.make_node("MatMul", ["r1", "w2"], ["output"], name="fc2")], *io,
        [init(w, codes[w].astype(np.float32) * scales[w]) for w in ("w1", "w2")], name="mlp_fp32")
    return fp32, int8, codes


def make_artifacts(root: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    fp32, int8, codes = qdq_mlp()
    dirs = {k: root / k for k in ("quantized", "model", "calibration")}
    builders.save(fp32, dirs["model"] / "model.onnx")
    builders.save(int8, dirs["quantized"] / "model.onnx")
    writer = ShardWriter(dirs["calibration"] / "validation", 1 << 20, with_labels=False)
    for s in builders.random_inputs(6, (FEATURES,), seed=5):
        writer.add({"input": s["input"][0]}, None)
    writer.flush()
    (dirs["calibration"] / INDEX_FILE).write_text("{}")
    for name, d in dirs.items():
        write_manifest(d, step=name, config={}, inputs={})
    return dirs, codes


def _cfg(**export) -> PipelineConfig:
    return PipelineConfig.model_validate({"export": export})


def test_export_writes_int8_ir_with_manifest_figures(tmp_path):
    dirs, codes = make_artifacts(tmp_path)
    out = tmp_path / "ir"
    out.mkdir()
    m = export_ir.run(dirs, out, _cfg(export_fp32=True))
    blob = (out / "model.bin").read_bytes()
    for w in ("w1", "w2"):  # the int8 codes themselves are stored in the .bin
        assert codes[w].tobytes() in blob
    fp32_bin = (out / "fp32" / "model.bin").stat().st_size
    assert m.metrics["bin_bytes"] == len(blob) and m.metrics["fp32_bin_bytes"] == fp32_bin
    assert 0.2 < len(blob) / fp32_bin < 0.3  # about a quarter
    assert m.metrics["int8_constants"] >= 2 and m.extra["weight_precisions"].get("i8", 0) >= 2
    assert m.metrics["fake_quantize"] >= 2  # the two activation Q/DQ pairs
    parity = m.extra["parity"]
    assert parity["samples"] == 6 and m.metrics["parity_ir_vs_int8"] == parity["ir_vs_int8"]
    assert parity["ir_vs_int8"] < 0.05  # the same QDQ graph in two runtimes
    # the INT8 ONNX model's own SQNR against FP32 on the same samples, computed here from onnxruntime's outputs
    import onnxruntime as ort

    runs = [[ort.InferenceSession(str(dirs[k] / "model.onnx")).run(["output"], s)[0].astype(np.float64)
             for s in export_ir._samples(dirs["calibration"])] for k in ("model", "quantized")]
    ref, q = (np.concatenate([a.ravel() for a in r]) for r in runs)
    expected = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - q) ** 2))
    assert parity["per_output"]["output"]["int8_sqnr_db"] == pytest.approx(expected, abs=0.01)
    assert m.metrics["parity_ir_vs_fp32"] - m.metrics["parity_int8_vs_fp32"] <= 0.05
    # the IR is judged against onnxruntime's executions of the INT8 model, the last one QDQ's reference semantics
    figures = parity["per_output"]["output"]
    assert parity["int8_executions"] == ["all", "basic", "none"] == list(figures["int8_executions_vs_fp32"])
    assert figures["int8_span_vs_fp32"] == max(figures["int8_executions_vs_fp32"].values()) >= figures["int8_vs_fp32"]
    assert m.metrics["parity_int8_span_vs_fp32"] == parity["int8_span_vs_fp32"]
    w = {k: codes[k].astype(np.float64) * s for k, s in (("w1", 0.002), ("w2", 0.003))}

    def qdq(x, scale, zp):  # QuantizeLinear (round half to even, saturate to uint8) then DequantizeLinear
        return (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale

    reference = [qdq(np.maximum(qdq(s["input"].astype(np.float64), np.float32(8 / 255), 128) @ w["w1"], 0),
                     np.float32(4 / 255), 0) @ w["w2"] for s in export_ir._samples(dirs["calibration"])]
    ref_q = np.concatenate([a.ravel() for a in reference])
    assert figures["int8_executions_vs_fp32"]["none"] == pytest.approx(
        np.linalg.norm(ref_q - ref) / np.linalg.norm(ref), rel=1e-4)
    assert {"model.xml", "model.bin", "fp32/model.xml", "fp32/model.bin"} <= set(read_manifest(out).outputs)


def test_export_without_fp32_ir_estimates_its_size(tmp_path):
    dirs, _ = make_artifacts(tmp_path)
    out = tmp_path / "ir"
    out.mkdir()
    m = export_ir.run(dirs, out, _cfg())
    assert not (out / "fp32").exists()
    assert m.metrics["fp32_bin_bytes"] == 4 * (FEATURES * HIDDEN + HIDDEN * OUT)
    assert m.metrics["size_ratio"] < 0.3


def test_parity_fails_when_ir_weights_tampered(tmp_path):
    dirs, codes = make_artifacts(tmp_path)
    out = tmp_path / "ir"
    out.mkdir()
    export_ir.run(dirs, out, _cfg())
    blob = bytearray((out / "model.bin").read_bytes())
    at = bytes(blob).index(codes["w1"].tobytes())
    blob[at: at + codes["w1"].nbytes] = (-codes["w1"]).tobytes()  # flip the sign of every W1 weight
    (out / "model.bin").write_bytes(bytes(blob))
    samples = export_ir._samples(dirs["calibration"])
    with pytest.raises(InputError, match=r"output 'output' of the IR is further from the FP32 model .* the furthest "
                                         r"of onnxruntime's executions of it at graph optimization levels "
                                         r"all/basic/none: .* worst sample \d+\); excess .* > "
                                         r"export.parity_tolerance 0.05\. On this output the "
                                         r"INT8 ONNX model's own SQNR against FP32 is \d.* dB and the IR differs "
                                         r"from it by \d"):
        export_ir.check_parity(out / "model.xml", dirs["quantized"] / "model.onnx", dirs["model"] / "model.onnx",
                               samples, "CPU", 0.05)


def test_failed_parity_leaves_no_ir(tmp_path, monkeypatch):
    dirs, _ = make_artifacts(tmp_path)
    out = tmp_path / "ir"
    out.mkdir()
    def failing_parity(*args, **kwargs):
        raise InputError("IR parity check failed: output 'output' ...")

    monkeypatch.setattr(export_ir, "check_parity", failing_parity)
    with pytest.raises(InputError, match="parity"):
        export_ir.run(dirs, out, _cfg())
    assert list(out.iterdir()) == []


def test_absent_device_names_available_ones(tmp_path):
    dirs, _ = make_artifacts(tmp_path)
    out = tmp_path / "ir"
    out.mkdir()
    with pytest.raises(DeviceUnavailableError, match=r"'NPU'.*available: .*CPU"):
        export_ir.run(dirs, out, _cfg(openvino_device="NPU"))
    assert list(out.iterdir()) == []
