"""quant_format QOperator / IntegerOps, activation and weight types, given parameters and target_runtime
onnxruntime: the written models agree with the QDQ model they re-express (onnx.reference.ReferenceEvaluator, with
numpy definitions of onnxruntime's contrib ops), onnxruntime runs them, and onnxruntime's optimizer fuses the
onnxruntime-targeted QDQ model into its QLinear kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from pydantic import ValidationError

import builders as B
import ptqflow
from contrib_reference import CONTRIB_OPS
from ptqflow.config import AdvancedParameters
from ptqflow.errors import InputError
from ptqflow.quantization.writers import write

MODELS = [(B.conv_classifier, (3, 16, 16)), (B.mlp, (16,)), (B.residual_concat, (3, 8, 8)), (B.mobile_block, (3, 16, 16))]

# Every planned quantizer in int8 (no measured float decisions): these tests compare formats, not decisions.
EXACT = AdvancedParameters(safeguard_mixed_precision=False)


def _reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    # the reference evaluator implements QuantizeLinear/DequantizeLinear from opset 19 (same semantics here)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, 19)
    return ReferenceEvaluator(m, new_ops=CONTRIB_OPS)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _agree_within_a_step(qdq: onnx.ModelProto, written: onnx.ModelProto, samples: list[dict]) -> None:
    """Every output of ``written`` within one quantization step (the output's range / 255) of ``qdq``'s, both
    evaluated by the reference evaluator; onnxruntime's result on ``written`` too."""
    ref_qdq, ref_w = _reference(qdq), _reference(written)
    sess = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    for s in samples:
        for a, b, c in zip(ref_qdq.run(None, s), ref_w.run(None, s), sess.run(None, s)):
            step = (a.max() - a.min()) / 255
            assert np.abs(a - b).max() <= step
            assert np.abs(a - c).max() <= step


@pytest.mark.parametrize("builder,shape", MODELS)
@pytest.mark.parametrize("fmt", [ptqflow.QuantFormat.QOperator, ptqflow.QuantFormat.IntegerOps])
def test_written_formats_agree_with_qdq(builder, shape, fmt):
    samples = B.random_inputs(8, shape)
    qdq = ptqflow.quantize(builder(), samples, advanced_parameters=EXACT, target_runtime="onnxruntime")
    written = onnx.ModelProto()
    written.CopyFrom(qdq)
    written = write(written, fmt)
    ops = _ops(written)
    if fmt == ptqflow.QuantFormat.QOperator:
        # every weighted layer became an integer op, but a Conv writing a graph output (no output quantizer)
        outputs = {o.name for o in written.graph.output}
        assert all(n.output[0] in outputs for n in written.graph.node if n.op_type in ("Conv", "Gemm"))
        assert "QLinearConv" in ops or "QGemm" in ops
    else:
        # every weighted layer that reads a DequantizeLinear (not one moved up through MaxPool for onnxruntime)
        producer = {o: n.op_type for n in qdq.graph.node for o in n.output}
        assert ops.count("ConvInteger") + ops.count("MatMulInteger") == sum(
            n.op_type in ("Conv", "Gemm", "MatMul") and producer.get(n.input[0]) == "DequantizeLinear"
            for n in qdq.graph.node)
    _agree_within_a_step(qdq, written, samples[:4])


@pytest.mark.parametrize("fmt,expected", [("qoperator", {"QLinearConv", "QLinearAdd"}),
                                          ("integer_ops", {"ConvInteger"})])
def test_quantize_writes_the_format(fmt, expected):
    samples = B.random_inputs(8, (3, 8, 8))
    q = ptqflow.quantize(B.residual_concat(), samples, advanced_parameters=EXACT, quant_format=fmt)
    assert expected <= set(_ops(q))
    assert any(n.domain == "com.microsoft" for n in q.graph.node) == (fmt == "qoperator")
    ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, samples[0])


@pytest.mark.parametrize("activation_type,weight_type,preset", [("int8", "int8", None), ("uint8", "uint8", None),
                                                                 ("uint8", "int8", "mixed")])
def test_types(activation_type, weight_type, preset):
    samples = B.random_inputs(8, (3, 16, 16))
    q = ptqflow.quantize(B.mobile_block(), samples, advanced_parameters=EXACT, target_runtime="onnxruntime", activation_type=activation_type,
                         weight_type=weight_type, preset=preset)
    inits = {t.name: t for t in q.graph.initializer}
    want = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].data_type == want[activation_type]
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type != onnx.TensorProto.INT32:
            assert inits[n.input[0]].data_type == want[weight_type]
    written = onnx.ModelProto()
    written.CopyFrom(q)
    _agree_within_a_step(q, write(written, ptqflow.QuantFormat.QOperator), samples[:2])


def test_onnxruntime_fuses_every_conv_of_the_onnxruntime_placement(tmp_path):
    samples = B.random_inputs(8, (3, 16, 16))
    model = B.mobile_block()
    fused = {}
    for runtime in ("openvino", "onnxruntime"):
        q = ptqflow.quantize(model, samples, advanced_parameters=EXACT, target_runtime=runtime)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / f"{runtime}.onnx")
        ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
        fused[runtime] = _ops(onnx.load(so.optimized_model_filepath))
    convs = _ops(model).count("Conv")
    assert fused["onnxruntime"].count("QLinearConv") == convs  # every Conv runs as onnxruntime's int8 kernel
    assert fused["openvino"].count("QLinearConv") < convs  # OpenVINO's placement leaves float Convs
    assert "QLinearMul" in fused["onnxruntime"] and "QLinearGlobalAveragePool" in fused["onnxruntime"]


def test_given_parameters_replace_calibrated_ones():
    samples = B.random_inputs(8, (3, 8, 8))
    q = ptqflow.quantize(B.residual_concat(), samples, advanced_parameters=EXACT, target_runtime="onnxruntime",
                         input_quantization_params={"r1": [3, 0.05]}, output_quantization_params={"res": [0, 0.1]})
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    params = {n.input[0]: (int(inits[n.input[2]]), float(inits[n.input[1]])) for n in q.graph.node
              if n.op_type == "QuantizeLinear"}
    assert params["r1"] == (3, pytest.approx(0.05)) and params["res"] == (0, pytest.approx(0.1))


def test_given_parameters_for_an_unknown_tensor_are_refused():
    with pytest.raises(InputError, match="input_quantization_params: tensor 'nope' is not in the model"):
        ptqflow.quantize(B.residual_concat(), B.random_inputs(4, (3, 8, 8)), input_quantization_params={"nope": [0, 1.0]})


def test_nbits_other_than_8_refused():
    with pytest.raises(ValidationError, match="(?s)nbits.*8-bit integers only.*nbits=4"):
        ptqflow.quantize(B.mlp(), B.random_inputs(4, (16,)), nbits=4)


@pytest.mark.parametrize("builder,inputs", [(B.mlp, lambda: B.random_inputs(4, (16,))),
                                            (B.tiny_encoder, lambda: B.token_inputs(4))])
def test_quantize_dynamic_needs_no_data_and_fuses_on_onnxruntime(builder, inputs, tmp_path):
    model = builder()
    q = ptqflow.quantize_dynamic(model)
    ops = _ops(q)
    assert ops.count("DynamicQuantizeLinear") == ops.count("MatMulInteger") > 0 and "QuantizeLinear" not in ops
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = _ops(onnx.load(so.optimized_model_filepath))
    assert "DynamicQuantizeMatMul" in fused and "MatMulInteger" not in fused  # onnxruntime's fused kernel
    ref, fp32 = _reference(q), ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for s in inputs():
        f, ours, oracle = fp32.run(None, s)[0], sess.run(None, s)[0], ref.run(None, s)[0]
        assert np.abs(ours - oracle).max() <= 1e-4 * np.abs(f).max()  # onnxruntime computes what the graph says
        assert np.abs(ours - f).max() <= 0.05 * np.abs(f).max()


def _fp32_and_ours(model: onnx.ModelProto, q: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feed = {model.graph.input[0].name: x}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    return run(model), run(q)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_dynamic_lstm_is_onnxruntimes_int8_lstm(bidirectional, per_channel, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = B.recurrent("LSTM", bidirectional=bidirectional)
    q = ptqflow.quantize_dynamic(model, per_channel=per_channel)
    ops = _ops(q)
    assert "LSTM" not in ops and ops.count("DynamicQuantizeLSTM") == 1 and "MatMulInteger" in ops
    B.save(model, tmp_path / "m.onnx")
    quantize_dynamic(tmp_path / "m.onnx", tmp_path / "ort.onnx", weight_type=QuantType.QInt8, per_channel=per_channel)
    x = np.random.default_rng(1).normal(0, 1, (7, 2, 12)).astype(np.float32)
    f, ours = _fp32_and_ours(model, q, x)
    _, peer = _fp32_and_ours(model, onnx.load(tmp_path / "ort.onnx"), x)
    err, peer_err = np.abs(ours - f).max(), np.abs(peer - f).max()
    assert err <= 0.03 * np.abs(f).max()  # within the int8 error of the weights and the run-time activations
    assert err <= peer_err * (1 + 1e-6)  # no worse than onnxruntime's quantize_dynamic


def test_quantize_dynamic_keeps_gru_float_and_says_why():
    from ptqflow.api import quantize_dynamic_with_summary
    from ptqflow.config import QuantizationConfig

    model = B.recurrent("GRU")
    result = quantize_dynamic_with_summary(model, QuantizationConfig(static=False, quant_format="integer_ops"))
    assert _ops(result.model).count("GRU") == 1 and "MatMulInteger" in _ops(result.model)
    gru = next(r for r in result.layers if r["op_type"] == "GRU")
    assert gru["status"] == "float" and "no int8 GRU kernel" in gru["reason"]
    f, ours = _fp32_and_ours(model, result.model, np.random.default_rng(1).normal(0, 1, (7, 2, 12)).astype(np.float32))
    assert np.abs(ours - f).max() <= 0.03 * np.abs(f).max()


def test_quantize_dynamic_lstm_in_the_ignored_scope_stays_float():
    """Only the LSTM is quantizable once its head is ignored: the model is still quantized (nothing else is)."""
    from ptqflow.config import IgnoredScope

    q = ptqflow.quantize_dynamic(B.recurrent("LSTM"), ignored_scope=IgnoredScope(names=["head"]))
    assert "DynamicQuantizeLSTM" in _ops(q) and "MatMulInteger" not in _ops(q)
    q = ptqflow.quantize_dynamic(B.recurrent("LSTM"), ignored_scope=IgnoredScope(names=["rnn"]))
    assert "LSTM" in _ops(q) and "DynamicQuantizeLSTM" not in _ops(q)


def test_quantize_dynamic_attention_is_qattention():
    model = B.contrib_attention()
    q = ptqflow.quantize_dynamic(model)
    ops = _ops(q)
    assert "Attention" not in ops and ops.count("QAttention") == 1 and ops.count("DynamicQuantizeLinear") == 2
    f, ours = _fp32_and_ours(model, q, np.random.default_rng(1).normal(0, 1, (2, 6, 16)).astype(np.float32))
    assert np.abs(ours - f).max() <= 0.05 * np.abs(f).max()
