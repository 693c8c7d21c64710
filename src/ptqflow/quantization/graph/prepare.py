"""Graph preparation before placement: load, opset upgrade, constant folding / BN folding, shape inference."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference, version_converter

from ptqflow.scratch import scratch_dir
from ptqflow.errors import InputError
from ptqflow.quantization.graph.index import GraphIndex

log = logging.getLogger(__name__)

# Constants of the formats, defined here only (the algorithms, the API and the steps import them). The tuned
# thresholds of the algorithms are not here: they are fields of config.AdvancedParameters.
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear exist from opset 13
MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects the IR version onnx 1.23 writes by default
PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom for the graph structure


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
    proto = check_model_file(path)
    try:  # external data next to the file, checked above to stay inside its directory
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise InputError(f"model file {str(path)!r}: cannot read its external data: {exc}") from exc
    return proto


def check_model_file(path: Path, where: str | None = None) -> onnx.ModelProto:
    """The model at ``path`` without its external data, after checking that it parses, has nodes and that
    every external data file it names exists inside its directory; InputError naming ``where`` (default: the
    file) otherwise."""
    path = Path(path)
    where = where or f"model file {str(path)!r}"
    if not path.is_file():
        raise InputError(f"{where} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{where} is truncated or not an ONNX model: {exc}") from exc
    if not proto.graph.node:
        raise InputError(f"{where} holds no graph nodes (truncated or not an ONNX model)")
    external_data_files(proto, path.parent, where)
    return proto


def _all_tensors(graph: onnx.GraphProto):
    """Every TensorProto of ``graph``: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def external_data_files(model: onnx.ModelProto, base: Path, where: str) -> set[str]:
    """Relative paths of the external data files ``model`` (whose file lies in ``base``) references.

    InputError naming ``where`` when a location is absolute, leads outside ``base`` (``../../etc/passwd``)
    or names a missing file: a model must not make ptqflow read other files than its own.
    """
    base = Path(base)
    files: set[str] = set()
    for t in _all_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(base.resolve()):
            raise InputError(f"{where}: tensor {t.name!r} has external data location {loc!r} outside the model "
                             "directory; refusing to read it")
        if not target.is_file():
            raise InputError(f"{where}: tensor {t.name!r} needs external data file {loc!r}, which is missing")
        files.add(Path(loc).as_posix())
    return files


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs: graph inputs that no initializer backs, in graph order.

    Old exports (IR 3, where every initializer had to be listed as an input) list the weights as graph inputs
    too. onnxruntime treats those as weights with a default value; so does ptqflow: nothing feeds them.
    """
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Remove graph inputs that an initializer backs (in place), so they are constants to every later pass
    (folding, placement, quantized weights); returns how many were removed."""
    keep = [copy.deepcopy(vi) for vi in graph_inputs(model)]
    dropped = len(model.graph.input) - len(keep)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
        # IR 3 required every initializer to be a graph input; from IR 4 on they need not be.
        model.ir_version = max(model.ir_version, 4)
    return dropped


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
    InputError when onnxruntime cannot load the model at all (an unknown op, weights of the wrong shape):
    every later step would fail on it too.
    """
    import onnxruntime as ort

    with scratch_dir("ptqflow-prep-") as tmp:
        out = Path(tmp) / "opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented...
            raise InputError(f"onnxruntime cannot load the model: {exc}") from None
        optimized = onnx.load(str(out))
    domains = {n.domain for n in optimized.graph.node} - {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    if domains:
        raise RuntimeError(f"optimizer introduced ops of domains {sorted(domains)}")
    return optimized


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into a preceding Conv whose output has no other reader (in place); returns count."""
    g = model.graph
    idx = GraphIndex(g)  # a snapshot of the unfolded graph, not updated while pairs are folded
    inits = idx.inits
    folded = 0
    for bn in [n for n in g.node if n.op_type == "BatchNormalization" and len(n.output) == 1]:
        conv = idx.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(idx.consumers.get(bn.input[0], [])) != 1 \
                or bn.input[0] in idx.outputs:
            continue
        if len(conv.input) < 2 or conv.input[1] not in inits or not all(i in inits for i in bn.input[1:5]):
            continue
        if len(idx.consumers.get(conv.input[1], [])) != 1:
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
    dropped = drop_initializer_inputs(proto)
    if dropped:
        log.info("%d graph input(s) backed by an initializer are treated as weights", dropped)
    proto, w = upgrade_opset(proto)
    warnings += w
    proto.ir_version = min(proto.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)  # what onnxruntime accepts
    if not is_large(proto):
        try:
            proto = _ort_basic_optimize(proto)
        except InputError:
            raise
        except Exception as exc:  # fall back to our own folding
            log.warning("basic graph optimization skipped: %s", exc)
    fold_batchnorm(proto)
    _name_nodes(proto)
    proto = infer_shapes(proto)
    proto.ir_version = min(proto.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    return proto, warnings
