"""Quantizer placement on small graphs built in code."""

from __future__ import annotations

import pytest

import builders as B
from ptqflow.algorithms.placement import build_plan
from ptqflow.config import IgnoredScope, ModelType, QuantizationConfig, Subgraph, TargetDevice
from ptqflow.errors import InputError
from ptqflow.graph.prepare import prepare_model


def _plan(model, **kw):
    prepared, _ = prepare_model(model)
    return prepared, build_plan(prepared, QuantizationConfig(**kw))


def _points(plan):
    return {p["tensor"]: p for p in plan["activations"]}


def test_conv_bn_relu_chain_folds_bn_and_quantizes_after_activations():
    prepared, plan = _plan(B.conv_classifier())
    assert "BatchNormalization" not in {n.op_type for n in prepared.graph.node}
    points = _points(plan)
    # MaxPool and Flatten are agnostic: the GAP/Gemm input quantizers move above them
    assert set(points) == {"input", "r1", "r2", "gap"}
    conv_outputs = {n.output[0] for n in prepared.graph.node if n.op_type == "Conv"}
    assert not conv_outputs & set(points), "no quantizer between a Conv and its activation"
    assert {w["op_type"] for w in plan["weights"]} == {"Conv", "Gemm"}
    assert all(w["axis"] is not None for w in plan["weights"])


def test_residual_add_and_concat_share_one_quantizer_per_tensor():
    _, plan = _plan(B.residual_concat())
    points = _points(plan)
    assert set(points) == {"input", "r1", "r2", "res"}
    assert points["r1"]["group"] == points["r2"]["group"], "Concat inputs share one scale"
    assert {e[0] for e in points["r1"]["edges"]} == {"conv_b", "residual", "concat"}
    assert len(plan["activations"]) == len({p["tensor"] for p in plan["activations"]})


def test_npu_target_skips_elementwise_quantizers():
    _, plan = _plan(B.residual_concat(), target_device=TargetDevice.NPU)
    edges = {e[0] for p in plan["activations"] for e in p["edges"]}
    assert "residual" in edges  # Add is quantizable on NPU
    _, plan_gpu = _plan(B.conv_classifier(), target_device=TargetDevice.GPU)
    assert plan_gpu["target_device"] == "GPU"


def test_attention_block_transformer_keeps_softmax_layernorm_float():
    prepared, plan = _plan(B.tiny_encoder(), model_type=ModelType.TRANSFORMER)
    ops = {n.name: n.op_type for n in prepared.graph.node}
    consumers = {e[0] for p in plan["activations"] for e in p["edges"]}
    assert {ops[c] for c in consumers} <= {"MatMul", "Gemm", "Reshape", "Transpose"}
    float_ops = {ops[f["node"]] for f in plan["float_layers"]}
    assert "Add" in float_ops
    inits = {t.name for t in prepared.graph.initializer}
    act_act = {n.name for n in prepared.graph.node if n.op_type == "MatMul" and n.input[1] not in inits}
    assert len(act_act) == 2
    aa_points = [p for p in plan["activations"] if any(e[0] in act_act for e in p["edges"])]
    assert aa_points and all(p["symmetric"] for p in aa_points), "activation x activation MatMul is symmetric"
    assert any(not p["symmetric"] for p in plan["activations"]), "MIXED: other activations asymmetric"
    assert plan["preset"] == "mixed"


def test_transformer_detected_automatically_by_safeguard():
    _, plan = _plan(B.tiny_encoder())
    assert plan["transformer"] is True
    assert any("auto_safeguard" in w for w in plan["warnings"])


def test_nothing_downstream_of_nms_or_topk():
    _, plan = _plan(B.detection_head())
    floats = {f["node"]: f["reason"] for f in plan["float_layers"]}
    assert "NonMaxSuppression" in floats["post_fc"] or "TopK" in floats["post_fc"]
    weighted = {n for w in plan["weights"] for n, _ in w["nodes"]}
    assert "box_fc" in weighted and "post_fc" not in weighted


def test_ignored_scope_names_patterns_types_subgraphs():
    base = B.residual_concat()
    _, plan = _plan(base, ignored_scope=IgnoredScope(names=["conv_c"]))
    assert "conv_c" in {f["node"] for f in plan["float_layers"]}
    _, plan = _plan(base, ignored_scope=IgnoredScope(patterns=["conv_[cd]"]))
    assert {"conv_c", "conv_d"} <= {f["node"] for f in plan["float_layers"]}
    _, plan = _plan(base, ignored_scope=IgnoredScope(types=["Add"]))
    assert "residual" in {f["node"] for f in plan["float_layers"]}
    _, plan = _plan(base, ignored_scope=IgnoredScope(subgraphs=[Subgraph(inputs=["r1"], outputs=["out_d"])]))
    assert "conv_d" in {f["node"] for f in plan["float_layers"]}


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
