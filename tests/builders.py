"""Tiny ONNX models built in code for the tests (no stored binaries).

Every builder returns an ``onnx.ModelProto`` with deterministic random weights, opset 17 and an IR version
onnxruntime accepts. Add builders here rather than in individual test files so every test shares them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(nodes, inputs, outputs, initializers, name="tiny", opset=OPSET) -> onnx.ModelProto:
    """Wrap nodes into a checked model with ptqflow's test opset and IR version."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="ptqflow-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def conv_classifier(
    seed: int = 0, channels: int = 8, classes: int = 5, size: int = 16, dynamic_batch: bool = True
) -> onnx.ModelProto:
    """input[N,3,size,size] -> Conv -> BatchNorm -> Relu -> Conv(+bias) -> Relu -> MaxPool -> GlobalAveragePool
    -> Flatten -> Gemm(+bias) -> logits[N,classes]."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("w1", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
        _init("bn_scale", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        _init("bn_bias", rng.normal(0, 0.1, c).astype(np.float32)),
        _init("bn_mean", rng.normal(0, 0.1, c).astype(np.float32)),
        _init("bn_var", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        _init("w2", rng.normal(0, 0.2, (c, c, 3, 3)).astype(np.float32)),
        _init("b2", rng.normal(0, 0.1, c).astype(np.float32)),
        _init("fc_w", rng.normal(0, 0.3, (classes, c)).astype(np.float32)),
        _init("fc_b", rng.normal(0, 0.1, classes).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    batch = "N" if dynamic_batch else 1
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])]
    return make_model(nodes, inputs, outputs, inits, name="conv_classifier")


def mlp(seed: int = 0, features: int = 16, hidden: int = 32, out: int = 4, seq: bool = False) -> onnx.ModelProto:
    """input[N,(S,)features] -> MatMul + Add (bias) -> Relu -> MatMul + Add -> output: transformer-style linear layers."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (features, hidden)).astype(np.float32)),
        _init("b1", rng.normal(0, 0.1, hidden).astype(np.float32)),
        _init("w2", rng.normal(0, 0.3, (hidden, out)).astype(np.float32)),
        _init("b2", rng.normal(0, 0.1, out).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["mm1"], name="fc1"),
        helper.make_node("Add", ["mm1", "b1"], ["a1"], name="fc1_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["mm2"], name="fc2"),
        helper.make_node("Add", ["mm2", "b2"], ["output"], name="fc2_bias"),
    ]
    in_shape = ["N", "S", features] if seq else ["N", features]
    out_shape = ["N", "S", out] if seq else ["N", out]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)]
    return make_model(nodes, inputs, outputs, inits, name="mlp")


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write a model to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def random_inputs(n: int, shape, seed: int = 0, name: str = "input") -> list[dict[str, np.ndarray]]:
    """``n`` single-sample input dicts of the given per-sample shape (batch dim 1 prepended)."""
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(0, 1, (1, *shape)).astype(np.float32)} for _ in range(n)]
