"""ptqflow.quantization.graph.passes: each graph pass on a tiny model, its switch, and prepare_model running them."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import builders
from ptqflow.config import AdvancedParameters
from ptqflow.errors import InputError
from ptqflow.quantization.graph.passes import GRAPH_PASSES, run_graph_passes
from ptqflow.quantization.graph.passes.clamp_ir_version import ClampIrVersion
from ptqflow.quantization.graph.passes.drop_initializer_inputs import DropInitializerInputs
from ptqflow.quantization.graph.passes.fold_batchnorm import FoldBatchnorm
from ptqflow.quantization.graph.passes.infer_shapes import InferShapes
from ptqflow.quantization.graph.passes.name_nodes import NameNodes
from ptqflow.quantization.graph.passes.ort_basic_optimize import OrtBasicOptimize
from ptqflow.quantization.graph.passes.upgrade_opset import UpgradeOpset
from ptqflow.quantization.graph.prepare import prepare_model

# The order documented in ptqflow.quantization.graph.passes and docs/architecture.md.
SEQUENCE = ["drop_initializer_inputs", "upgrade_opset", "clamp_ir_version", "batchnorm_bounds", "ort_basic_optimize",
            "fold_batchnorm", "cross_layer_equalization", "name_nodes", "infer_shapes", "clamp_ir_version"]
OPT_IN = ("batchnorm_bounds", "cross_layer_equalization")  # off by default (advanced.cross_layer_equalization)
OFF = AdvancedParameters(graph_constant_folding=False, graph_fold_batchnorm=False)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _constant_transpose() -> onnx.ModelProto:
    """x[N,4] MatMul Transpose(wt) -> y[N,3]: the Transpose of an initializer is a constant subgraph."""
    wt = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    nodes = [helper.make_node("Transpose", ["wt"], ["w"], name="transpose", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")]
    return builders.make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                               [numpy_helper.from_array(wt, "wt")], name="constant_transpose")


def test_the_sequence_is_the_documented_one_and_the_switches_are_the_optimizations():
    assert [p.name for p in GRAPH_PASSES] == SEQUENCE
    assert {p.name: p.switch for p in GRAPH_PASSES if p.switch} == {
        "ort_basic_optimize": "graph_constant_folding", "fold_batchnorm": "graph_fold_batchnorm",
        "batchnorm_bounds": "cross_layer_equalization", "cross_layer_equalization": "cross_layer_equalization"}
    assert [p.name for p in GRAPH_PASSES if p.enabled(AdvancedParameters())] == [n for n in SEQUENCE if n not in OPT_IN]
    assert [p.name for p in GRAPH_PASSES if p.enabled(OFF)] == [n for n in SEQUENCE if n not in
                                                                 ("ort_basic_optimize", "fold_batchnorm") + OPT_IN]
    _, results = run_graph_passes(builders.conv_classifier(), AdvancedParameters(cross_layer_equalization=True))
    assert [r.name for r in results] == SEQUENCE
    _, results = run_graph_passes(builders.conv_classifier(), AdvancedParameters(graph_fold_batchnorm=False))
    assert "fold_batchnorm" not in [r.name for r in results]


def test_drop_initializer_inputs():
    old = builders.initializers_as_inputs(builders.conv_classifier(), ir_version=3)
    model, result = DropInitializerInputs().run(old)
    assert [vi.name for vi in model.graph.input] == ["input"] and model.ir_version == 4
    assert result.name == "drop_initializer_inputs" and result.changed
    assert result.changes == ["9 graph input(s) backed by an initializer treated as weights", "ir_version 3 -> 4"]
    model, result = DropInitializerInputs().run(builders.conv_classifier())
    assert not result.changed and result.changes == [] and len(model.graph.input) == 1


def test_upgrade_opset():
    old = builders.conv_classifier()
    old.opset_import[0].version = 11
    model, result = UpgradeOpset().run(old)
    assert model.opset_import[0].version == 13
    assert result.changed and result.changes == ["opset 11 -> 13"] and result.warnings == []
    current = builders.conv_classifier()
    model, result = UpgradeOpset().run(current)
    assert model is current and not result.changed


def test_an_opset_that_cannot_be_upgraded_is_a_warning_returned_by_prepare_model(monkeypatch):
    from onnx import version_converter

    def fail(model, version):
        raise RuntimeError("no adapter for Foo")

    monkeypatch.setattr(version_converter, "convert_version", fail)
    old = builders.conv_classifier()
    old.opset_import[0].version = 11
    model, result = UpgradeOpset().run(old)
    assert model is old and not result.changed
    assert result.warnings == ["could not upgrade opset 11 to 13 (no adapter for Foo); weights fall back to "
                               "per-tensor scales"]
    assert prepare_model(old)[1] == result.warnings


@pytest.mark.parametrize("before,after,changes", [
    (12, 10, ["ir_version 12 -> 10"]), (0, 10, ["ir_version 0 (unset) -> 10"]), (8, 8, [])])
def test_clamp_ir_version(before, after, changes):
    model = builders.mlp()
    model.ir_version = before
    model, result = ClampIrVersion().run(model)
    assert model.ir_version == after and result.changes == changes and result.changed is bool(changes)


def test_ort_basic_optimize_fuses_batchnorm_and_folds_constants():
    model, result = OrtBasicOptimize().run(builders.conv_classifier())
    assert "BatchNormalization" not in _ops(model)
    assert result.changed and "BatchNormalization nodes: 1 -> 0" in result.changes
    model, result = OrtBasicOptimize().run(_constant_transpose())
    assert _ops(model) == ["MatMul"] and "Transpose nodes: 1 -> 0" in result.changes
    relu = builders.make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [])
    _, result = OrtBasicOptimize().run(relu)
    assert not result.changed and result.changes == []


def test_ort_basic_optimize_refuses_a_model_onnxruntime_cannot_load():
    wrong = builders.mlp()
    next(t for t in wrong.graph.initializer if t.name == "w2").CopyFrom(
        numpy_helper.from_array(np.zeros((5, 4), np.float32), "w2"))
    with pytest.raises(InputError, match="onnxruntime cannot load the model"):
        OrtBasicOptimize().run(wrong)


def test_fold_batchnorm_keeps_the_outputs():
    model = builders.conv_classifier()
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"input": x})[0]
    folded, result = FoldBatchnorm().run(_copy(model))
    assert "BatchNormalization" not in _ops(folded)
    assert result.name == "fold_batchnorm" and result.changes == ["folded BatchNormalization bn1 into Conv conv1"]
    conv1 = next(n for n in folded.graph.node if n.name == "conv1")
    assert list(conv1.input) == ["input", "w1", "c1_folded_bias"] and list(conv1.output) == ["bn1"]
    np.testing.assert_allclose(ReferenceEvaluator(folded).run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)
    _, again = FoldBatchnorm().run(folded)
    assert not again.changed


def test_fold_batchnorm_names_unnamed_nodes_by_their_output():
    model = builders.conv_classifier()
    for node in model.graph.node:
        node.name = ""
    _, result = FoldBatchnorm().run(model)
    assert result.changes == ["folded BatchNormalization (unnamed, output bn1) into Conv (unnamed, output c1)"]


def test_name_nodes():
    model = builders.conv_classifier()
    model.graph.node[0].name = ""
    model.graph.node[2].name = "Conv_0"  # taken: the new name gets a suffix
    model, result = NameNodes().run(model)
    assert model.graph.node[0].name == "Conv_0_"
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    assert result.changes == ["named 1 unnamed node(s): Conv_0_"]
    unnamed = builders.deep_mlp(depth=4)
    for node in unnamed.graph.node:
        node.name = ""
    _, result = NameNodes().run(unnamed)
    assert result.changes[0].startswith(f"named {len(unnamed.graph.node)} unnamed node(s): MatMul_0, ")
    assert result.changes[0].endswith(f"({len(unnamed.graph.node) - 5} more)")
    _, result = NameNodes().run(builders.conv_classifier())
    assert not result.changed


def test_infer_shapes():
    model = builders.conv_classifier()
    assert not model.graph.value_info
    inferred, result = InferShapes().run(model)
    shapes = {vi.name: vi for vi in inferred.graph.value_info}
    assert "bn1" in shapes and shapes["bn1"].type.tensor_type.elem_type == TensorProto.FLOAT
    assert result.changes == [f"shapes of {len(shapes)} intermediate value(s) inferred"]
    _, again = InferShapes().run(inferred)
    assert not again.changed


def test_switches_off_leave_batchnorm_and_constants_in_the_graph():
    cnn = builders.conv_classifier()
    assert "BatchNormalization" in _ops(prepare_model(cnn, OFF)[0])
    # Either one folds the BatchNorm: onnxruntime's optimizer first, the own pass for what it left.
    assert "BatchNormalization" not in _ops(prepare_model(cnn, AdvancedParameters(graph_fold_batchnorm=False))[0])
    assert "BatchNormalization" not in _ops(prepare_model(cnn, AdvancedParameters(graph_constant_folding=False))[0])
    constants = _constant_transpose()
    unfolded = prepare_model(constants, AdvancedParameters(graph_constant_folding=False))[0]
    assert _ops(unfolded) == ["Transpose", "MatMul"]
    assert _ops(prepare_model(constants)[0]) == ["MatMul"]


@pytest.mark.parametrize("build", [builders.conv_classifier, builders.tiny_encoder, builders.mobile_block])
def test_prepare_model_default_is_advanced_parameters_default(build):
    model = build()
    default = prepare_model(model)
    explicit = prepare_model(model, AdvancedParameters())
    assert default[0].SerializeToString() == explicit[0].SerializeToString() and default[1] == explicit[1] == []
    assert prepare_model(model)[0].SerializeToString() == default[0].SerializeToString()  # deterministic
    assert model.SerializeToString() == build().SerializeToString()  # the caller's model is left alone


def test_prepare_model_logs_each_change(caplog):
    old = builders.initializers_as_inputs(builders.conv_classifier(), ir_version=3)
    with caplog.at_level(logging.INFO, logger="ptqflow.quantization.graph.prepare"):
        prepare_model(old)
    lines = [r.getMessage() for r in caplog.records if r.name == "ptqflow.quantization.graph.prepare"]
    assert "drop_initializer_inputs: 9 graph input(s) backed by an initializer treated as weights" in lines
    assert "ort_basic_optimize: BatchNormalization nodes: 1 -> 0" in lines


def test_ort_basic_optimize_says_when_writing_failed_not_the_model(monkeypatch, tmp_path):
    """onnxruntime fails alike on a model it cannot load and on an optimized copy it cannot write (a full disk):
    the second is a storage failure (exit 5, retryable) naming the scratch directory, not a bad model."""
    import contextlib

    from ptqflow.errors import StorageError
    from ptqflow.quantization.graph.passes import ort_basic_optimize

    @contextlib.contextmanager
    def unwritable(prefix):  # the optimized model's path is taken by a directory: the write fails
        scratch = tmp_path / "scratch"
        (scratch / "opt.onnx").mkdir(parents=True, exist_ok=True)
        yield str(scratch)

    monkeypatch.setattr(ort_basic_optimize, "scratch_dir", unwritable)
    with pytest.raises(StorageError, match=f"writing the optimized model to the scratch directory {tmp_path}") as err:
        OrtBasicOptimize().run(builders.conv_classifier())
    assert err.value.exit_code == 5 and err.value.retryable
    wrong = builders.mlp()  # a model onnxruntime cannot load stays an input error under the same failure
    next(t for t in wrong.graph.initializer if t.name == "w2").CopyFrom(
        numpy_helper.from_array(np.zeros((5, 4), np.float32), "w2"))
    with pytest.raises(InputError, match="onnxruntime cannot load the model"):
        OrtBasicOptimize().run(wrong)


@pytest.mark.parametrize("op,opset", [("HardSwish", 14), ("Mish", 18)])
def test_ort_basic_optimize_puts_back_the_function_ops_onnxruntime_inlines(op, opset):
    """onnxruntime writes HardSwish as x * HardSigmoid(x) and Mish as x * Tanh(Softplus(x)); the pass puts the op
    back (OpenVINO fuses HardSwish into the convolution, not its body), with the same outputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["a"], name="act"),
             helper.make_node("Conv", ["a", "w"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    model = builders.make_model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                                [w], opset=opset)
    out, result = OrtBasicOptimize().run(model)
    assert _ops(out) == ["Conv", op, "Conv"]
    assert f"{op} nodes restored from onnxruntime's inlined bodies: 1" in result.changes
    feed = {"x": np.random.default_rng(1).normal(size=(2, 4, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(ReferenceEvaluator(out).run(None, feed)[0], ReferenceEvaluator(model).run(None, feed)[0],
                               rtol=1e-5, atol=1e-5)


def test_ort_basic_optimize_leaves_a_model_s_own_decomposition_alone():
    """x * HardSigmoid(x) written by the model itself (no HardSwish in it) stays as written."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="hsig", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["x", "h"], ["y"], name="mul")]
    model = builders.make_model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [],
                                opset=14)
    out, result = OrtBasicOptimize().run(model)
    assert _ops(out) == ["HardSigmoid", "Mul"] and not result.changed
