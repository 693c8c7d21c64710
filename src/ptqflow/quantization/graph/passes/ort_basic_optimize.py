"""Constant folding and Conv+BatchNorm/Add/Mul fusion by onnxruntime's basic (level 1) offline optimizer."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import onnx

from ptqflow.errors import InputError, StorageError
from ptqflow.quantization.graph.passes.base import GraphPass, GraphPassResult
from ptqflow.runtime.model_files import EXTERNAL_MIN_BYTES, is_large, model_file
from ptqflow.scratch import scratch_dir

log = logging.getLogger(__name__)


class OrtBasicOptimize(GraphPass):
    """onnxruntime's basic optimizer (switch ``graph_constant_folding``). A model over 2 GB reaches it as a file
    with external data (ptqflow.runtime.model_files) and comes back the same way.

    Level 1 keeps every node in the ONNX domain; the result is rejected (the model kept as it was, with a
    warning in the log) if any ORT-only op appears anyway, or if the optimizer fails otherwise. InputError when
    onnxruntime cannot load the model at all (an unknown op, weights of the wrong shape): every later step would
    fail on it too; StorageError when the model loads but the optimized copy cannot be written (a full disk).

    onnxruntime has no kernel for some ONNX function ops and writes their bodies instead (HardSwish becomes
    x * HardSigmoid(x), Mish x * Tanh(Softplus(x))); those the source model had are put back
    (``restore_functions``): OpenVINO runs HardSwish fused into the convolution before it, but the decomposed form
    as separate f32 eltwise layers between int8 convolutions (PP-LCNet: INT8 0.8x FP32 decomposed, 2.5x restored).
    """

    name = "ort_basic_optimize"
    switch = "graph_constant_folding"

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphPassResult]:
        """The optimized copy and one change line per op type whose node count moved, or ``model`` unchanged."""
        try:
            optimized = _optimize(model)
        except (InputError, StorageError):
            raise
        except Exception as exc:  # fall back to our own folding
            log.warning("basic graph optimization skipped: %s", exc)
            return model, self.result([])
        restored = restore_functions(model, optimized)
        return optimized, self.result(_op_count_changes(model, optimized) + restored)


def _optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxruntime as ort

    large = is_large(model)
    with scratch_dir("ptqflow-prep-") as tmp, model_file(model, "ptqflow-prep-in-") as loadable:
        out = Path(tmp) / "opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        # the session is thrown away once the optimized model is written: no packed weights for its kernels
        opts.add_session_config_entry("session.disable_prepacking", "1")
        if large:  # the optimized model cannot be one protobuf either
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.onnx.data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                          str(EXTERNAL_MIN_BYTES))
        source = loadable if isinstance(loadable, bytes) else str(loadable)
        try:
            ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented... or writing the result failed
            raise _load_or_write_error(ort, source, exc, Path(tmp)) from None
        optimized = onnx.load(str(out))  # external data too, before the directory goes
    domains = {n.domain for n in optimized.graph.node} - {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    if domains:
        raise RuntimeError(f"optimizer introduced ops of domains {sorted(domains)}")
    return optimized


def _load_or_write_error(ort, source, exc: Exception, scratch: Path) -> Exception:
    """What a failed optimizing session means: onnxruntime reports a model it cannot load and a result it cannot
    write (a full disk, an unwritable scratch directory) alike, so the model is loaded once more without writing
    anything. InputError (exit 3) when that fails too; StorageError (exit 5, retryable) naming the scratch
    directory when the model loads: the write failed."""
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain.log_severity_level = 3
    plain.add_session_config_entry("session.disable_prepacking", "1")
    try:
        ort.InferenceSession(source, plain, providers=["CPUExecutionProvider"])
    except Exception:
        return InputError(f"onnxruntime cannot load the model: {exc}")
    free = shutil.disk_usage(scratch).free if scratch.exists() else 0
    return StorageError(f"writing the optimized model to the scratch directory {scratch.parent} failed "
                        f"({free / 2**30:.1f} GiB free there): {exc}")


# Function ops onnxruntime inlines, by their body: (op type, the ops of the body from the output Mul's other input
# back to x, each with the attributes it must have). The op is restored only where the source model had it.
_BODIES = {
    "HardSwish": [("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})],
    "Mish": [("Tanh", {}), ("Softplus", {})],
}


def restore_functions(source: onnx.ModelProto, optimized: onnx.ModelProto) -> list[str]:
    """Put back, in ``optimized`` (in place), the function ops of _BODIES that ``source`` had and onnxruntime wrote
    as their bodies: each x * body(x) whose inner nodes feed nothing else becomes one node (the Mul's name and
    output). One change line per op type restored."""
    had = {n.op_type for n in source.graph.node if n.domain in ("", "ai.onnx")}
    g = optimized.graph
    changes = []
    for op, body in _BODIES.items():
        if op not in had:
            continue
        producer = {o: n for n in g.node for o in n.output}
        readers = Counter(i for n in g.node for i in n.input)
        restored, dropped = 0, set()
        for k, n in enumerate(g.node):
            if n.op_type != "Mul":
                continue
            for x_in, f_in in ((0, 1), (1, 0)):
                inner = _body_nodes(producer, readers, n.input[f_in], n.input[x_in], body)
                if inner is not None:
                    g.node[k].CopyFrom(onnx.helper.make_node(op, [n.input[x_in]], [n.output[0]], name=n.name))
                    dropped.update(m.output[0] for m in inner)
                    restored += 1
                    break
        if restored:
            for k in reversed([k for k, n in enumerate(g.node) if n.output[0] in dropped]):
                del g.node[k]  # in place, last first: the indices before it stay valid
            changes.append(f"{op} nodes restored from onnxruntime's inlined bodies: {restored}")
    return changes


def _body_nodes(producer: dict, readers: Counter, tensor: str, x: str, body: list) -> list | None:
    """The nodes computing ``tensor`` from ``x`` as ``body`` lists them (outermost first), each read only once
    and with the attributes given; None when ``tensor`` is not that."""
    nodes = []
    for op, attrs in body:
        n = producer.get(tensor)
        if n is None or n.op_type != op or readers[tensor] != 1 or len(n.input) != 1:
            return None
        values = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        defaults = onnx.defs.get_schema(op).attributes
        if any(abs(values.get(name, defaults[name].default_value.f) - want) > 1e-6 for name, want in attrs.items()):
            return None
        nodes.append(n)
        tensor = n.input[0]
    return nodes if tensor == x else None


def _op_count_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """'<op type> nodes: 3 -> 0' for each op type whose count differs, in op-type order; the initializer count
    when it moved (constant folding turns nodes into initializers)."""
    old = Counter(n.op_type for n in before.graph.node)
    new = Counter(n.op_type for n in after.graph.node)
    changes = [f"{op} nodes: {old[op]} -> {new[op]}" for op in sorted(old | new) if old[op] != new[op]]
    inits_before, inits_after = len(before.graph.initializer), len(after.graph.initializer)
    if changes and inits_before != inits_after:
        changes.append(f"initializers: {inits_before} -> {inits_after}")
    return changes
