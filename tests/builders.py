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


def initializers_as_inputs(model: onnx.ModelProto, ir_version: int = 3) -> onnx.ModelProto:
    """A copy of ``model`` that also lists every initializer as a graph input, as old (IR 3) exporters did."""
    old = onnx.ModelProto()
    old.CopyFrom(model)
    for t in old.graph.initializer:
        old.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    old.ir_version = ir_version
    onnx.checker.check_model(old)
    return old


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


def tiny_encoder(seed: int = 0, vocab: int = 50, hidden: int = 16, heads: int = 2, ffn: int = 32) -> onnx.ModelProto:
    """input_ids[N,S] (int64) -> embedding Gather + position add -> LayerNorm -> one BERT-style encoder layer
    (Q/K/V MatMul+Add, heads split with Shape/Reshape/Transpose, scaled Softmax attention, output MatMul+Add,
    residual + LayerNorm, FFN MatMul+Add -> Erf GELU -> MatMul+Add, residual + LayerNorm) -> hidden[N,S,hidden].
    Six linear layers with bias; the two attention MatMuls multiply activations and have none."""
    rng = np.random.default_rng(seed)
    h, d = hidden, hidden // heads
    f32 = np.float32
    inits = [
        _init("emb", rng.normal(0, 1, (vocab, h)).astype(f32)),
        _init("pos", rng.normal(0, 0.5, (1, 64, h)).astype(f32)),
        _init("zero_i", np.array([0], np.int64)),
        _init("one_i", np.array([1], np.int64)),
        _init("two_i", np.array([2], np.int64)),
        _init("heads_shape", np.array([heads, d], np.int64)),
        _init("hidden_shape", np.array([h], np.int64)),
        _init("sqrt_d", np.array(np.sqrt(d), f32)),
        _init("half", np.array(0.5, f32)),
        _init("one_f", np.array(1.0, f32)),
        _init("inv_sqrt2", np.array(1 / np.sqrt(2), f32)),
    ]
    for k in range(3):
        inits += [_init(f"ln{k}_g", rng.uniform(0.8, 1.2, h).astype(f32)), _init(f"ln{k}_b", rng.normal(0.3, 0.3, h).astype(f32))]
    for name, shape in (("q", (h, h)), ("k", (h, h)), ("v", (h, h)), ("o", (h, h)), ("f1", (h, ffn)), ("f2", (ffn, h))):
        inits += [_init(f"{name}_w", rng.normal(0, 0.3, shape).astype(f32)),
                  _init(f"{name}_b", rng.normal(0, 0.1, shape[1]).astype(f32))]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["tok"], name="embed"),
        n("Shape", ["input_ids"], ["ids_shape"], name="ids_shape"),
        n("Slice", ["ids_shape", "one_i", "two_i"], ["seq_len"], name="seq_len"),  # [S]
        n("Slice", ["pos", "zero_i", "seq_len", "one_i"], ["pos_s"], name="pos_slice"),
        n("Add", ["tok", "pos_s"], ["emb_sum"], name="emb_add"),
        n("LayerNormalization", ["emb_sum", "ln0_g", "ln0_b"], ["x0"], name="ln0", axis=-1),
        n("Shape", ["x0"], ["x_shape"], name="x_shape"),
        n("Slice", ["x_shape", "zero_i", "two_i"], ["ns"], name="ns_slice"),  # [N, S]
        n("Concat", ["ns", "heads_shape"], ["split_shape"], name="split_shape", axis=0),
        n("Concat", ["ns", "hidden_shape"], ["merge_shape"], name="merge_shape", axis=0),
    ]
    for name in ("q", "k", "v"):
        nodes += [
            n("MatMul", ["x0", f"{name}_w"], [f"{name}_mm"], name=f"{name}_proj"),
            n("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_lin"], name=f"{name}_bias"),
            n("Reshape", [f"{name}_lin", "split_shape"], [f"{name}_4d"], name=f"{name}_split"),
            n("Transpose", [f"{name}_4d"], [f"{name}_heads"], name=f"{name}_t",
              perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3]),
        ]
    nodes += [
        n("MatMul", ["q_heads", "k_heads"], ["scores_raw"], name="scores"),
        n("Div", ["scores_raw", "sqrt_d"], ["scores_s"], name="scale"),
        n("Softmax", ["scores_s"], ["probs"], name="softmax", axis=-1),
        n("MatMul", ["probs", "v_heads"], ["ctx_heads"], name="context"),
        n("Transpose", ["ctx_heads"], ["ctx_t"], name="ctx_t", perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merge_shape"], ["ctx"], name="ctx_merge"),
        n("MatMul", ["ctx", "o_w"], ["o_mm"], name="o_proj"),
        n("Add", ["o_b", "o_mm"], ["o_lin"], name="o_bias"),  # bias first: either Add order is a bias
        n("Add", ["o_lin", "x0"], ["res1"], name="res1"),
        n("LayerNormalization", ["res1", "ln1_g", "ln1_b"], ["x1"], name="ln1", axis=-1),
        n("MatMul", ["x1", "f1_w"], ["f1_mm"], name="ffn1"),
        n("Add", ["f1_mm", "f1_b"], ["f1_lin"], name="ffn1_bias"),
        n("Mul", ["f1_lin", "inv_sqrt2"], ["g_scaled"], name="gelu_scale"),
        n("Erf", ["g_scaled"], ["g_erf"], name="gelu_erf"),
        n("Add", ["g_erf", "one_f"], ["g_plus"], name="gelu_plus"),
        n("Mul", ["f1_lin", "g_plus"], ["g_mul"], name="gelu_mul"),
        n("Mul", ["g_mul", "half"], ["gelu"], name="gelu_half"),
        n("MatMul", ["gelu", "f2_w"], ["f2_mm"], name="ffn2"),
        n("Add", ["f2_mm", "f2_b"], ["f2_lin"], name="ffn2_bias"),
        n("Add", ["f2_lin", "x1"], ["res2"], name="res2"),
        n("LayerNormalization", ["res2", "ln2_g", "ln2_b"], ["hidden"], name="ln2", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"])]
    outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", "S", h])]
    return make_model(nodes, inputs, outputs, inits, name="tiny_encoder")


def token_inputs(n: int, seq: int = 8, vocab: int = 50, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` single-sample {"input_ids": int64[1, seq]} dicts."""
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, vocab, (1, seq), dtype=np.int64)} for _ in range(n)]


def upsample_head(seed: int = 0, channels: int = 6, size: int = 8) -> onnx.ModelProto:
    """input[N,3,size,size] -> Conv(+bias) -> Relu -> ConvTranspose(+bias, stride 2) -> output[N,4,2*size,2*size]."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _init("cw", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
        _init("cb", rng.normal(0, 0.2, c).astype(np.float32)),
        _init("tw", rng.normal(0, 0.3, (c, 4, 3, 3)).astype(np.float32)),  # ConvTranspose: [C_in, C_out, k, k]
        _init("tb", rng.normal(0, 0.2, 4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "tw", "tb"], ["output"], name="up", strides=[2, 2],
                         pads=[1, 1, 1, 1], output_padding=[1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 2 * size, 2 * size])]
    return make_model(nodes, inputs, outputs, inits, name="upsample_head")


def deep_mlp(depth: int = 200, width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """input[N,width] -> ``depth`` x (MatMul + Add bias -> Relu, with a residual Add every other layer) -> output."""
    rng = np.random.default_rng(seed)
    inits, nodes = [_init("half", np.array(0.5, np.float32))], []
    x = "input"
    for k in range(depth):
        # He-scaled weights and halved skip sums keep activations O(1) through hundreds of layers
        inits += [_init(f"w{k}", rng.normal(0, np.sqrt(2.0 / width), (width, width)).astype(np.float32)),
                  _init(f"b{k}", rng.normal(0.1, 0.1, width).astype(np.float32))]
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"], name=f"fc{k}"),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"], name=f"fc{k}_bias"),
                  helper.make_node("Relu", [f"a{k}"], [f"r{k}"], name=f"relu{k}")]
        out = f"r{k}"
        if k % 2 == 1:  # a skip connection keeps an older activation alive across a segment
            nodes.append(helper.make_node("Add", [out, f"r{k - 1}"], [f"s{k}"], name=f"skip{k}"))
            nodes.append(helper.make_node("Mul", [f"s{k}", "half"], [f"h{k}"], name=f"skip{k}_half"))
            out = f"h{k}"
        x = out
    nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])]
    return make_model(nodes, inputs, outputs, inits, name="deep_mlp")


def residual_concat(seed: int = 0, c: int = 4, size: int = 8) -> onnx.ModelProto:
    """input[N,3,s,s] -> conv_a -> Relu (r1) ; conv_b(r1) -> Relu (r2) ; Add(r1, r2) residual -> MaxPool ->
    conv_c ; Concat(r1, r2) -> conv_d ; outputs: out_c, out_d."""
    rng = np.random.default_rng(seed)
    w = lambda o, i: rng.normal(0, 0.3, (o, i, 3, 3)).astype(np.float32)  # noqa: E731
    inits = [_init("wa", w(c, 3)), _init("wb", w(c, c)), _init("wc", w(c, c)), _init("wd", w(c, 2 * c)),
             _init("ba", rng.normal(0, 0.1, c).astype(np.float32))]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "wa", "ba"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
        n("Relu", ["ca"], ["r1"], name="relu_a"),
        n("Conv", ["r1", "wb"], ["cb"], name="conv_b", pads=[1, 1, 1, 1]),
        n("Relu", ["cb"], ["r2"], name="relu_b"),
        n("Add", ["r1", "r2"], ["res"], name="residual"),
        n("MaxPool", ["res"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["pool", "wc"], ["out_c"], name="conv_c", pads=[1, 1, 1, 1]),
        n("Concat", ["r1", "r2"], ["cat"], name="concat", axis=1),
        n("Conv", ["cat", "wd"], ["out_d"], name="conv_d", pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("out_c", TensorProto.FLOAT, ["N", c, size // 2, size // 2]),
               helper.make_tensor_value_info("out_d", TensorProto.FLOAT, ["N", c, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="residual_concat")


def detection_head(seed: int = 0, boxes: int = 16) -> onnx.ModelProto:
    """input[1,boxes,8] -> MatMul(w) box regressor -> boxes[1,boxes,4]; MatMul(ws) -> scores[1,1,boxes];
    NonMaxSuppression -> selected; TopK(scores) -> values -> MatMul after TopK (must stay float)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [_init("wbox", rng.normal(0, 0.5, (8, 4)).astype(f32)), _init("wscore", rng.normal(0, 0.5, (8, 1)).astype(f32)),
             _init("perm", np.array([0, 2, 1], np.int64)), _init("k", np.array([4], np.int64)),
             _init("max_out", np.array([5], np.int64)), _init("iou", np.array([0.5], f32)),
             _init("wpost", rng.normal(0, 0.5, (4, 3)).astype(f32))]
    n = helper.make_node
    nodes = [
        n("MatMul", ["input", "wbox"], ["boxes"], name="box_fc"),
        n("MatMul", ["input", "wscore"], ["s"], name="score_fc"),
        n("Transpose", ["s"], ["scores"], name="score_t", perm=[0, 2, 1]),
        n("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"], name="nms"),
        n("TopK", ["scores", "k"], ["top_v", "top_i"], name="topk", axis=-1),
        n("MatMul", ["top_v", "wpost"], ["post"], name="post_fc"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, boxes, 8])]
    outputs = [helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3]),
               helper.make_tensor_value_info("post", TensorProto.FLOAT, [1, 1, 3])]
    return make_model(nodes, inputs, outputs, inits, name="detection_head")


def mobile_block(seed: int = 0, c: int = 8, size: int = 16) -> onnx.ModelProto:
    """A MobileNetV3/PP-LCNet-style block with the activations decomposed as exporters write them.

    input[N,3,s,s] -> stem Conv -> Relu (r0) -> depthwise Conv -> hard-swish x*Clip(x+3,0,6)/6 (hs) ->
    SE: GlobalAveragePool -> Conv -> Relu -> Conv -> HardSigmoid (gate) -> Mul(hs, gate) (se) -> proj Conv (p) ->
    residual Add(p, r0) (res) -> expand Conv (e) -> e*HardSigmoid(e) (a) -> head Conv (h) -> h*Sigmoid(h) -> out.
    """
    rng = np.random.default_rng(seed)
    w = lambda o, i, k=1: rng.normal(0, 0.4, (o, i, k, k)).astype(np.float32)  # noqa: E731
    b = lambda o: rng.normal(0, 0.1, o).astype(np.float32)  # noqa: E731
    f = lambda v: np.array(v, np.float32)  # noqa: E731
    inits = [_init("w_stem", w(c, 3, 3)), _init("b_stem", b(c)), _init("w_dw", w(c, 1, 3)), _init("b_dw", b(c)),
             _init("w_fc1", w(c // 2, c)), _init("b_fc1", b(c // 2)), _init("w_fc2", w(c, c // 2)), _init("b_fc2", b(c)),
             _init("w_proj", w(c, c)), _init("b_proj", b(c)), _init("w_exp", w(c, c)), _init("b_exp", b(c)),
             _init("w_head", w(c, c)), _init("b_head", b(c)), _init("three", f(3.0)), _init("zero", f(0.0)),
             _init("six", f(6.0))]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w_stem", "b_stem"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        n("Relu", ["c0"], ["r0"], name="stem_relu"),
        n("Conv", ["r0", "w_dw", "b_dw"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
        n("Add", ["d", "three"], ["d3"], name="hs_add"),
        n("Clip", ["d3", "zero", "six"], ["d3c"], name="hs_clip"),
        n("Mul", ["d", "d3c"], ["dm"], name="hs_mul"),
        n("Div", ["dm", "six"], ["hs"], name="hs_div"),
        n("GlobalAveragePool", ["hs"], ["pooled"], name="se_gap"),
        n("Conv", ["pooled", "w_fc1", "b_fc1"], ["s1"], name="se_fc1"),
        n("Relu", ["s1"], ["s1r"], name="se_relu"),
        n("Conv", ["s1r", "w_fc2", "b_fc2"], ["s2"], name="se_fc2"),
        n("HardSigmoid", ["s2"], ["gate"], name="se_gate", alpha=1.0 / 6, beta=0.5),
        n("Mul", ["hs", "gate"], ["se"], name="se_mul"),
        n("Conv", ["se", "w_proj", "b_proj"], ["p"], name="proj"),
        n("Add", ["p", "r0"], ["res"], name="residual"),
        n("Conv", ["res", "w_exp", "b_exp"], ["e"], name="expand"),
        n("HardSigmoid", ["e"], ["eh"], name="act_hsig", alpha=1.0 / 6, beta=0.5),
        n("Mul", ["e", "eh"], ["a"], name="act_mul"),
        n("Conv", ["a", "w_head", "b_head"], ["h"], name="head"),
        n("Sigmoid", ["h"], ["hsg"], name="swish_sigmoid"),
        n("Mul", ["h", "hsg"], ["out"], name="swish_mul"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", c, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="mobile_block")


def mask_and_class_heads(seed: int = 0, c: int = 6, size: int = 8, classes: int = 5) -> onnx.ModelProto:
    """input[N,3,s,s] -> Conv -> Relu (r) -> ConvTranspose (stride 2) -> Sigmoid -> mask[N,1,2s,2s] (detection-style
    probability map); r -> GlobalAveragePool -> Flatten -> Gemm -> Softmax -> probs[N,classes] (classifier head)."""
    rng = np.random.default_rng(seed)
    inits = [_init("cw", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
             _init("tw", rng.normal(0, 0.3, (c, 1, 2, 2)).astype(np.float32)),
             _init("fw", rng.normal(0, 0.3, (classes, c)).astype(np.float32)),
             _init("fb", rng.normal(0, 0.1, classes).astype(np.float32))]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["r"], name="relu"),
        n("ConvTranspose", ["r", "tw"], ["m"], name="mask_up", strides=[2, 2]),
        n("Sigmoid", ["m"], ["mask"], name="mask_sigmoid"),
        n("GlobalAveragePool", ["r"], ["g"], name="gap"),
        n("Flatten", ["g"], ["flat"], name="flatten"),
        n("Gemm", ["flat", "fw", "fb"], ["logits"], name="fc", transB=1),
        n("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 2 * size, 2 * size]),
               helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])]
    return make_model(nodes, inputs, outputs, inits, name="mask_and_class_heads")


def shape_branch_head(seed: int = 0, c: int = 6, size: int = 8, classes: int = 5) -> onnx.ModelProto:
    """An exported classifier head that reads its logits twice, once for values and once for their shape:
    input[N,3,s,s] -> Conv -> Relu -> GlobalAveragePool -> Flatten (flat) -> Gemm fc (logits) -> Flatten ->
    Softmax -> Reshape to Shape(logits) -> probs[N,classes]; flat -> Gemm aux -> aux[N,classes], a second output
    whose shape (not values) also reaches the Softmax: Shape(aux) is the target of a Reshape before it."""
    rng = np.random.default_rng(seed)
    inits = [_init("cw", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
             _init("fw", rng.normal(0, 0.3, (classes, c)).astype(np.float32)),
             _init("fb", rng.normal(0, 0.1, classes).astype(np.float32)),
             _init("aw", rng.normal(0, 0.3, (classes, c)).astype(np.float32))]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["r"], name="relu"),
        n("GlobalAveragePool", ["r"], ["g"], name="gap"),
        n("Flatten", ["g"], ["flat"], name="flatten"),
        n("Gemm", ["flat", "fw", "fb"], ["logits"], name="fc", transB=1),
        n("Gemm", ["flat", "aw"], ["aux"], name="aux", transB=1),
        n("Shape", ["aux"], ["aux_shape"], name="aux_shape"),
        n("Reshape", ["logits", "aux_shape"], ["logits_r"], name="logits_r"),
        n("Flatten", ["logits_r"], ["logits_flat"], name="logits_flat"),
        n("Softmax", ["logits_flat"], ["sm"], name="softmax", axis=-1),
        n("Shape", ["logits"], ["logits_shape"], name="logits_shape"),
        n("Reshape", ["sm", "logits_shape"], ["probs"], name="probs"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes]),
               helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", classes])]
    return make_model(nodes, inputs, outputs, inits, name="shape_branch_head")


def mlp_rank_lost(seed: int = 0, features: int = 16, hidden: int = 32, out: int = 4) -> onnx.ModelProto:
    """mlp(seq=True) behind a Reshape whose target shape is computed at run time (a slice of Shape(input) with
    a data-dependent end; inputs need S >= 3), so shape inference cannot tell the rank of the first linear layer's
    input and output; the sequence layers of exported OCR and transformer necks look like this."""
    base = mlp(seed=seed, features=features, hidden=hidden, out=out, seq=True)
    nodes = [
        helper.make_node("Shape", ["input"], ["in_shape"], name="shape"),
        helper.make_node("Slice", ["in_shape", "one", "two"], ["seq_len"], name="seq_len"),
        helper.make_node("Slice", ["in_shape", "zero", "seq_len"], ["target"], name="target"),
        helper.make_node("Reshape", ["input", "target"], ["x"], name="reshape"),
    ]
    for node in base.graph.node:
        node.input[:] = ["x" if i == "input" else i for i in node.input]
        nodes.append(node)
    inits = list(base.graph.initializer) + [
        _init(name, np.array([v], np.int64)) for name, v in (("zero", 0), ("one", 1), ("two", 2))]
    return make_model(nodes, list(base.graph.input), list(base.graph.output), inits, name="mlp_rank_lost")


def nncf_doc_names(seed: int = 0, c: int = 4, size: int = 8, classes: int = 5) -> onnx.ModelProto:
    """A small CNN whose node names and types are those of NNCF's ignored-scope examples: input[N,3,size,size]
    -> layer_1 Conv and layer_2 Conv (both on the input) -> layer_3 Add -> node_1 Relu -> node_2 Resize (x2)
    -> node_3 Mul (by itself) -> conv_out Conv(+bias) -> gap -> flatten -> fc Gemm -> logits[N,classes].
    Every example's scope matches something, and each leaves something to quantize."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32)),
        _init("w2", rng.normal(0, 0.3, (c, 3, 1, 1)).astype(np.float32)),
        _init("scales", np.array([1, 1, 2, 2], np.float32)),
        _init("w3", rng.normal(0, 0.3, (c, c, 3, 3)).astype(np.float32)),
        _init("b3", rng.normal(0, 0.1, c).astype(np.float32)),
        _init("fc_w", rng.normal(0, 0.3, (classes, c)).astype(np.float32)),
        _init("fc_b", rng.normal(0, 0.1, classes).astype(np.float32)),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w1"], ["a"], name="layer_1", pads=[1, 1, 1, 1]),
        n("Conv", ["input", "w2"], ["b"], name="layer_2"),
        n("Add", ["a", "b"], ["s"], name="layer_3"),
        n("Relu", ["s"], ["r"], name="node_1"),
        n("Resize", ["r", "", "scales"], ["up"], name="node_2", mode="nearest"),
        n("Mul", ["up", "up"], ["sq"], name="node_3"),
        n("Conv", ["sq", "w3", "b3"], ["c3"], name="conv_out", pads=[1, 1, 1, 1]),
        n("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flatten"),
        n("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])]
    return make_model(nodes, inputs, outputs, inits, name="nncf_doc_names")


def ov_conv_block(seed: int = 0, c: int = 8, size: int = 12, classes: int = 4, f16_weights: bool = False):
    """An OpenVINO model built with ov.opset (no ONNX behind it): input[?,3,size,size] -> Convolution + bias Add
    -> Relu -> depthwise GroupConvolution + bias Add -> Relu -> ReduceMean over H,W (keep dims) -> Reshape ->
    MatMul(transpose_b) + bias Add -> Softmax. ``f16_weights``: the weights as f16 Constants with a Convert, as
    an IR saved with fp16 compression holds them."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(seed)

    def weight(shape, std):
        w = rng.normal(0, std, shape).astype(np.float32)
        return ops.convert(ops.constant(w.astype(np.float16)), ov.Type.f32) if f16_weights else ops.constant(w)

    x = ops.parameter([-1, 3, size, size], ov.Type.f32, name="input")
    x.output(0).get_tensor().set_names({"input"})
    conv = ops.convolution(x, weight((c, 3, 3, 3), 0.3), [1, 1], [1, 1], [1, 1], [1, 1])
    h = ops.relu(ops.add(conv, ops.constant(rng.normal(0, 0.1, (1, c, 1, 1)).astype(np.float32))))
    dw = ops.group_convolution(h, weight((c, 1, 1, 3, 3), 0.3), [1, 1], [1, 1], [1, 1], [1, 1])
    h = ops.relu(ops.add(dw, ops.constant(rng.normal(0, 0.1, (1, c, 1, 1)).astype(np.float32))))
    pooled = ops.reduce_mean(h, np.array([2, 3], np.int64), keep_dims=True)
    flat = ops.reshape(pooled, np.array([-1, c], np.int64), special_zero=False)
    fc = ops.matmul(flat, weight((classes, c), 0.3), False, True)
    logits = ops.add(fc, ops.constant(rng.normal(0, 0.1, (classes,)).astype(np.float32)))
    out = ops.softmax(logits, 1)
    out.output(0).get_tensor().set_names({"probs"})
    return ov.Model([ops.result(out)], [x], "ov_conv_block")


def recurrent(op: str = "LSTM", seed: int = 0, features: int = 12, hidden: int = 16, classes: int = 5,
              bidirectional: bool = True) -> onnx.ModelProto:
    """x[S,N,features] -> ``op`` (LSTM or GRU, with bias and initial state from the batch shape left out) ->
    Y[S,dirs,N,hidden] -> Transpose/Reshape -> Gemm-free MatMul to [S,N,classes] logits: a CRNN's recurrent head."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3}[op]
    dirs = 2 if bidirectional else 1
    f32 = np.float32
    inits = [
        _init("W", rng.normal(0, 0.4, (dirs, gates * hidden, features)).astype(f32)),
        _init("R", rng.normal(0, 0.3, (dirs, gates * hidden, hidden)).astype(f32)),
        _init("B", rng.normal(0, 0.1, (dirs, 2 * gates * hidden)).astype(f32)),
        _init("merge", np.array([0, 0, dirs * hidden], np.int64)),
        _init("head_w", rng.normal(0, 0.3, (dirs * hidden, classes)).astype(f32)),
    ]
    n = helper.make_node
    nodes = [
        n(op, ["x", "W", "R", "B"], ["Y"], name="rnn", hidden_size=hidden,
          direction="bidirectional" if bidirectional else "forward"),
        n("Transpose", ["Y"], ["Y_t"], name="y_t", perm=[0, 2, 1, 3]),  # [S, N, dirs, hidden]
        n("Reshape", ["Y_t", "merge"], ["feat"], name="merge_dirs"),
        n("MatMul", ["feat", "head_w"], ["logits"], name="head"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", "N", features])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["S", "N", classes])]
    return make_model(nodes, inputs, outputs, inits, name=f"tiny_{op.lower()}")


def contrib_attention(seed: int = 0, hidden: int = 16, heads: int = 2) -> onnx.ModelProto:
    """x[N,S,hidden] -> com.microsoft Attention (fused QKV weight [hidden, 3 hidden] and bias, as onnxruntime's
    transformer optimizer writes it) -> MatMul output projection -> [N,S,hidden]."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [_init("qkv_w", rng.normal(0, 0.3, (hidden, 3 * hidden)).astype(f32)),
             _init("qkv_b", rng.normal(0, 0.1, 3 * hidden).astype(f32)),
             _init("o_w", rng.normal(0, 0.3, (hidden, hidden)).astype(f32))]
    nodes = [helper.make_node("Attention", ["x", "qkv_w", "qkv_b"], ["ctx"], name="attention",
                              domain="com.microsoft", num_heads=heads),
             helper.make_node("MatMul", ["ctx", "o_w"], ["y"], name="o_proj")]
    graph = helper.make_graph(nodes, "tiny_attention",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", hidden])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="ptqflow-tests")
    model.ir_version = IR_VERSION
    return model


def padded_input_mlp(seed: int = 0, features: int = 16, hidden: int = 32, out: int = 4) -> onnx.ModelProto:
    """``mlp`` whose first layer reads a padding feature (input channel 0, always 0 in ``padded_inputs``) with large
    weights: fc1's per-channel weight scales are set by that row, so quantizing w1 rounds the useful weights to
    zero. The model's error is carried by one layer's weights, not by an activation."""
    model = mlp(seed, features, hidden, out)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    value = numpy_helper.to_array(w1).copy()
    value[0, :] = 200.0
    w1.CopyFrom(_init("w1", value))
    return model


def padded_inputs(n: int, features: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``padded_input_mlp``'s inputs: N(0, 1) features, channel 0 the padding (0)."""
    samples = random_inputs(n, (features,), seed)
    for s in samples:
        s["input"][..., 0] = 0.0
    return samples


def separable_block(seed: int = 0, c: int = 8, size: int = 12, spread: float = 1.0, beta: float = 0.1,
                    relu6: bool = False) -> onnx.ModelProto:
    """A depthwise-separable block (MobileNet-style) with BatchNormalizations, for cross-layer equalization.

    input[N,3,s,s] -> Conv 3x3 -> BN -> Relu -> depthwise Conv 3x3 -> BN -> Relu (or Clip(0, 6) when ``relu6``)
    -> pointwise Conv 1x1 (+bias) -> out[N,4,s,s]. ``spread`` > 1 makes the layers' channel ranges unbalanced:
    the first conv's output channel i is scaled by spread**(i/(c-1) - 1) and the depthwise weights by the
    inverse, so the function's channels stay comparable while the activation between them does not; ``beta`` is
    the BatchNormalizations' bias (the ReLU inputs' mean).
    """
    rng = np.random.default_rng(seed)
    ramp = spread ** (np.arange(c) / max(c - 1, 1) - 1.0)
    w1 = rng.normal(0, 0.4, (c, 3, 3, 3)) * ramp[:, None, None, None]
    wd = rng.normal(0, 0.4, (c, 1, 3, 3)) / ramp[:, None, None, None]
    bn = lambda k: [_init(f"g{k}", rng.uniform(0.5, 1.0, c).astype(np.float32)),  # noqa: E731
                    _init(f"be{k}", (beta + rng.normal(0, 0.05, c)).astype(np.float32)),
                    _init(f"m{k}", np.zeros(c, np.float32)), _init(f"v{k}", np.ones(c, np.float32))]
    inits = [_init("w1", w1.astype(np.float32)), _init("wd", wd.astype(np.float32)), *bn(1), *bn(2),
             _init("wp", rng.normal(0, 0.4, (4, c, 1, 1)).astype(np.float32)),
             _init("bp", rng.normal(0, 0.1, 4).astype(np.float32)),
             _init("zero", np.array(0.0, np.float32)), _init("six", np.array(6.0, np.float32))]
    n = helper.make_node
    second = n("Clip", ["b2", "zero", "six"], ["r2"], name="relu6") if relu6 else n("Relu", ["b2"], ["r2"], name="relu2")
    nodes = [
        n("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["b1"], name="bn1"),
        n("Relu", ["b1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "wd"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["d", "g2", "be2", "m2", "v2"], ["b2"], name="bn2"),
        second,
        n("Conv", ["r2", "wp", "bp"], ["out"], name="pointwise"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="separable_block")


def wide_concat(seed: int = 0, c: int = 4, size: int = 8, gain: float = 100.0) -> onnx.ModelProto:
    """input[N,3,s,s] -> conv_a, conv_b (no activation: signed outputs reaching a few hundred, so their int8
    scales are above 1) -> Concat -> conv_d -> output: an FPN merge like PP-OCR det's."""
    rng = np.random.default_rng(seed)
    w = lambda o, i: (rng.normal(0, 0.3, (o, i, 3, 3)) * gain).astype(np.float32)  # noqa: E731
    inits = [_init("wa", w(c, 3)), _init("wb", w(c, 3)), _init("wd", w(c, 2 * c) / gain)]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "wa"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
        n("Conv", ["input", "wb"], ["cb"], name="conv_b", pads=[1, 1, 1, 1]),
        n("Concat", ["ca", "cb"], ["cat"], name="concat", axis=1),
        n("Conv", ["cat", "wd"], ["output"], name="conv_d", pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", c, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="wide_concat")


def _outlier_weights(rng: np.random.Generator, shape: tuple[int, ...], gain: float = 6.0) -> np.ndarray:
    """Gaussian weights with one large weight per output channel (axis 0): the channel's scale follows the outlier,
    so rounding the others costs more than usual (where adaptive rounding has something to win)."""
    w = rng.normal(0, 0.3, shape).astype(np.float32)
    flat = w.reshape(shape[0], -1)
    flat[np.arange(shape[0]), rng.integers(0, flat.shape[1], shape[0])] = gain * 0.3
    return flat.reshape(shape)


def rounding_convs(seed: int = 0, c: int = 16, size: int = 12) -> onnx.ModelProto:
    """input[N,4,s,s] -> Conv 3x3 (stride 1, pads) -> Relu -> depthwise Conv 3x3 (group c, stride 2, dilations 1)
    -> Relu -> grouped Conv 3x3 (group 4) -> out[N,c,s/2,s/2]; every weight with one outlier per output channel."""
    rng = np.random.default_rng(seed)
    bias = lambda: rng.normal(0, 0.1, c).astype(np.float32)  # noqa: E731
    inits = [_init("w_full", _outlier_weights(rng, (c, 4, 3, 3))), _init("b_full", bias()),
             _init("w_dw", _outlier_weights(rng, (c, 1, 3, 3))), _init("b_dw", bias()),
             _init("w_grp", _outlier_weights(rng, (c, c // 4, 3, 3))), _init("b_grp", bias())]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w_full", "b_full"], ["c1"], name="full", pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w_dw", "b_dw"], ["c2"], name="depthwise", group=c, pads=[1, 1, 1, 1], strides=[2, 2]),
        n("Relu", ["c2"], ["r2"], name="relu2"),
        n("Conv", ["r2", "w_grp", "b_grp"], ["out"], name="grouped", group=4, pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, size, size])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", c, size // 2, size // 2])]
    return make_model(nodes, inputs, outputs, inits, name="rounding_convs")


def rounding_linear(seed: int = 0, features: int = 32, hidden: int = 48, out: int = 16) -> onnx.ModelProto:
    """input[N,S,features] -> MatMul -> Relu -> MatMul -> out[N,S,out] (no biases); weights with one outlier per
    output column."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", _outlier_weights(rng, (hidden, features)).T.copy()),
             _init("w2", _outlier_weights(rng, (out, hidden)).T.copy())]
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["m1"], name="fc1"),
             helper.make_node("Relu", ["m1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["out"], name="fc2")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "S", features])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "S", out])]
    return make_model(nodes, inputs, outputs, inits, name="rounding_linear")


def decomposed_layernorm(seed: int = 0, tokens: int = 16, width: int = 8) -> onnx.ModelProto:
    """input[N,tokens,width] -> MatMul(w1) h -> LayerNorm as exporters decompose it without ReduceMean (jax2tf:
    mean = ReduceSum / width, var = E[h^2] - E[h]^2, y = (h - mean) / sqrt(var + eps)) -> MatMul(w2) out."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [_init("w1", (np.eye(width) + rng.normal(0, 0.05, (width, width))).astype(f32)),
             _init("w2", rng.normal(0, 0.5, (width, width)).astype(f32)),
             _init("axes", np.array([-1], np.int64)), _init("n", np.array(width, f32)),
             _init("eps", np.array(1e-6, f32))]
    n = helper.make_node
    nodes = [n("MatMul", ["input", "w1"], ["h"], name="fc1"),
             n("ReduceSum", ["h", "axes"], ["sum"], name="sum", keepdims=1),
             n("Div", ["sum", "n"], ["mean"], name="mean"),
             n("Sub", ["h", "mean"], ["centered"], name="center"),
             n("Mul", ["h", "h"], ["sq"], name="square"),
             n("ReduceSum", ["sq", "axes"], ["sum_sq"], name="sum_sq", keepdims=1),
             n("Div", ["sum_sq", "n"], ["mean_sq"], name="mean_sq"),
             n("Mul", ["mean", "mean"], ["sq_mean"], name="square_mean"),
             n("Sub", ["mean_sq", "sq_mean"], ["var"], name="var"),
             n("Add", ["var", "eps"], ["var_eps"], name="var_eps"),
             n("Sqrt", ["var_eps"], ["sigma"], name="sigma"),
             n("Reciprocal", ["sigma"], ["inv"], name="inv"),
             n("Mul", ["centered", "inv"], ["normed"], name="normalize"),
             n("MatMul", ["normed", "w2"], ["out"], name="fc2")]
    return make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", tokens, width])],
                      [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", tokens, width])], inits,
                      name="decomposed_layernorm")
