"""Graph preparation before placement: load, opset upgrade, constant folding / BN folding, shape inference."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference, version_converter

from ptqflow.errors import InputError

log = logging.getLogger(__name__)

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear exist from opset 13
MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects the IR version onnx 1.23 writes by default
PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom


def load_model(model) -> onnx.ModelProto:
    """A ModelProto from a ModelProto, a path or serialized bytes; InputError naming the file when unreadable."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise InputError(f"model bytes are not a valid ONNX model: {exc}") from exc
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model file {str(path)!r} does not exist")
    try:
        proto = onnx.load(str(path))  # external data next to the file is loaded as well
    except Exception as exc:
        raise InputError(f"model file {str(path)!r} is truncated or not an ONNX model: {exc}") from exc
    if not proto.graph.node:
        raise InputError(f"model file {str(path)!r} holds no graph nodes (truncated or not an ONNX model)")
    return proto


def onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version of ``model``."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def upgrade_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model at opset >= 13 (needed for per-channel quantizers) and warnings when that was impossible."""
    if onnx_opset(model) >= MIN_OPSET:
        return model, []
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(upgraded)
        return upgraded, []
    except Exception as exc:  # the converter lacks adapters for some ops
        msg = (f"could not upgrade opset {onnx_opset(model)} to {MIN_OPSET} ({exc}); "
               "weights fall back to per-tensor scales")
        log.warning(msg)
        return model, [msg]


def is_large(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot be serialized as one protobuf (> 2 GB)."""
    return sum(t.ByteSize() for t in model.graph.initializer) > PROTO_LIMIT


def _ort_basic_optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and Conv+BatchNorm/Add/Mul fusion by onnxruntime's basic (level 1) offline optimizer.

    Level 1 keeps every node in the ONNX domain; the result is rejected if any ORT-only op appears anyway.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ptqflow-prep-") as tmp:
        out = Path(tmp) / "opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(out))
    domains = {n.domain for n in optimized.graph.node} - {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    if domains:
        raise RuntimeError(f"optimizer introduced ops of domains {sorted(domains)}")
    return optimized


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into a preceding Conv whose output has no other reader (in place); returns count."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    folded = 0
    for bn in [n for n in g.node if n.op_type == "BatchNormalization" and len(n.output) == 1]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(bn.input[0]) != 1 or bn.input[0] in outputs:
            continue
        if len(conv.input) < 2 or conv.input[1] not in inits or not all(i in inits for i in bn.input[1:5]):
            continue
        if readers.get(conv.input[1], 0) != 1:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, b, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64) for i in bn.input[1:5])
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2] in inits else np.zeros(w.shape[0]))
        k = scale / np.sqrt(var + eps)
        w = w * k.reshape(-1, *([1] * (w.ndim - 1)))
        new_bias = (bias - mean) * k + b
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
        bias_name = conv.output[0] + "_folded_bias"
        g.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), bias_name))
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias_name
        conv.output[0] = bn.output[0]
        g.node.remove(bn)
        folded += 1
    return folded


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (placement, summaries and bias correction refer to names)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy (dynamic dims stay symbolic); the input model when inference fails."""
    try:
        if is_large(model):
            return model
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # shape inference is an aid, not a requirement
        log.warning("shape inference failed: %s", exc)
        return model


def prepare_model(model) -> tuple[onnx.ModelProto, list[str]]:
    """The FP32 model ready for placement, and the warnings raised on the way.

    Deterministic: collect-stats and quantize (two processes) prepare the same model the same way, so the tensor
    names in a saved plan match.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(load_model(model))
    warnings: list[str] = []
    proto, w = upgrade_opset(proto)
    warnings += w
    if not is_large(proto):
        try:
            proto = _ort_basic_optimize(proto)
        except Exception as exc:  # fall back to our own folding
            log.warning("basic graph optimization skipped: %s", exc)
    fold_batchnorm(proto)
    _name_nodes(proto)
    proto = infer_shapes(proto)
    proto.ir_version = min(proto.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    return proto, warnings
