"""Quantizer placement: which weights and which activation tensors get a quantizer, and how.

The result is a QuantizationPlan (ptqflow.quantization.plan): weights (per-output-channel int8), activation
points (tensor -> consumer edges to rewire, scale group), and the layers kept in float with the pass and reason.
"""

from __future__ import annotations

import re
from collections import deque

import onnx

from ptqflow.config import IgnoredScope, ModelType, QuantizationConfig, QuantizationPreset, TargetDevice
from ptqflow.errors import InputError
from ptqflow.quantization.graph.index import GraphIndex, attr
from ptqflow.quantization.plan import ActivationQuantizer, FloatLayer, QuantizationPlan, WeightQuantizer


# Weight input index and per-output-channel axis of the weight, per op type (the axis may depend on attributes).
WEIGHTED = {
    "Conv": lambda n: (1, 0),
    "ConvTranspose": lambda n: (1, 1 if attr(n, "group", 1) == 1 else None),
    "Gemm": lambda n: (1, 0 if attr(n, "transB", 0) else 1),
    "MatMul": lambda n: (1, -1),
}

# Which inputs of a quantizable op are quantized as activations: a function of the node giving input indices.
ACT_INPUTS = {
    "Conv": lambda n: [0],
    "ConvTranspose": lambda n: [0],
    "Gemm": lambda n: [0, 1],
    "MatMul": lambda n: [0, 1],
    "Add": lambda n: [0, 1],
    "Sub": lambda n: [0, 1],
    "Mul": lambda n: [0, 1],
    "AveragePool": lambda n: [0],
    "GlobalAveragePool": lambda n: [0],
    "Resize": lambda n: [0],
    "ReduceMean": lambda n: [0],
}
# Elementwise ops are quantized only when all their inputs are activations (never a bias or scale constant).
ELEMENTWISE = {"Add", "Sub", "Mul"}

# Ops whose output quantizer can move to their (data) input unchanged: they only move or select values.
AGNOSTIC = {
    "MaxPool": [0], "Reshape": [0], "Transpose": [0], "Flatten": [0], "Squeeze": [0], "Unsqueeze": [0],
    "Slice": [0], "Split": [0], "Pad": [0], "Gather": [0], "Identity": [0], "Expand": [0], "Tile": [0],
    "DepthToSpace": [0], "SpaceToDepth": [0], "GlobalMaxPool": [0], "Concat": None,  # None: all inputs
}
STOPPERS = {"NonMaxSuppression", "TopK"}
TRANSFORMER_FLOAT = {"LayerNormalization", "Softmax", "Gelu", "Erf", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt",
                     "ReduceMean", "ReduceSum", "Tanh", "Sigmoid", "Reciprocal"}
# Pointwise ops (with at most one activation input) that make up decomposed activations such as hard-swish
# x * Clip(x + 3, 0, 6) / 6, swish x * Sigmoid(x) or x * HardSigmoid(x).
POINTWISE = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "HardSigmoid", "Sigmoid", "Min", "Max", "Tanh",
             "Softplus", "Neg", "Identity"}


def ignored_nodes(model: onnx.ModelProto, scope: IgnoredScope | None) -> set[str]:
    """Node names matched by ``scope``; InputError naming an entry that matches nothing when validating."""
    if scope is None or scope.is_empty():
        return set()
    names = {n.name for n in model.graph.node}
    hits: set[str] = set()
    missing: list[str] = []
    for name in scope.names:
        (hits.add(name) if name in names else missing.append(f"name {name!r}"))
    for pat in scope.patterns:
        found = {n for n in names if re.fullmatch(pat, n) or re.search(pat, n)}
        hits |= found
        if not found:
            missing.append(f"pattern {pat!r}")
    for op in scope.types:
        found = {n.name for n in model.graph.node if n.op_type == op}
        hits |= found
        if not found:
            missing.append(f"type {op!r}")
    for sub in scope.subgraphs:
        found = _subgraph_nodes(model, sub.inputs, sub.outputs)
        hits |= found
        if not found:
            missing.append(f"subgraph inputs={sub.inputs} outputs={sub.outputs}")
    if missing and scope.validate:
        raise InputError(f"ignored_scope: {', '.join(missing)} matched no node of the model")
    return hits


def _subgraph_nodes(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> set[str]:
    """Nodes on a path from a tensor or node in ``inputs`` to one in ``outputs`` (both ends included)."""
    g = GraphIndex(model)
    by_name = g.by_name
    start = {by_name[i].output[0] if i in by_name else i for i in inputs}
    # nodes reachable backwards from outputs, stopping at inputs
    back: set[str] = set()
    queue = deque(by_name[o] if o in by_name else g.producer.get(o) for o in outputs)
    while queue:
        n = queue.popleft()
        if n is None or n.name in back:
            continue
        back.add(n.name)
        for i in n.input:
            if i and i not in start and i in g.producer:
                queue.append(g.producer[i])
            elif i in start and i in g.producer:
                back.add(g.producer[i].name)
    fwd: set[str] = set()
    queue = deque(c for s in start for c, _ in g.consumers.get(s, []))
    queue.extend(by_name[i] for i in inputs if i in by_name)
    while queue:
        n = queue.popleft()
        if n.name in fwd or n.name not in back:
            continue
        fwd.add(n.name)
        for o in n.output:
            queue.extend(c for c, _ in g.consumers.get(o, []))
    return fwd


# Activation-quantizable ops per target device. GPU and NPU plugins run elementwise/pooling ops in float
# faster than with extra quantizers, so only the compute-heavy layers and Concat get input quantizers there.
_DEVICE_OPS = {
    TargetDevice.ANY: set(ACT_INPUTS),
    TargetDevice.CPU: set(ACT_INPUTS),
    TargetDevice.CPU_SPR: set(ACT_INPUTS),
    TargetDevice.GPU: set(ACT_INPUTS) - {"ReduceMean"},
    TargetDevice.NPU: {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool"},
}


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    """True when the graph has attention (Softmax between MatMuls) and a layer norm (fused or decomposed)."""
    ops = {n.op_type for n in model.graph.node}
    return "Softmax" in ops and "MatMul" in ops and bool(ops & {"LayerNormalization", "ReduceMean"})


def transformer_nodes(model: onnx.ModelProto, config: QuantizationConfig) -> set[str]:
    """Nodes that get transformer treatment: every node of a declared transformer; of a detected one (automatic
    safeguards), the first normalization and everything downstream of it; none otherwise."""
    if config.model_type == ModelType.TRANSFORMER:
        return {n.name for n in model.graph.node}
    if not (config.advanced.safeguard("detected_transformer") and looks_like_transformer(model)):
        return set()
    g = GraphIndex(model)
    norms = [n for n in g.nodes if n.op_type in ("LayerNormalization", "ReduceMean")]
    return {n.name for n in norms} | _downstream(g, norms)


def _downstream(g: GraphIndex, roots) -> set[str]:
    """Names of every node fed, directly or not, by the outputs of ``roots``."""
    seen: set[str] = set()
    queue = deque(roots)
    while queue:
        n = queue.popleft()
        for o in n.output:
            for c, _ in g.consumers.get(o, []):
                if c.name not in seen:
                    seen.add(c.name)
                    queue.append(c)
    return seen


def _non_float(model: onnx.ModelProto, g: GraphIndex) -> set[str]:
    """Tensors known not to be float32: typed non-float by shape inference or derived from Shape/Size."""
    bad = set()
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        et = vi.type.tensor_type.elem_type
        if et and et != onnx.TensorProto.FLOAT:
            bad.add(vi.name)
    shape_ops = [n for n in g.nodes if n.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin")]
    for n in shape_ops:
        bad.update(n.output)
    by_name = g.by_name
    typed = _typed_float(model)
    for name in _downstream(g, shape_ops):  # shape arithmetic: integer unless typed float by inference
        node = by_name[name]
        if node.op_type not in ("Cast", "ConstantOfShape", "Range"):
            bad.update(o for o in node.output if o not in typed)
    return bad


def _typed_float(model: onnx.ModelProto) -> set[str]:
    """Tensors that shape inference typed as float32."""
    return {vi.name for vi in list(model.graph.value_info) + list(model.graph.output)
            if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


# Output heads whose last weighted layer stays in float: class distributions (CTC character probabilities,
# classifier scores), where INT8 rounding of the logits flips argmax decisions. These layers are small
# (Gemm/MatMul over a few positions). Sigmoid maps (detection masks) are thresholded, not argmaxed: their last
# layer is quantized, which also lets the runtime fuse the Sigmoid into the INT8 layer at full resolution.
HEAD_GATES = {"Softmax", "LogSoftmax"}


def _sensitive_heads(g: GraphIndex) -> dict[str, str]:
    """Weighted layers whose output reaches a graph output only through a Softmax/LogSoftmax head.

    Their inputs and weights stay in float (see HEAD_GATES).
    """
    found: dict[str, str] = {}
    for out in g.outputs:
        queue, seen, gate = deque([(out, None)]), set(), None
        while queue:
            name, gate = queue.popleft()
            node = g.producer.get(name)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in WEIGHTED and not g.is_const_input(node.input[0]):
                if gate:
                    found[node.name] = f"auto_safeguard: last layer before the {gate} output head"
                continue
            g2 = gate or (node.op_type if node.op_type in HEAD_GATES else None)
            queue.extend((i, g2) for i in node.input if i and not g.is_const_input(i))
    return found


def build_plan(model: onnx.ModelProto, config: QuantizationConfig,
               warnings: list[str] | None = None) -> QuantizationPlan:
    """The quantization plan for a prepared model; InputError when nothing can be quantized."""
    from ptqflow.quantization.graph.prepare import onnx_opset

    g = GraphIndex(model)
    adv = config.advanced
    ignored = ignored_nodes(model, config.ignored_scope)
    transformer = config.model_type == ModelType.TRANSFORMER
    auto_tf = not transformer and adv.safeguard("detected_transformer") and looks_like_transformer(model)
    after_stop = _downstream(g, [n for n in g.nodes if n.op_type in STOPPERS])
    non_float = _non_float(model, g)
    heads = _sensitive_heads(g) if adv.safeguard("softmax_heads") else {}
    # Detected (not declared) transformers: only the region from the first normalization on is treated as
    # one; a convolutional backbone in front of it (OCR recognizers) keeps CNN placement, which is more accurate.
    norms = [n for n in g.nodes if n.op_type in ("LayerNormalization", "ReduceMean")]
    region = ({n.name for n in norms} | _downstream(g, norms)) if auto_tf else {n.name for n in g.nodes}
    dev_ops = _DEVICE_OPS[TargetDevice(config.target_device)]
    per_channel = adv.per_channel and onnx_opset(model) >= 13
    symmetric = config.effective_preset() == QuantizationPreset.PERFORMANCE
    floats: dict[str, tuple[str, str]] = {}  # node -> (deciding pass, reason)
    weights: dict[str, dict] = {}
    requests: list[tuple[str, str, int, bool]] = []  # tensor, consumer node, input index, act x act

    for n in g.nodes:
        why = _float_reason(n, g, ignored, after_stop, heads, (transformer or auto_tf) and n.name in region,
                            dev_ops, auto_tf)
        if why:
            if n.op_type in WEIGHTED or n.op_type in ACT_INPUTS:
                floats[n.name] = why
            continue
        w_idx, axis = WEIGHTED[n.op_type](n) if n.op_type in WEIGHTED else (None, None)
        act_idx = [i for i in ACT_INPUTS[n.op_type](n) if i < len(n.input) and n.input[i]]
        consts = [i for i in act_idx if g.is_const_input(n.input[i])]
        if n.op_type in ELEMENTWISE and (consts or len(act_idx) < 2):
            continue  # bias/scale constants: part of the preceding layer, never quantized here
        if n.op_type == "Mul" and _self_gated(g, n):
            continue  # x * f(x): a (hard-)swish activation, fused by the runtime into the layer before it
        if w_idx is not None and w_idx < len(n.input) and n.input[w_idx] in g.inits:
            w = n.input[w_idx]
            rank = len(g.inits[w].dims)
            ax = (axis % rank if axis is not None and rank > 1 else None) if per_channel else None
            if n.op_type == "MatMul" and rank != 2:
                ax = None if rank < 2 else ax
            entry = weights.setdefault(w, {"tensor": w, "axis": ax, "nodes": [], "op_type": n.op_type,
                                            "narrow_bits": 8})
            entry["nodes"].append([n.name, w_idx])
        acts = [i for i in act_idx if i not in consts and n.input[i] not in non_float]
        if w_idx is not None and w_idx in acts and n.input[w_idx] in g.inits:
            acts.remove(w_idx)
        matmul_aa = n.op_type in ("MatMul", "Gemm") and len(acts) == 2
        requests += [(n.input[i], n.name, i, matmul_aa) for i in acts]

    if not weights and not requests:
        raise InputError("model has nothing to quantize: no Conv/ConvTranspose/Gemm/MatMul weights and no "
                         "quantizable activations outside the ignored scope")
    _overflow_fix(g, weights, adv.overflow_fix.value)
    # A detected transformer region gets what a declared transformer gets: asymmetric activations (MIXED),
    # unless the user chose a preset. MiniLM, default settings: Spearman 0.9864 symmetric, 0.9948 asymmetric.
    asym = region if auto_tf and config.preset is None else set()
    acts = _place_activations(g, requests, ignored, symmetric, asym)
    return QuantizationPlan(
        preset=config.effective_preset().value, target_device=TargetDevice(config.target_device).value,
        transformer=transformer or auto_tf, per_channel=per_channel,
        weights=[WeightQuantizer(w["tensor"], w["axis"], [tuple(e) for e in w["nodes"]], w["op_type"], w["narrow_bits"])
                 for w in weights.values()],
        activations=[ActivationQuantizer(a["tensor"], [tuple(e) for e in a["edges"]], a["symmetric"], a["signed"],
                                         a["group"]) for a in acts],
        float_layers=[FloatLayer(k, reason, by) for k, (by, reason) in floats.items()],
        warnings=list(warnings or []) + (
            ["auto_safeguard: transformer-like graph; LayerNorm/Softmax/GELU regions kept in float"
             + ("; activations in it asymmetric (MIXED)" if asym else "")] if auto_tf else []))


def _self_gated(g: GraphIndex, n: onnx.NodeProto) -> bool:
    """True when one input of the binary op ``n`` is computed from the other by pointwise ops alone (x * f(x))."""
    a, b = n.input[0], n.input[1]
    return _pointwise_from(g, b, a) or _pointwise_from(g, a, b)


def _pointwise_from(g: GraphIndex, t: str, root: str, depth: int = 4) -> bool:
    """True when tensor ``t`` is ``root`` transformed by at most ``depth`` single-input pointwise ops."""
    for _ in range(depth):
        node = g.producer.get(t)
        if node is None or node.op_type not in POINTWISE:
            return False
        acts = [i for i in node.input if i and not g.is_const_input(i)]
        if len(acts) != 1:
            return False
        t = acts[0]
        if t == root:
            return True
    return False


def _float_reason(n, g, ignored, after_stop, heads, transformer, dev_ops, auto_tf) -> tuple[str, str] | None:
    """Which part of placement keeps node ``n`` in float and why, or None when it may be quantized."""
    if n.op_type not in WEIGHTED and n.op_type not in ACT_INPUTS:
        return "placement", "not a quantizable op"
    if n.name in ignored:
        return "ignored_scope", "ignored_scope"
    if n.name in after_stop:
        return "placement", "downstream of NonMaxSuppression/TopK"
    if n.name in heads:
        return "safeguard_softmax_heads", heads[n.name]
    if transformer and n.op_type in TRANSFORMER_FLOAT:
        what = "transformer: elementwise/normalization region kept in float"
        return ("safeguard_detected_transformer", "auto_safeguard: " + what) if auto_tf else ("model_type", what)
    if n.op_type not in dev_ops and n.op_type not in WEIGHTED:
        return "target_device", "not quantized on this target device"
    return None


def _overflow_fix(g: GraphIndex, weights: dict, mode: str) -> None:
    """7-bit weight codes for the first Conv after each input (first_layer) or every Conv (enable)."""
    if mode == "disable":
        return
    for entry in weights.values():
        if entry["op_type"] not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        if mode == "enable":
            entry["narrow_bits"] = 7
    if mode == "first_layer":
        graph_inputs = {name for name in g.consumers if name not in g.producer and name not in g.inits}
        for entry in weights.values():
            node_names = {nm for nm, _ in entry["nodes"]}
            for n in g.nodes:
                if n.name in node_names and _reaches_input(g, n.input[0], graph_inputs):
                    entry["narrow_bits"] = 7


def _reaches_input(g: GraphIndex, tensor: str, graph_inputs: set[str]) -> bool:
    """True when ``tensor`` comes from a graph input without passing another weighted layer."""
    seen, queue = set(), deque([tensor])
    while queue:
        t = queue.popleft()
        if t in graph_inputs:
            return True
        node = g.producer.get(t)
        if node is None or node.name in seen or node.op_type in WEIGHTED:
            continue
        seen.add(node.name)
        queue.extend(i for i in node.input if i and not g.is_const_input(i))
    return False


def _place_activations(g: GraphIndex, requests, ignored: set[str], symmetric: bool,
                       asymmetric_nodes: set[str] = frozenset()) -> list[dict]:
    """Merge the requested input quantizers: move each up through agnostic ops, one quantizer per tensor."""
    req_edges = {(node, idx) for _, node, idx, _ in requests}
    memo: dict[str, bool] = {}

    def all_quantized(t: str) -> bool:  # every reader of t leads to a quantizer
        if t not in memo:
            memo[t] = False
            cons = g.consumers.get(t, [])
            memo[t] = bool(cons) and all((c.name, i) in req_edges or _movable(c, i) for c, i in cons)
        return memo[t]

    def _movable(c, i) -> bool:
        if c.op_type not in AGNOSTIC or c.name in ignored or (AGNOSTIC[c.op_type] and i not in AGNOSTIC[c.op_type]):
            return False
        return all(all_quantized(o) for o in c.output if o)

    def walk(t: str, edge: tuple[str, int]) -> list[tuple[str, tuple[str, int]]]:
        node = g.producer.get(t)
        if node is None or node.op_type not in AGNOSTIC or node.name in ignored:
            return [(t, edge)]
        data = [i for i, name in enumerate(node.input) if name and (AGNOSTIC[node.op_type] is None or i in AGNOSTIC[node.op_type])]
        if any(g.is_const_input(node.input[i]) for i in data) or not all(all_quantized(node.input[i]) for i in data):
            return [(t, edge)]
        out: list = []
        for i in data:
            out += walk(node.input[i], (node.name, i))
        return out

    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    points: dict[str, dict] = {}
    for tensor, node, idx, aa in requests:
        placed = walk(tensor, (node, idx))
        for t, e in placed:
            sym = symmetric and node not in asymmetric_nodes
            p = points.setdefault(t, {"tensor": t, "edges": [], "symmetric": sym, "signed": None})
            p["symmetric"] = p["symmetric"] or sym  # a consumer outside the asymmetric region keeps it symmetric
            if list(e) not in p["edges"]:
                p["edges"].append(list(e))
            if aa:
                p["symmetric"] = True  # activation x activation MatMul: symmetric on both sides
        for t, _ in placed[1:]:
            parent[find(t)] = find(placed[0][0])
    for t, p in points.items():
        p["group"] = find(t)
    return list(points.values())
