"""End-to-end engine behaviour on tiny models: QDQ numerics, output format, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import builders as B
import ptqflow
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.errors import DeviceUnavailableError, InputError
from ptqflow.runtime.sessions import available_providers, make_session


@pytest.mark.parametrize("builder,shape", [(B.conv_classifier, (3, 16, 16)), (B.mlp, (16,)), (B.residual_concat, (3, 8, 8))])
def test_qdq_numerics_match_reference_evaluator(builder, shape):
    model, samples = builder(), B.random_inputs(12, shape)
    q = ptqflow.quantize(model, ptqflow.Dataset(samples))
    onnx.checker.check_model(q)
    assert q.ir_version <= 10
    # the reference evaluator implements QuantizeLinear/DequantizeLinear from opset 19 (same semantics here)
    q19 = onnx.ModelProto()
    q19.CopyFrom(q)
    q19.opset_import[0].version = 19
    ref, sess = ReferenceEvaluator(q19), make_session(q)
    fp32 = make_session(model)
    for s in samples[:4]:
        ours = sess.run(None, s)
        oracle = ref.run(None, s)
        for a, b, f in zip(ours, oracle, fp32.run(None, s)):
            scale = np.abs(f).max()
            # one quantization step of difference at most (rounding of ties may differ by one code)
            assert np.abs(a - b).max() <= 0.05 * scale
            assert np.abs(a - f).max() <= 0.25 * scale


def test_weights_stored_int8_and_file_shrinks():
    model = B.deep_mlp(depth=20, width=64)
    q = ptqflow.quantize(model, B.random_inputs(8, (64,)))
    int8 = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) == 20
    assert all(numpy_helper.to_array(t).min() >= -127 for t in int8)  # narrow range
    assert q.ByteSize() < model.ByteSize() / 3
    dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {t.name for t in int8}]
    assert dq and all(any(a.name == "axis" for a in n.attribute) for n in dq)


def test_uint8_for_nonnegative_ranges_and_presets():
    model, samples = B.conv_classifier(), B.random_inputs(6, (3, 16, 16))
    q = ptqflow.quantize(model, samples)
    zps = {t.name: t.data_type for t in q.graph.initializer if t.name.endswith("_zero_point")}
    assert zps["r1_zero_point"] == onnx.TensorProto.UINT8  # after Relu
    assert zps["input_zero_point"] == onnx.TensorProto.INT8  # symmetric signed input (performance)
    qm = ptqflow.quantize(model, samples, preset=ptqflow.QuantizationPreset.MIXED)
    zp = next(t for t in qm.graph.initializer if t.name == "input_zero_point")
    assert zp.data_type == onnx.TensorProto.UINT8 and numpy_helper.to_array(zp) != 0


def test_opset_11_model_is_upgraded_and_per_channel():
    model = B.conv_classifier()
    model.opset_import[0].version = 11
    q = ptqflow.quantize(model, B.random_inputs(4, (3, 16, 16)))
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_int8")]
    assert all(any(a.name == "axis" for a in n.attribute) for n in dq)


def test_openvino_converts_to_fakequantize(tmp_path):
    ov = pytest.importorskip("openvino")
    q = ptqflow.quantize(B.conv_classifier(), B.random_inputs(4, (3, 16, 16)),
                         advanced_parameters=AdvancedParameters(safeguard_mixed_precision=False))  # all quantized
    onnx.save(q, str(tmp_path / "q.onnx"))
    ov_model = ov.convert_model(str(tmp_path / "q.onnx"))
    types = [op.get_type_name() for op in ov_model.get_ops()]
    assert types.count("FakeQuantize") >= 4


def test_openvino_cpu_runs_mobile_block_convolutions_in_int8(tmp_path):
    """On the CPU plugin every convolution of a conv/hard-swish/SE/residual block runs in int8 with its activation,
    residual Add and output quantizer fused; the only standalone quantizers are the model input and the SE gate."""
    ov = pytest.importorskip("openvino")
    q = ptqflow.quantize(B.mobile_block(), B.random_inputs(8, (3, 16, 16)),
                         advanced_parameters=AdvancedParameters(safeguard_mixed_precision=False))  # all quantized
    onnx.save(q, str(tmp_path / "q.onnx"))
    compiled = ov.Core().compile_model(str(tmp_path / "q.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ops = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        ops.append((info["layerType"].astype(str), info["runtimePrecision"].astype(str),
                    info["originalLayersNames"].astype(str).split(",")))
    convs = [(prec, names) for kind, prec, names in ops if kind == "Convolution"]
    assert len(convs) == 7 and all(prec in ("i8", "u8") for prec, _ in convs)
    standalone = {n for kind, _, names in ops if kind == "FakeQuantize" for n in names}
    assert standalone == {"input_QuantizeLinear", "gate_QuantizeLinear"}
    fused = {n for _, names in convs for n in names}
    assert {"hs_QuantizeLinear", "residual", "res_QuantizeLinear"} <= fused
    elsewhere = {n for kind, _, names in ops if kind != "Convolution" for n in names}
    assert not {"hs_clip", "hs_mul", "hs_div", "swish_sigmoid", "swish_mul"} & elsewhere, "activations fused"


def test_cuda_unavailable_is_an_error_naming_providers():
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDA present")
    with pytest.raises(DeviceUnavailableError, match="CPUExecutionProvider"):
        make_session(B.mlp(), "cuda")
    with pytest.raises(DeviceUnavailableError):
        ptqflow.collect_statistics(B.mlp(), B.random_inputs(2, (16,)), QuantizationConfig(), device="cuda")


# --- bad input ------------------------------------------------------------------------------------------------


def test_wrong_input_name_shape_dtype():
    m = B.conv_classifier()
    good = B.random_inputs(3, (3, 16, 16))
    with pytest.raises(InputError, match=r"sample 2.*'images'|sample 2.*unknown input"):
        ptqflow.collect_statistics(m, good[:2] + [{"images": good[2]["input"]}], QuantizationConfig())
    with pytest.raises(InputError, match=r"sample 1: input 'input' expects shape \[N,3,16,16\], got \[1,3,8,8\]"):
        ptqflow.collect_statistics(m, good[:1] + B.random_inputs(1, (3, 8, 8)), QuantizationConfig())
    with pytest.raises(InputError, match=r"sample 0: input 'input' expects dtype float32, got int64"):
        ptqflow.collect_statistics(m, [{"input": np.zeros((1, 3, 16, 16), np.int64)}], QuantizationConfig())


def test_empty_dataset():
    with pytest.raises(InputError, match="empty"):
        ptqflow.quantize(B.mlp(), [])


def test_nan_activation_names_tensor():
    bad = B.random_inputs(3, (16,))
    bad[1]["input"][0, 3] = np.nan
    with pytest.raises(InputError, match="sample 1: input 'input' holds NaN"):
        ptqflow.quantize(B.mlp(), bad)
    # an activation overflowing to Inf inside the model: the error names the tensor
    from onnx import TensorProto, helper
    m = B.mlp()
    m.graph.initializer.append(numpy_helper.from_array(np.array(1e38, np.float32), "huge"))
    m.graph.node.insert(0, helper.make_node("Mul", ["input", "huge"], ["scaled"], name="scale_up"))
    m.graph.node[1].input[0] = "scaled"
    with pytest.raises(InputError, match="activation tensor '.*' holds NaN or Inf"):
        ptqflow.quantize(m, [{"input": np.full((1, 16), 10.0, np.float32)}])


def test_nothing_to_quantize():
    from onnx import TensorProto, helper
    m = B.make_model([helper.make_node("Relu", ["input"], ["output"], name="relu")],
                     [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                     [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])], [])
    with pytest.raises(InputError, match="nothing to quantize"):
        ptqflow.quantize(m, B.random_inputs(2, (4,)))


def test_truncated_and_non_onnx_files(tmp_path):
    path = B.save(B.conv_classifier(), tmp_path / "m.onnx")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="m.onnx"):
        ptqflow.quantize(path, B.random_inputs(2, (3, 16, 16)))
    other = tmp_path / "notes.onnx"
    other.write_text("hello, not a model")
    with pytest.raises(InputError, match="notes.onnx"):
        ptqflow.quantize(other, B.random_inputs(2, (3, 16, 16)))
    with pytest.raises(InputError, match="does not exist"):
        ptqflow.quantize(tmp_path / "missing.onnx", [])


def test_ignored_scope_without_match_via_quantize():
    with pytest.raises(InputError, match="'nope'"):
        ptqflow.quantize(B.mlp(), B.random_inputs(2, (16,)), ignored_scope=ptqflow.IgnoredScope(names=["nope"]))


def test_model_with_external_data_from_path(tmp_path):
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(B.conv_classifier(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.data", size_threshold=0)
    q = ptqflow.quantize(path, B.random_inputs(3, (3, 16, 16)))
    onnx.checker.check_model(q)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in q.graph.initializer)
