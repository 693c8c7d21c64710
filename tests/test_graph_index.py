"""ptqflow.quantization.graph.index.GraphIndex: the one graph index, and where its two constant-ness predicates differ."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from builders import conv_classifier, tiny_encoder
from ptqflow.quantization.graph.index import GraphIndex, attr
from ptqflow.quantization.graph.prepare import prepare_model


def _model(nodes, inits, outputs=("y",)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_maps():
    model = _model([helper.make_node("Mul", ["x", "x"], ["m"], name="mul"),
                    helper.make_node("Add", ["m", "c"], ["y"], name="add")], {"c": [1.0, 2.0]})
    idx = GraphIndex(model)
    assert [n.name for n in idx.nodes] == ["mul", "add"]
    assert idx.by_name["add"].op_type == "Add"
    assert idx.producer["m"].name == "mul" and "x" not in idx.producer
    assert [(n.name, i) for n, i in idx.consumers["x"]] == [("mul", 0), ("mul", 1)]
    assert [n.name for n in idx.consumer_nodes("m")] == ["add"]
    assert set(idx.inits) == {"c"} and idx.outputs == {"y"}
    assert idx.is_constant("c") and idx.is_const_input("c")
    assert not idx.is_constant("m") and not idx.is_const_input("m")
    assert idx.float_init("c").tolist() == [1.0, 2.0] and idx.const_shape("c") == (2,)
    assert GraphIndex(model.graph).producer.keys() == idx.producer.keys()


def test_attr():
    node = helper.make_node("Gemm", ["a", "b"], ["c"], transB=1)
    assert attr(node, "transB", 0) == 1 and attr(node, "alpha", 1.0) == 1.0


def test_constant_predicates_differ_only_on_random_like_and_subgraph_ops():
    """is_constant (bias correction) excludes *Like random ops, Multinomial and nodes with subgraphs fed
    constants; is_const_input (placement) counts them as constant. Both exclude RandomNormal/RandomUniform."""
    branch = helper.make_graph([helper.make_node("Identity", ["c"], ["b_out"])], "b", [],
                               [helper.make_tensor_value_info("b_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("RandomNormalLike", ["c"], ["rnl"]),
        helper.make_node("RandomNormal", [], ["rn"], shape=[2]),
        helper.make_node("Greater", ["c", "c"], ["cond"]),
        helper.make_node("If", ["cond"], ["iff"], then_branch=branch, else_branch=branch),
        helper.make_node("Relu", ["c"], ["relu"]),
        helper.make_node("Add", ["rnl", "iff"], ["y"]),
    ]
    idx = GraphIndex(_model(nodes, {"c": [1.0, -1.0]}))
    assert {t: (idx.is_constant(t), idx.is_const_input(t)) for t in ("rnl", "rn", "iff", "relu", "y", "x")} == {
        "rnl": (False, True), "rn": (False, False), "iff": (False, True), "relu": (True, True),
        "y": (False, True), "x": (False, False)}


def test_constant_predicates_agree_on_builder_models():
    for model in (conv_classifier(), tiny_encoder()):
        for m in (model, prepare_model(model)[0]):
            idx = GraphIndex(m)
            names = {t for n in m.graph.node for t in list(n.input) + list(n.output) if t}
            assert all(idx.is_constant(t) == idx.is_const_input(t) for t in names)
