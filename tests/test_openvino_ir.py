"""OpenVINO IR in, INT8 IR out: the OpenVINO backend of the engine (quantization.openvino_engine) on tiny models
built with ov.opset, on a builder ONNX model converted with ov.convert_model, and on the real PP-OCR classifier."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import numpy as np
import onnx
import pytest

ov = pytest.importorskip("openvino")

import ptqflow  # noqa: E402
from ptqflow import api  # noqa: E402
from builders import (conv_classifier, ov_conv_block, padded_input_mlp, padded_inputs, random_inputs, save,  # noqa: E402
                      separable_block, shape_branch_head)
from ptqflow.config import AdvancedParameters, QuantizationConfig  # noqa: E402
from ptqflow.errors import ConfigError, InputError  # noqa: E402
from ptqflow.quantization.graph.openvino_view import build_view  # noqa: E402

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _types(model) -> collections.Counter:
    return collections.Counter(n.get_type_name() for n in model.get_ordered_ops())


def _fq_inputs(model) -> list[tuple[str, tuple]]:
    """(consumer op type, input index) of every FakeQuantize's readers, sorted."""
    found = []
    for n in model.get_ordered_ops():
        if n.get_type_name() == "FakeQuantize":
            for t in n.output(0).get_target_inputs():
                found.append((t.get_node().get_type_name(), t.get_index()))
    return sorted(found)


def _run(model, samples, config=None):
    compiled = ov.Core().compile_model(model, "CPU", config or {})
    return [compiled(s)[0] for s in samples]


def test_view_maps_ops_and_weights_to_onnx_form():
    view = build_view(ov_conv_block(f16_weights=True)).view
    ops = [n.op_type for n in view.graph.node]
    assert ops == ["Conv", "Add", "Relu", "Conv", "Add", "Relu", "GlobalAveragePool", "Reshape", "Gemm", "Add",
                   "Softmax"]
    inits = {t.name: tuple(t.dims) for t in view.graph.initializer}
    dw = view.graph.node[3]
    assert next(a.i for a in dw.attribute if a.name == "group") == 8
    assert inits[dw.input[1]] == (8, 1, 3, 3)  # [G, 1, 1, 3, 3] in ONNX's layout
    assert view.graph.initializer[0].data_type == onnx.TensorProto.FLOAT  # the f16 weight decompressed


@pytest.mark.parametrize("f16", [False, True])
def test_ir_built_in_code_gets_fake_quantize_like_qdq(f16):
    model = ov_conv_block(f16_weights=f16)
    samples = random_inputs(8, (3, 12, 12))
    cfg = QuantizationConfig(advanced=AdvancedParameters(safeguard_softmax_heads=False, safeguard_mixed_precision=False))
    result = api.quantize_with_config(model, samples, cfg)
    q = result.model
    assert isinstance(q, ov.Model)
    # 3 weights and the inputs of the two convolutions, the global pooling and the MatMul (moved up through the
    # Reshape), as ONNX's QDQ has them
    assert _types(q)["FakeQuantize"] == 7
    assert _fq_inputs(q) == sorted([("Convolution", 0), ("Convolution", 1), ("GroupConvolution", 0),
                                    ("GroupConvolution", 1), ("ReduceMean", 0), ("Reshape", 0), ("MatMul", 1)])
    assert _types(model)["FakeQuantize"] == 0  # the caller's model is left as it was
    fp32, int8 = _run(model, samples, FP32), _run(q, samples)
    assert max(float(np.abs(a - b).max()) for a, b in zip(fp32, int8)) < 0.05
    applied = [row["bias_correction"]["applied"] for row in result.layers if "bias_correction" in row]
    assert len(applied) == 3


def test_ir_path_matches_onnx_path_on_converted_builder(tmp_path):
    onnx_path = save(conv_classifier(), tmp_path / "m.onnx")
    samples = random_inputs(8, (3, 16, 16))
    cfg = QuantizationConfig(advanced=AdvancedParameters(safeguard_softmax_heads=False, safeguard_mixed_precision=False))
    r_onnx = api.quantize_with_config(str(onnx_path), samples, cfg)
    r_ir = api.quantize_with_config(ov.convert_model(str(onnx_path)), samples, cfg)
    dq = sum(n.op_type == "DequantizeLinear" for n in r_onnx.model.graph.node)
    assert _types(r_ir.model)["FakeQuantize"] == dq
    q_onnx = save(r_onnx.model, tmp_path / "q.onnx")
    ref = _run(ov.convert_model(str(q_onnx)), samples)
    got = _run(r_ir.model, samples)
    scale = max(float(np.abs(r).max()) for r in ref)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, ref)) < 0.02 * scale
    shifts = lambda r: [row["bias_correction"]["max_abs_shift"] for row in r.layers if "bias_correction" in row]
    np.testing.assert_allclose(shifts(r_ir), shifts(r_onnx), rtol=1e-3, atol=1e-6)


def test_a_depthwise_input_gets_a_per_channel_fake_quantize_on_an_ir(tmp_path):
    """Asked for, the IR path gives a depthwise convolution's input a scale per channel as the ONNX path does
    (FakeQuantize bounds shaped [1, C, 1, 1]), and the two models agree."""
    onnx_path = save(separable_block(spread=20.0, size=16), tmp_path / "m.onnx")
    samples = random_inputs(8, (3, 16, 16))
    cfg = QuantizationConfig(advanced=AdvancedParameters(safeguard_mixed_precision=False,
                                                         per_channel_depthwise_inputs=True))
    r_onnx = api.quantize_with_config(str(onnx_path), samples, cfg)
    r_ir = api.quantize_with_config(ov.convert_model(str(onnx_path)), samples, cfg)
    per_channel = [a for a in r_ir.plan.activations if a.axis is not None]
    assert [a.tensor for a in per_channel] == [a.tensor for a in r_onnx.plan.activations if a.axis is not None] != []
    bounds = [op.input_value(1).get_partial_shape().to_shape() for op in r_ir.model.get_ops()
              if op.get_type_name() == "FakeQuantize" and op.get_friendly_name().endswith("/fq_output")]
    assert [1, 8, 1, 1] in [list(b) for b in bounds]
    ref = _run(ov.convert_model(str(save(r_onnx.model, tmp_path / "q.onnx"))), samples)
    got = _run(r_ir.model, samples)
    scale = max(float(np.abs(r).max()) for r in ref)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, ref)) < 0.02 * scale


def test_softmax_head_behind_a_shape_branch_is_float_on_both_paths(tmp_path):
    """The Softmax-head safeguard on an exported head with Shape branches: the same layer stays float on the IR
    (where ShapeOf is a Shape in the view) as on ONNX, so FakeQuantize and QDQ counts agree with it on."""
    onnx_path = save(shape_branch_head(), tmp_path / "m.onnx")
    samples = random_inputs(6, (3, 8, 8))
    cfg = QuantizationConfig(advanced=AdvancedParameters(safeguard_mixed_precision=False))
    r_onnx = api.quantize_with_config(str(onnx_path), samples, cfg)
    r_ir = api.quantize_with_config(ov.convert_model(str(onnx_path)), samples, cfg)
    floats = lambda r: sorted(row["op_type"] for row in r.layers if row["status"] == "float")
    assert floats(r_ir) == floats(r_onnx) == ["Gemm"]
    dq = sum(n.op_type == "DequantizeLinear" for n in r_onnx.model.graph.node)
    assert _types(r_ir.model)["FakeQuantize"] == dq == 5  # conv and aux: weight and input; the pooling input


def test_sensitivity_search_on_an_ir_decides_as_on_onnx(tmp_path):
    """The search runs on the IR (a gated ov.Model) and keeps the ONNX path's quantizer in float, with the same
    measured errors: one input channel 30x the others makes the pooled tensor's quantizer the costly one."""
    onnx_path = save(conv_classifier(seed=3), tmp_path / "m.onnx")
    samples = random_inputs(16, (3, 16, 16), seed=2)
    for s in samples:
        s["input"][:, 0] *= 30
    cfg = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(
        sensitivity_search=True, safeguard_mixed_precision=False, sensitivity_min_error=0.0))
    decided = [[(f.tensor, f.by, f.reason) for f in api.collect_statistics(m, samples, cfg).plan.float_tensors]
               for m in (str(onnx_path), ov.convert_model(str(onnx_path)))]
    assert decided[1] == decided[0] and [d[:2] for d in decided[0]] == [("gap", "sensitivity_search")]


def _fq_readers(model) -> set[tuple[str, int]]:
    """(friendly name, input index) of the op inputs that read a FakeQuantize."""
    return {(t.get_node().get_friendly_name(), t.get_index()) for n in model.get_ordered_ops()
            if n.get_type_name() == "FakeQuantize" for t in n.output(0).get_target_inputs()}


@pytest.mark.parametrize("planted", ["activation", "weight"])
def test_mixed_precision_search_on_an_ir_decides_as_on_onnx(tmp_path, planted):
    """The default quantize runs the error-driven search on an IR (the gated ov.Model, weight gates included) and
    keeps the quantizer the ONNX path keeps in float, with the same measurement. Planted: outlier_mlp's h0, whose
    outlier channel owns its per-tensor scale and rounds the useful channels to zero before the logits; or
    padded_input_mlp's fc1 weight, whose per-channel scales are set by a row that only ever meets zeros."""
    from test_accuracy_control import inputs, outlier_mlp

    from ptqflow.pipeline.report.decisions import float_names
    from ptqflow.pipeline.steps.quantize import with_readers
    from ptqflow.quantization import openvino_engine

    model, data = (outlier_mlp(1), inputs(32, 0)) if planted == "activation" else (padded_input_mlp(),
                                                                                     padded_inputs(32))
    onnx_path = save(model, tmp_path / "m.onnx")
    r_onnx = api.quantize_with_config(str(onnx_path), data, QuantizationConfig())
    ir = ov.convert_model(str(onnx_path))
    r_ir = api.quantize_with_config(ir, data, QuantizationConfig())
    decided = [[(f.tensor, f.by) for f in r.plan.float_tensors] + [f.by for f in r.plan.float_layers]
               for r in (r_onnx, r_ir)]
    assert decided[1] == decided[0] == ([("h0", "mixed_precision")] if planted == "activation"
                                        else ["mixed_precision"])
    found = [(r.plan.float_tensors + r.plan.float_layers)[0].measured for r in (r_onnx, r_ir)]
    assert found[1]["output"] == found[0]["output"] and found[1]["samples"] == found[0]["samples"] == 8
    for key in ("error_int8", "error_float", "gain"):
        assert found[1][key] == pytest.approx(found[0][key], rel=1e-3, abs=1e-5)
    assert not any("mixed_precision" in w for w in r_ir.plan.warnings)
    row = next(r for r in r_ir.layers if r.get("decided_by") == "mixed_precision")
    assert row["status"] == "float" and row["measured"] == found[1]
    # the report's paste-able ignored_scope names the IR's node (the quantize step adds a float tensor's readers)
    layers = with_readers(list(r_ir.layers), openvino_engine.prepare(ir).view.view)
    assert [name for name, by in float_names(layers) if by.startswith("mixed_precision")] == ["fc1"]
    # the INT8 IR: fc1 reads h0 in float, or (its layer float) its weight too
    gone = {("fc1", 0)} if planted == "activation" else {("fc1", 0), ("fc1", 1)}
    plain = api.quantize_with_config(ir, data, QuantizationConfig(advanced=AdvancedParameters(
        safeguard_mixed_precision=False)))
    assert not gone & _fq_readers(r_ir.model) and gone <= _fq_readers(plain.model)
    held_out = inputs(64, 7) if planted == "activation" else padded_inputs(64, seed=9)
    ref = _run(ir, held_out, FP32)
    error = lambda m: sum(float(np.sum((a - b) ** 2)) for a, b in zip(_run(m, held_out, FP32), ref))
    assert error(r_ir.model) < 0.5 * error(plain.model)


def test_xml_path_and_statistics_round_trip(tmp_path):
    xml = tmp_path / "m.xml"
    ov.save_model(ov_conv_block(), str(xml), compress_to_fp16=False)
    samples = random_inputs(6, (3, 12, 12))
    stats = ptqflow.collect_statistics(str(xml), samples)
    stats.save(tmp_path / "stats")
    loaded = type(stats).load(tmp_path / "stats")
    q = ptqflow.apply_quantization(str(xml), loaded, dataset=samples)
    direct = ptqflow.quantize(str(xml), samples)
    a, b = _run(q, samples), _run(direct, samples)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_ir_refuses_smooth_quant_by_name():
    """SmoothQuant is not available for an OpenVINO model: its default (on for transformers) is passed over, another
    alpha asked for is refused by name."""
    with pytest.raises(ConfigError, match="smooth_quant_alpha"):
        api.quantize_with_config(ov_conv_block(), random_inputs(2, (3, 12, 12)),
                                 QuantizationConfig(advanced=AdvancedParameters(smooth_quant_alpha=0.8)))


def _bias_adds(model) -> list:
    """The bias Add of each layer of ov_conv_block (an Add reading a Constant), in graph order."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "Add"
            and any(op.input_value(i).get_node().get_type_name() == "Constant" for i in range(2))]


def _channel_means(model, samples) -> list[np.ndarray]:
    """Per-channel means (axis 1) over ``samples`` of every bias Add's output, the model run whole on OpenVINO."""
    model = model.clone()
    ports = [model.add_outputs(add.output(0))[0] for add in _bias_adds(model)]
    compiled = ov.Core().compile_model(model, "CPU", FP32)
    outs = [compiled(s) for s in samples]
    return [np.mean([o[compiled.outputs[1 + k]].reshape(o[compiled.outputs[1 + k]].shape[0],
                                                        o[compiled.outputs[1 + k]].shape[1], -1).mean(axis=(0, 2))
                     for o in outs], axis=0) for k in range(len(ports))]


def test_full_bias_correction_on_an_ir_built_in_code_restores_fp32_means():
    """BiasCorrection's aim, checked on the whole corrected model: on the samples it fitted, every corrected
    layer's per-channel output mean is the FP32 model's (the upstream corrections carried, segment by segment)."""
    model = ov_conv_block()
    samples = random_inputs(10, (3, 12, 12), seed=3)
    for s in samples:
        s["input"] += np.float32(0.4)
    adv = AdvancedParameters(safeguard_mixed_precision=False, bias_correction_subset_size=6,
                             bias_correction_guard_samples=0, bias_correction_guard_samples_no_softmax=0)
    cfg = QuantizationConfig(subset_size=10, fast_bias_correction=False, advanced=adv)
    result = api.quantize_with_config(model, samples, cfg)
    records = [row["bias_correction"] for row in result.layers if "bias_correction" in row]
    assert [r["samples"] for r in records] == [6, 6, 6] and all(r["applied"] for r in records)
    fp32, corrected = _channel_means(model, samples[:6]), _channel_means(result.model, samples[:6])
    plain = api.quantize_with_config(model, samples, cfg.model_copy(
        update={"advanced": adv.model_copy(update={"disable_bias_correction": True})})).model
    uncorrected = _channel_means(plain, samples[:6])
    for f, c, u in zip(fp32, corrected, uncorrected):
        assert np.abs(f - c).max() < 1e-4 * max(1.0, np.abs(f).max()) < np.abs(f - u).max()
    # the first layer's shift is its uncorrected error; the later ones' also undo what the corrections before did
    assert np.abs(fp32[0] - uncorrected[0]).max() == pytest.approx(records[0]["max_abs_shift"], rel=1e-3)


def test_full_bias_correction_ir_matches_onnx_path_on_converted_builder(tmp_path):
    """The same shifts as the ONNX path's BiasCorrection, and the same guard (held-out samples, then fitted)."""
    onnx_path = save(conv_classifier(), tmp_path / "m.onnx")
    samples = random_inputs(20, (3, 16, 16), seed=4)
    for s in samples:
        s["input"] += np.float32(0.5)
    cfg = QuantizationConfig(subset_size=20, fast_bias_correction=False, advanced=AdvancedParameters(
        safeguard_mixed_precision=False, bias_correction_subset_size=8))
    r_onnx = api.quantize_with_config(str(onnx_path), samples, cfg)
    r_ir = api.quantize_with_config(ov.convert_model(str(onnx_path)), samples, cfg)
    rows = lambda r: [row["bias_correction"] for row in r.layers if "bias_correction" in row]
    onnx_rows, ir_rows = rows(r_onnx), rows(r_ir)
    assert [r["samples"] for r in ir_rows] == [8] * 3
    np.testing.assert_allclose([r["max_abs_shift"] for r in ir_rows], [r["max_abs_shift"] for r in onnx_rows],
                               rtol=1e-3, atol=1e-6)
    assert [r["applied"] for r in ir_rows] == [r["applied"] for r in onnx_rows]
    assert all(r["held_out"] == 8 and r["error_before"] > 0 for r in ir_rows if "error_before" in r)


def test_ir_statistics_in_shards_are_refused():
    with pytest.raises(ConfigError, match="shards"):
        api.collect_partial_statistics(ov_conv_block(), random_inputs(2, (3, 12, 12)), shard=0, shards=2,
                                       num_samples=2)


def _broken_ir(tmp_path: Path, how: str) -> Path:
    xml = tmp_path / "m.xml"
    ov.save_model(ov_conv_block(), str(xml), compress_to_fp16=False)
    bin_path = xml.with_suffix(".bin")
    if how == "no bin":
        bin_path.unlink()
    elif how == "truncated bin":
        bin_path.write_bytes(bin_path.read_bytes()[:100])
    else:
        xml.write_text("<net><layers><layer></net>")
    return xml


@pytest.mark.parametrize("how, words", [("no bin", "weights file"), ("truncated bin", "cannot be read"),
                                        ("not IR", "cannot be read")])
def test_malformed_ir_is_an_input_error(tmp_path, how, words):
    xml = _broken_ir(tmp_path, how)
    with pytest.raises(InputError, match=words) as err:
        ptqflow.quantize(str(xml), random_inputs(2, (3, 12, 12)))
    assert "m.xml" in str(err.value) and err.value.exit_code == 3


def _cls_input(img) -> np.ndarray:
    """A rendered text crop as the PP-OCR classifier reads it: BGR, height 48, right-padded to 192, in [-1, 1]."""
    w = min(192, max(1, round(48 * img.width / img.height)))
    a = np.asarray(img.convert("RGB").resize((w, 48)), np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255
    x = np.zeros((1, 3, 48, 192), np.float32)
    x[0, :, :, :w] = (a - 0.5) / 0.5
    return x


@pytest.mark.slow
@pytest.mark.parametrize("fast", [True, False])
def test_ppocr_cls_ir_matches_onnx_path(fast):
    """The real classifier: the same quantizers (the layer before the Softmax head float on both) and the same
    bias shifts; full BiasCorrection's agree on the first layers and drift apart deeper in the network by the two
    runtimes' INT8 arithmetic (onnxruntime's QDQ against OpenVINO's FakeQuantize)."""
    from ptqflow import demo

    rng = random.Random(0)
    samples = [{"x": _cls_input(demo.render_cls_sample(rng, [])[0])} for _ in range(12)]
    cfg = QuantizationConfig(subset_size=12, fast_bias_correction=fast, advanced=AdvancedParameters(
        safeguard_mixed_precision=False, bias_correction_subset_size=4))
    path = demo.rapidocr_model("cls")
    r_onnx = api.quantize_with_config(str(path), samples, cfg)
    r_ir = api.quantize_with_config(ov.convert_model(str(path)), samples, cfg)
    dq = sum(n.op_type == "DequantizeLinear" for n in r_onnx.model.graph.node)
    assert _types(r_ir.model)["FakeQuantize"] == dq == 132
    layers = lambda r: sorted((row["op_type"], row["status"]) for row in r.layers if row["op_type"] in ("Conv", "Gemm"))
    assert layers(r_ir) == layers(r_onnx)
    shifts = lambda r: np.array([row["bias_correction"]["shift_norm"] for row in r.layers if "bias_correction" in row])
    if fast:
        np.testing.assert_allclose(shifts(r_ir), shifts(r_onnx), rtol=1e-3, atol=1e-6)
        return
    rel = np.abs(shifts(r_ir) - shifts(r_onnx)) / shifts(r_onnx)
    assert rel.size == 54 and rel[:8].max() < 0.02 and np.median(rel) < 0.1, rel


class PotLoader:
    """A POT DataLoader: __len__ and __getitem__ returning (data, annotation[, metadata])."""

    def __init__(self, samples, metadata: bool):
        self.samples, self.metadata = samples, metadata

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        label = np.array([i % 4])  # an array annotation: not to be taken for a second input
        return (self.samples[i]["input"], label, {"id": i}) if self.metadata else (self.samples[i], label)


@pytest.mark.parametrize("metadata", [False, True])
def test_pot_dataloader_is_a_dataset(metadata):
    samples = random_inputs(5, (3, 12, 12))
    cfg = QuantizationConfig(advanced=AdvancedParameters(disable_bias_correction=True))
    model = ov_conv_block()
    ref = api.collect_statistics(model, samples, cfg)
    for dataset in (PotLoader(samples, metadata), ptqflow.Dataset(PotLoader(samples, metadata))):
        got = api.collect_statistics(model, dataset, cfg)
        assert got.num_samples == 5
        assert all(np.array_equal(got.values[k], ref.values[k]) for k in ref.values)


def test_pot_dataloader_item_of_wrong_shape_is_named():
    class Bad(PotLoader):
        def __getitem__(self, i):
            return self.samples[i]

    with pytest.raises(InputError, match="POT DataLoader item 0"):
        api.collect_statistics(ov_conv_block(), Bad(random_inputs(2, (3, 12, 12)), False))


PIPELINE_CONFIG = ("data:\n  validation_size: 6\n  preprocess:\n    method: none\n"
                   "validation:\n  latency_iterations: 2\n  gate:\n    min_speedup: null\n    min_cosine: 0.5\n"
                   "    max_accuracy_drop: null\n")


def test_run_on_an_ir(tmp_path):
    """``ptqflow run --model model.xml``: every step on an IR; the exported IR holds int8 weights."""
    from ptqflow.artifacts.manifest import read_manifest
    from ptqflow.cli import main

    src = tmp_path / "src" / "net.xml"
    src.parent.mkdir()
    ov.save_model(ov_conv_block(size=16), str(src))  # fp16-compressed weights, as ovc writes them
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(18):
        np.save(data / f"s{i:02d}.npy", rng.normal(0, 1, (3, 16, 16)).astype(np.float32))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(PIPELINE_CONFIG)
    out = tmp_path / "out"
    pot = tmp_path / "pot.json"
    pot.write_text(json.dumps({"name": "DefaultQuantization",
                               "params": {"target_device": "ANY", "stat_subset_size": 5}}))
    assert main(["run", "--model", str(src), "--data", str(data), "--output", str(out), "--config", str(cfg),
                 "--pot-config", str(pot)]) == 0
    assert read_manifest(out / "collect-stats").metrics["num_samples"] == 5
    model = read_manifest(out / "fetch-model")
    assert model.extra["format"] == "openvino-ir" and model.extra["inputs"][0]["name"] == "input"
    quantized = ov.Core().read_model(str(out / "quantize" / "model.xml"))
    # every layer int8, the MatMul before the Softmax head too: mixed precision measured its quantizers on the
    # calibration samples (its decisions judged by their argmax) and kept none of them float
    assert _types(quantized)["FakeQuantize"] == 6
    report = json.loads((out / "validate" / "report.json").read_text())
    assert report["verdict"] == "pass" and list(report["speed"]) == ["openvino"]
    exported = ov.Core().read_model(str(out / "export-ir" / "model.xml"))
    int8 = [n for n in exported.get_ordered_ops()
            if n.get_type_name() == "Constant" and n.get_output_element_type(0) == ov.Type.i8]
    assert len(int8) == 3 and read_manifest(out / "export-ir").metrics["int8_constants"] == 3


def test_fetch_model_refuses_an_ir_without_its_bin(tmp_path):
    from ptqflow.cli import main

    xml = _broken_ir(tmp_path, "no bin")
    code = main(["fetch-model", "--model", str(xml), "--out", str(tmp_path / "model")])
    assert code == 3 and not (tmp_path / "model" / "manifest.json").exists()


@pytest.mark.parametrize("text", [
    '{"name": "DefaultQuantization", "params": {"target_device": "CPU", "stat_subset_size": 7, "preset": "mixed"}}',
    "- name: DefaultQuantization\n  params: {target_device: CPU, stat_subset_size: 7, preset: mixed}\n",
])
def test_pot_config_maps_onto_the_config(tmp_path, text):
    from ptqflow.config import load_config
    from ptqflow.config.pot import pot_overrides

    path = tmp_path / "pot.cfg"
    path.write_text(text)
    cfg = load_config(None, pot_overrides(path)).quantization
    assert (cfg.target_device.value, cfg.subset_size, cfg.preset.value) == ("CPU", 7, "mixed")


@pytest.mark.parametrize("doc, words", [
    ({"name": "DefaultQuantization", "params": {"stat_subset_size": 3, "range_estimator": {}}}, "range_estimator"),
    ({"name": "AccuracyAwareQuantization", "params": {}}, "AccuracyAwareQuantization"),
    ({"name": "DefaultQuantization", "params": {}, "extra": 1}, "extra"),
])
def test_pot_config_refuses_unknown_keys_by_name(tmp_path, doc, words):
    from ptqflow.cli import main

    path = tmp_path / "pot.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=words):
        from ptqflow.config.pot import pot_overrides

        pot_overrides(path)
    assert main(["run", "--model", "m.xml", "--pot-config", str(path), "--output", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("update, field", [
    ({"quant_format": "qoperator"}, "quantization.quant_format"),
    ({"static": False}, "quantization.static"),
    ({"target_runtime": "onnxruntime"}, "quantization.target_runtime"),
    ({"weight_type": "uint8"}, "weight_type"),
    ({"input_quantization_params": {"x": [0, 0.1]}}, "quantization.input_quantization_params"),
])
def test_onnxruntime_only_options_are_refused_for_an_ir_by_name(update, field):
    from ptqflow.quantization import openvino_engine

    with pytest.raises(ConfigError, match=field):
        openvino_engine.check_supported(QuantizationConfig(**update), "cpu")


def test_declared_logits_of_an_ir_are_judged_as_decisions(tmp_path, monkeypatch):
    """advanced.decision_outputs on an IR: its view records them, so the guard on OpenVINO judges the logits by
    their decisions (on the decision outputs' 32 samples, not squared error's 8); an unknown name is refused."""
    from ptqflow.quantization.algorithms import openvino_bias

    ir = ov.convert_model(str(save(conv_classifier(seed=1), tmp_path / "m.onnx")))
    data = random_inputs(40, (3, 16, 16), seed=5)
    real, seen = openvino_bias.Judge.__call__, []

    def spy(self, samples):
        seen.append((len(samples), set(self.decisions)))
        return real(self, samples)

    monkeypatch.setattr(openvino_bias.Judge, "__call__", spy)
    for declared, expected in ((None, (8, set())), (["logits"], (32, {"logits"}))):
        config = QuantizationConfig(subset_size=40, advanced=AdvancedParameters(decision_outputs=declared))
        api.quantize_with_summary(ir, api.collect_statistics(ir, data, config), config, dataset=data)
        assert seen[-1] == expected
    with pytest.raises(ConfigError, match=r"decision_outputs: 'logit' is not an output of the model"):
        api.collect_statistics(ir, data, QuantizationConfig(advanced=AdvancedParameters(decision_outputs=["logit"])))


def test_a_reverted_fast_correction_on_an_ir_falls_back_to_full_bias_correction(monkeypatch):
    """As on an ONNX model: the guard reverts FastBiasCorrection, full BiasCorrection is fitted and judged (held
    out, then fitted samples) and, kept, ships with its records; the model is the one full BiasCorrection gives."""
    from ptqflow.quantization.algorithms import bc_guard, openvino_bias

    model = ov_conv_block()
    samples = random_inputs(20, (3, 12, 12), seed=3)
    for s in samples:
        s["input"] += np.float32(0.4)
    keeps = [False, True, True]
    monkeypatch.setattr(openvino_bias.Judge, "__call__", lambda self, judged: bc_guard.Verdict(keeps.pop(0), 2.0, 1.0))
    cfg = QuantizationConfig(subset_size=20, advanced=AdvancedParameters(safeguard_mixed_precision=False,
                                                                         bias_correction_fallback=True))
    result = api.quantize_with_config(model, samples, cfg)
    assert not keeps
    records = [row["bias_correction"] for row in result.layers if "bias_correction" in row]
    assert records and all(r["method"] == "bias_correction" for r in records) and any(r["applied"] for r in records)
    keeps[:] = [True, True]
    full = api.quantize_with_config(model, samples, cfg.model_copy(update={
        "fast_bias_correction": False, "advanced": cfg.advanced.model_copy(update={"bias_correction_subset_size": 8})}))
    for a, b in zip(_channel_means(result.model, samples[:4]), _channel_means(full.model, samples[:4])):
        np.testing.assert_array_equal(a, b)
