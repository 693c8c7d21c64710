"""Cross-layer equalization with bias absorption (graph/passes/equalize.py): the same function, equal channel
ranges, skipped Clip pairs, and a lower quantization error on a model whose channel ranges need it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

import builders
import ptqflow
from ptqflow.config import AdvancedParameters
from ptqflow.quantization.graph.passes.equalize import find_pairs
from ptqflow.quantization.graph.prepare import prepare_model

CLE = AdvancedParameters(cross_layer_equalization=True, bias_absorption_sigmas=0)


def _run(model, samples) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, s)[0] for s in samples])


def _weights(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _pair_ranges(model):
    """(first layer's output channel max |w|, second layer's input channel max |w|) of each pair."""
    w = _weights(model)
    pairs, _ = find_pairs(model)
    for p in pairs:
        w1, w2 = w[p.first.input[1]], w[p.second.input[1]]
        r2 = np.abs(w2).max(axis=(0, 2, 3)) if w2.shape[1] > 1 else np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
        yield p, np.abs(w1).reshape(w1.shape[0], -1).max(axis=1), r2


def test_equalized_model_computes_the_same_function_with_equal_channel_ranges():
    model = builders.separable_block(spread=100.0)
    samples = builders.random_inputs(4, (3, 12, 12))
    plain, _ = prepare_model(model)
    equalized, _ = prepare_model(model, CLE)
    ref, out = _run(plain, samples), _run(equalized, samples)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    ranges = list(_pair_ranges(equalized))
    assert [(p.first.name, p.act.op_type, p.second.name) for p, _, _ in ranges] == [
        ("conv1", "Relu", "dw"), ("dw", "Relu", "pointwise")]
    for _, r1, r2 in ranges:
        np.testing.assert_allclose(r1, r2, rtol=1e-3)
    before = [r1.min() / r1.max() for _, r1, _ in _pair_ranges(plain)]
    after = [r1.min() / r1.max() for _, r1, _ in ranges]
    assert before[0] < 0.05 and after[0] > 5 * before[0]  # conv1's unbalanced channels, balanced


def _batchnorms_fitted(model, samples):
    """``model`` with each BatchNormalization's mean and variance those of its input on ``samples`` (as
    training leaves them), so that its output has mean beta and deviation |gamma| per channel."""
    from onnx import helper, numpy_helper
    model = _copy(model)
    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = _copy(model)
        probe.graph.output.append(helper.make_tensor_value_info(bn.input[0], 1, None))
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.concatenate([sess.run([bn.input[0]], s)[0] for s in samples])
        for name, value in ((bn.input[3], x.mean(axis=(0, 2, 3))), (bn.input[4], x.var(axis=(0, 2, 3)))):
            init = next(t for t in model.graph.initializer if t.name == name)
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def test_bias_absorption_moves_a_relu_inputs_floor_into_the_pointwise_layer():
    samples = builders.random_inputs(4, (3, 12, 12), seed=1)
    # ReLU inputs of mean 8 and deviation <= 1: above beta - 6 gamma (>= 2) on every input here
    model = _batchnorms_fitted(builders.separable_block(beta=8.0), samples)
    absorbing = AdvancedParameters(cross_layer_equalization=True, bias_absorption_sigmas=6)
    plain, _ = prepare_model(model)
    absorbed, _ = prepare_model(model, absorbing)
    lines = [line for line in _changes(model, absorbing) if line.startswith("equalized")]
    assert "bias absorbed" not in lines[0]  # conv1 -> dw: the depthwise conv is padded, W2 c is not uniform
    assert lines[1].endswith(", bias absorbed")  # dw -> pointwise (1x1, unpadded)
    ref, out = _run(plain, samples), _run(absorbed, samples)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    # the depthwise output (the pointwise layer's quantized input) lost its floor of at least 2 per channel
    dw_bias = lambda m: _weights(m)[next(n for n in m.graph.node if n.name == "dw").input[2]]  # noqa: E731
    equalized_only, _ = prepare_model(model, CLE)
    assert (dw_bias(absorbed) <= dw_bias(equalized_only) - 1.0).all()


def _changes(model, advanced=CLE) -> list[str]:
    from ptqflow.quantization.graph.passes import run_graph_passes
    _, results = run_graph_passes(_copy(model), advanced)
    return next(r for r in results if r.name == "cross_layer_equalization").changes


def _copy(model):
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_relu6_pairs_are_skipped_and_said_so():
    model = builders.separable_block(spread=100.0, relu6=True)
    changes = _changes(model)
    assert changes[0] == "skipped Conv dw -> Clip -> Conv pointwise: a Clip (ReLU6) does not commute with " \
                         "per-channel scaling"
    assert changes[1].startswith("equalized Conv conv1 -> Relu -> Conv dw")
    samples = builders.random_inputs(2, (3, 12, 12))
    ref, out = _run(prepare_model(model)[0], samples), _run(prepare_model(model, CLE)[0], samples)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_off_by_default_and_lower_quantization_error_where_channel_ranges_differ():
    model = builders.separable_block(spread=300.0, beta=0.5)
    calibration = builders.random_inputs(16, (3, 12, 12), seed=2)
    held_out = builders.random_inputs(8, (3, 12, 12), seed=3)
    ref = _run(model, held_out)

    def error(**advanced) -> float:
        q = ptqflow.quantize(model, ptqflow.Dataset(calibration), subset_size=16, advanced_parameters=
                             AdvancedParameters(auto_safeguards=False, disable_bias_correction=True, **advanced))
        return float(((_run(q, held_out) - ref) ** 2).mean() / ref.var())

    assert not AdvancedParameters().cross_layer_equalization
    default, equalized = error(), error(cross_layer_equalization=True)
    assert equalized < 0.5 * default, (default, equalized)
