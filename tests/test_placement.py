"""Quantizer placement on small graphs built in code."""

from __future__ import annotations

import pytest

import builders as B
from ptqflow.quantization.algorithms.quantizer_placement import build_plan
from ptqflow.config import AdvancedParameters, IgnoredScope, ModelType, QuantizationConfig, Subgraph, TargetDevice
from ptqflow.errors import InputError
from ptqflow.quantization.graph.prepare import prepare_model


def _plan(model, **kw):
    prepared, _ = prepare_model(model)
    return prepared, build_plan(prepared, QuantizationConfig(**kw))


def _points(plan):
    return {p.tensor: p for p in plan.activations}


def test_conv_bn_relu_chain_folds_bn_and_quantizes_after_activations():
    prepared, plan = _plan(B.conv_classifier())
    assert "BatchNormalization" not in {n.op_type for n in prepared.graph.node}
    points = _points(plan)
    # MaxPool and Flatten are agnostic: the GAP/Gemm input quantizers move above them
    assert set(points) == {"input", "r1", "r2", "gap"}
    conv_outputs = {n.output[0] for n in prepared.graph.node if n.op_type == "Conv"}
    assert not conv_outputs & set(points), "no quantizer between a Conv and its activation"
    assert {w.op_type for w in plan.weights} == {"Conv", "Gemm"}
    assert all(w.axis is not None for w in plan.weights)


def test_residual_add_and_concat_share_one_quantizer_per_tensor():
    _, plan = _plan(B.residual_concat())
    points = _points(plan)
    assert set(points) == {"input", "r1", "r2", "res"}
    assert points["r1"].group == points["r2"].group, "Concat inputs share one scale"
    assert {e[0] for e in points["r1"].edges} == {"conv_b", "residual", "concat"}
    assert len(plan.activations) == len({p.tensor for p in plan.activations})


def test_tensors_meeting_at_a_concat_share_symmetry_as_well_as_scale():
    """r1 is read by conv_b (symmetric) and, with r2, through the Concat by conv_d in an asymmetric region: one
    group, so one grid for both (symmetric, as r1 must be); two grids at a Concat leave the layer reading it in
    float on the runtime. A group read only from the asymmetric region stays asymmetric."""
    from ptqflow.quantization.algorithms.quantizer_placement.activations import place_activations
    from ptqflow.quantization.graph.index import GraphIndex

    prepared, _ = prepare_model(B.residual_concat())
    g = GraphIndex(prepared)
    residual = [("r1", "residual", 0, False), ("r2", "residual", 1, False)]
    both = {p["tensor"]: p for p in place_activations(
        g, [("r1", "conv_b", 0, False), ("cat", "conv_d", 0, False)] + residual, set(), True, {"conv_d", "residual"})}
    assert both["r1"]["group"] == both["r2"]["group"]
    assert both["r1"]["symmetric"] and both["r2"]["symmetric"]
    alone = {p["tensor"]: p for p in place_activations(g, [("cat", "conv_d", 0, False)] + residual, set(), True,
                                                       {"conv_d", "residual"})}
    assert not alone["r1"]["symmetric"] and not alone["r2"]["symmetric"]


def test_decomposed_activations_get_no_inner_quantizers():
    """Hard-swish x*Clip(x+3,0,6)/6, x*HardSigmoid(x) and swish x*Sigmoid(x) are activations: no quantizer
    between a Conv and them nor inside them, so the runtime fuses them into the INT8 convolution."""
    prepared, plan = _plan(B.mobile_block())
    points = _points(plan)
    inner = {"d", "d3", "d3c", "dm", "e", "eh", "h", "hsg"}  # conv outputs feeding activations, activation internals
    assert not inner & set(points)
    consumers = {e[0] for p in plan.activations for e in p.edges}
    assert not {"hs_mul", "act_mul", "swish_mul"} & consumers
    assert {e[0] for e in points["hs"].edges} == {"se_gap", "se_mul"}, "one quantizer after the whole hard-swish"
    assert {e[0] for e in points["a"].edges} == {"head"}
    assert not plan.float_layers, "activations are not float layers either"


def test_squeeze_excite_gate_multiply_quantized_on_both_inputs():
    """The SE Mul(x, HardSigmoid(...)) is an int8 eltwise on the CPU plugin: x gets one quantizer shared with the
    pooling branch (so the producing conv fuses it) and the gate its own."""
    _, plan = _plan(B.mobile_block())
    points = _points(plan)
    assert ("se_mul", 0) in points["hs"].edges and ("se_gap", 0) in points["hs"].edges
    assert points["gate"].edges == [("se_mul", 1)]
    assert points["se"].edges == [("proj", 0)]


def test_residual_add_of_linear_conv_output_quantizes_both_inputs():
    _, plan = _plan(B.mobile_block())
    points = _points(plan)
    assert points["p"].edges == [("residual", 0)], "the conv side: fused by the runtime as a sum post-op"
    assert {tuple(e) for e in points["r0"].edges} == {("dw", 0), ("residual", 1)}
    assert points["res"].edges == [("expand", 0)]


RULED_HEAD = AdvancedParameters(safeguard_softmax_heads=True)


def test_by_default_the_softmax_head_is_placed_like_any_layer():
    """Left at None the rule stands down for the measurement (mixed precision), so placement quantizes the head;
    with mixed precision off the rule stands in."""
    _, plan = _plan(B.mask_and_class_heads())
    assert "fc" not in {f.node for f in plan.float_layers}
    assert "fc" in {n for w in plan.weights for n, _ in w.nodes}
    _, plan = _plan(B.mask_and_class_heads(), advanced=AdvancedParameters(safeguard_mixed_precision=False))
    assert "fc" in {f.node for f in plan.float_layers}


def test_softmax_head_float_sigmoid_map_head_quantized():
    """The rule, asked for (by default mixed precision measures the head instead)."""
    _, plan = _plan(B.mask_and_class_heads(), advanced=RULED_HEAD)
    floats = {f.node: f.reason for f in plan.float_layers}
    assert "Softmax" in floats["fc"]
    assert "mask_up" not in floats
    weighted = {n for w in plan.weights for n, _ in w.nodes}
    assert "mask_up" in weighted and "fc" not in weighted
    assert ("mask_up", 0) in _points(plan)["r"].edges


def test_softmax_head_walk_follows_values_not_shape_branches():
    """The head's last layer is found behind Reshape(Softmax(Flatten(logits)), Shape(logits)), whose Shape branch
    the walk once reached first; a layer whose shape alone reaches the Softmax (aux) stays quantized."""
    _, plan = _plan(B.shape_branch_head(), advanced=RULED_HEAD)
    floats = {f.node: f.reason for f in plan.float_layers}
    assert list(floats) == ["fc"] and "Softmax" in floats["fc"]
    weighted = {n for w in plan.weights for n, _ in w.nodes}
    assert weighted == {"conv", "aux"}


def test_npu_target_skips_elementwise_quantizers():
    _, plan = _plan(B.residual_concat(), target_device=TargetDevice.NPU)
    edges = {e[0] for p in plan.activations for e in p.edges}
    assert "residual" in edges  # Add is quantizable on NPU
    _, plan_gpu = _plan(B.conv_classifier(), target_device=TargetDevice.GPU)
    assert plan_gpu.target_device == "GPU"


def test_attention_block_transformer_keeps_softmax_layernorm_float():
    prepared, plan = _plan(B.tiny_encoder(), model_type=ModelType.TRANSFORMER)
    ops = {n.name: n.op_type for n in prepared.graph.node}
    consumers = {e[0] for p in plan.activations for e in p.edges}
    assert {ops[c] for c in consumers} <= {"MatMul", "Gemm", "Reshape", "Transpose"}
    float_ops = {ops[f.node] for f in plan.float_layers}
    assert "Add" in float_ops
    inits = {t.name for t in prepared.graph.initializer}
    act_act = {n.name for n in prepared.graph.node if n.op_type == "MatMul" and n.input[1] not in inits}
    assert len(act_act) == 2
    aa_points = [p for p in plan.activations if any(e[0] in act_act for e in p.edges)]
    assert aa_points and all(p.symmetric for p in aa_points), "activation x activation MatMul is symmetric"
    assert any(not p.symmetric for p in plan.activations), "MIXED: other activations asymmetric"
    assert plan.preset == "mixed"


def test_transformer_detected_automatically_by_safeguard():
    prepared, plan = _plan(B.tiny_encoder())
    assert plan.transformer is True
    assert any("auto_safeguard" in w and "asymmetric (MIXED)" in w for w in plan.warnings)
    # as a declared transformer would, from the first LayerNorm on: inputs of the weighted MatMuls asymmetric,
    # activation x activation MatMul inputs (Q, K, V heads, attention probabilities) symmetric
    sym = {p.tensor: p.symmetric for p in plan.activations}
    assert not sym["x0"] and not sym["x1"] and not sym["gelu"], sym
    assert sym["q_lin"] and sym["k_lin"] and sym["v_lin"] and sym["probs"], sym
    assert sym["tok"], "the embedding sum before the first LayerNorm is outside the region: symmetric"


def test_detected_transformer_keeps_a_preset_the_user_chose():
    from ptqflow.config import QuantizationPreset

    _, plan = _plan(B.tiny_encoder(), preset=QuantizationPreset.PERFORMANCE)
    assert plan.transformer is True and all(p.symmetric for p in plan.activations)
    assert not any("asymmetric" in w for w in plan.warnings)


def test_nothing_downstream_of_nms_or_topk():
    _, plan = _plan(B.detection_head())
    floats = {f.node: f.reason for f in plan.float_layers}
    assert "NonMaxSuppression" in floats["post_fc"] or "TopK" in floats["post_fc"]
    weighted = {n for w in plan.weights for n, _ in w.nodes}
    assert "box_fc" in weighted and "post_fc" not in weighted


def test_ignored_scope_names_patterns_types_subgraphs():
    base = B.residual_concat()
    _, plan = _plan(base, ignored_scope=IgnoredScope(names=["conv_c"]))
    assert "conv_c" in {f.node for f in plan.float_layers}
    _, plan = _plan(base, ignored_scope=IgnoredScope(patterns=["conv_[cd]"]))
    assert {"conv_c", "conv_d"} <= {f.node for f in plan.float_layers}
    _, plan = _plan(base, ignored_scope=IgnoredScope(types=["Add"]))
    assert "residual" in {f.node for f in plan.float_layers}
    _, plan = _plan(base, ignored_scope=IgnoredScope(subgraphs=[Subgraph(inputs=["r1"], outputs=["out_d"])]))
    assert "conv_d" in {f.node for f in plan.float_layers}


@pytest.mark.parametrize("scope,needle", [
    (IgnoredScope(names=["nope"]), "nope"),
    (IgnoredScope(patterns=["zzz.*"]), "zzz"),
    (IgnoredScope(types=["LSTM"]), "LSTM"),
])
def test_ignored_scope_without_match_is_an_error(scope, needle):
    with pytest.raises(InputError, match=needle):
        _plan(B.conv_classifier(), ignored_scope=scope)
    scope.validate = False
    _plan(B.conv_classifier(), ignored_scope=scope)  # no error when not validating


def test_nothing_to_quantize_is_an_error():
    with pytest.raises(InputError, match="nothing to quantize"):
        _plan(B.conv_classifier(), ignored_scope=IgnoredScope(types=["Conv", "Gemm", "GlobalAveragePool"]))


def test_statistics_of_a_decomposed_normalization_get_no_quantizer():
    """A mean, E[h^2], E[h]^2, the variance and 1/sigma are computed from reductions: the elementwise ops reading
    them read them in float, while h (read by the square and the centering) and the normalized output keep theirs
    (int8 codes of E[h^2] and E[h]^2 cancel where a row's mean is large against its spread: magika's first
    LayerNorm, docs/algorithms.md). Rows of mean 10 and spread 0.5 then normalize well in int8."""
    import numpy as np

    import ptqflow
    from ptqflow.runtime.sessions import make_session

    _, plan = _plan(B.decomposed_layernorm())
    points = _points(plan)
    assert not {"mean", "mean_sq", "sq_mean", "var", "inv", "sigma", "var_eps", "sum", "sum_sq"} & set(points)
    assert {e[0] for e in points["h"].edges} == {"square", "center"}
    assert {e[0] for e in points["normed"].edges} == {"fc2"} and ("fc1", 0) in points["input"].edges

    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (16, 1, 16, 8))
    z = (z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True)  # every row: mean 10, spread 0.5
    samples = [{"input": (10.0 + 0.5 * row).astype(np.float32)} for row in z]
    model = B.decomposed_layernorm()
    q = ptqflow.quantize(model, samples, subset_size=16, advanced_parameters=AdvancedParameters(
        safeguard_mixed_precision=False))
    ref, out = make_session(model), make_session(q)
    for s in samples[:4]:
        a, b = ref.run(None, s)[0], out.run(None, s)[0]
        assert np.sum((a - b) ** 2) < 0.05 * np.sum(a ** 2)  # SQNR above 13 dB on every sample
