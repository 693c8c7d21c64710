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


def coarse_qdq(
    model: onnx.ModelProto,
    samples: list[dict[str, np.ndarray]],
    weight_levels: int = 7,
    quantize_activations: bool = True,
) -> onnx.ModelProto:
    """A hand-made QDQ version of ``model`` whose weights are quantized coarsely enough to shift output means.

    Every Conv/ConvTranspose/Gemm/MatMul initializer weight becomes DequantizeLinear(int8, per-tensor scale
    with ``weight_levels`` codes); with ``quantize_activations`` each such layer's input gets a uint8 Q/DQ pair
    whose range is the FP32 min/max over ``samples``. Node names, tensor names and float biases are kept.
    """
    import onnxruntime as ort

    q = onnx.ModelProto()
    q.CopyFrom(model)
    graph = q.graph
    inits = {t.name: t for t in graph.initializer}
    layers = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.input[1] in inits]
    ranges: dict[str, tuple[float, float]] = {}
    if quantize_activations:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        acts = sorted({n.input[0] for n in layers})
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(helper.make_empty_tensor_value_info(a) for a in acts if a not in known)
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        for sample in samples:
            for name, value in zip(acts, session.run(acts, sample)):
                lo, hi = ranges.get(name, (0.0, 0.0))
                ranges[name] = (min(lo, float(value.min())), max(hi, float(value.max())))
    new_nodes = []
    for node in graph.node:
        if node in layers:
            w = node.input[1]
            array = numpy_helper.to_array(inits[w])
            half = weight_levels // 2
            scale = float(np.abs(array).max()) / half
            codes = np.clip(np.round(array / scale), -half, half).astype(np.int8)
            graph.initializer.extend([_init(f"{w}_q", codes), _init(f"{w}_scale", np.float32(scale)),
                                      _init(f"{w}_zp", np.int8(0))])
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{w}_q", f"{w}_scale", f"{w}_zp"], [f"{w}_deq"],
                                              name=f"{w}_dq"))
            node.input[1] = f"{w}_deq"
            act = node.input[0]
            if act in ranges:
                lo, hi = ranges[act]
                a_scale = np.float32(max(hi - lo, 1e-6) / 255.0)
                zp = np.uint8(np.clip(np.round(-lo / a_scale), 0, 255))
                tag = f"{node.name}_in"
                graph.initializer.extend([_init(f"{tag}_scale", a_scale), _init(f"{tag}_zp", zp)])
                new_nodes.append(helper.make_node("QuantizeLinear", [act, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"],
                                                  name=f"{tag}_quant"))
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"],
                                                  [f"{tag}_dq"], name=f"{tag}_dequant"))
                node.input[0] = f"{tag}_dq"
        new_nodes.append(node)
    used = {i for n in new_nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    q.ir_version = IR_VERSION
    onnx.checker.check_model(q)
    return q


def conv_zero_bias(seed: int = 0, channels: int = 6, size: int = 8) -> onnx.ModelProto:
    """input[N,4,size,size] -> Conv(zero bias) -> Relu -> Conv(no bias) -> Relu -> Conv(bias shared with a
    second Conv on the same input) -> Add -> output: zero, missing and shared biases in one model."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("wz", rng.normal(0, 0.3, (c, 4, 3, 3)).astype(np.float32)),
        _init("bz", np.zeros(c, np.float32)),
        _init("wn", rng.normal(0, 0.3, (c, c, 1, 1)).astype(np.float32)),
        _init("ws1", rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32)),
        _init("ws2", rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32)),
        _init("bs", rng.normal(0, 0.2, c).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "wz", "bz"], ["cz"], name="conv_zero", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["cz"], ["rz"], name="relu_zero"),
        helper.make_node("Conv", ["rz", "wn"], ["cn"], name="conv_nobias"),
        helper.make_node("Relu", ["cn"], ["rn"], name="relu_nobias"),
        helper.make_node("Conv", ["rn", "ws1", "bs"], ["s1"], name="conv_shared1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["rn", "ws2", "bs"], ["s2"], name="conv_shared2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["s1", "s2"], ["output"], name="sum"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", c, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="conv_zero_bias")
