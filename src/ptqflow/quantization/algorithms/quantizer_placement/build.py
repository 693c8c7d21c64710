"""build_plan: the QuantizationPlan for a prepared model (which weights and activation tensors get a quantizer,
which layers stay in float, decided by which rule or pass and why)."""

from __future__ import annotations

from collections import Counter

import onnx

from ptqflow.config import ModelType, QuantFormat, QuantizationConfig, QuantizationPreset, TargetDevice, TargetRuntime
from ptqflow.errors import InputError
from ptqflow.logs import get_logger
from ptqflow.quantization.algorithms.quantizer_placement import (detected_transformer, overflow_fix, runtime_units,
                                                                 softmax_heads)
from ptqflow.quantization.algorithms.quantizer_placement.activations import place_activations, self_gated
from ptqflow.quantization.algorithms.quantizer_placement.ignored_scope import ignored_nodes
from ptqflow.quantization.algorithms.quantizer_placement.ops import (ACT_INPUTS, DEVICE_OPS, ELEMENTWISE, STOPPERS,
                                                                     TRANSFORMER_FLOAT, WEIGHTED, is_depthwise)
from ptqflow.quantization.algorithms.quantizer_placement.regions import (downstream, non_float_tensors,
                                                                         reduced_statistics)
from ptqflow.quantization.graph.index import GraphIndex
from ptqflow.quantization.graph.prepare import onnx_opset
from ptqflow.quantization.passes.base import PassResult
from ptqflow.quantization.plan import ActivationQuantizer, FloatLayer, QuantizationPlan, WeightQuantizer

log = get_logger("placement")


def _log(result: PassResult) -> None:
    for change in result.changes:
        log.info("%s: %s", result.name, change)


def build_plan(model: onnx.ModelProto, config: QuantizationConfig,
               warnings: list[str] | None = None) -> QuantizationPlan:
    """The quantization plan for a prepared model; InputError when nothing can be quantized."""
    g = GraphIndex(model)
    adv = config.advanced
    ignored = ignored_nodes(model, config.ignored_scope)
    transformer = config.model_type == ModelType.TRANSFORMER
    auto_tf = detected_transformer.PASS.detected(model, config)
    after_stop = downstream(g, [n for n in g.nodes if n.op_type in STOPPERS])
    non_float = non_float_tensors(model, g)
    statistics = reduced_statistics(g)  # elementwise ops read them unquantized (regions.reduced_statistics)
    heads = {}
    if softmax_heads.PASS.enabled(adv):
        heads, result = softmax_heads.PASS.float_nodes(g)
        _log(result)
    region = detected_transformer.PASS.region(g) if auto_tf else {n.name for n in g.nodes}
    dev_ops = DEVICE_OPS[TargetDevice(config.target_device)]
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
        if n.op_type == "Mul" and self_gated(g, n):
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
        acts = [i for i in act_idx if i not in consts and n.input[i] not in non_float
                and not (n.op_type in ELEMENTWISE and n.input[i] in statistics)]
        if w_idx is not None and w_idx in acts and n.input[w_idx] in g.inits:
            acts.remove(w_idx)
        matmul_aa = n.op_type in ("MatMul", "Gemm") and len(acts) == 2
        requests += [(n.input[i], n.name, i, matmul_aa) for i in acts]

    if not weights and not requests:
        raise InputError("model has nothing to quantize: no Conv/ConvTranspose/Gemm/MatMul weights and no "
                         "quantizable activations outside the ignored scope")
    if overflow_fix.PASS.enabled(adv):
        _log(overflow_fix.PASS.run(g, weights, adv.overflow_fix.value))
    # A detected transformer region gets what a declared transformer gets: asymmetric activations (MIXED),
    # unless the user chose a preset: they are the more accurate there (evidence:
    # docs/algorithms.md#detected-transformer).
    asym = region if auto_tf and config.preset is None else set()
    # IntegerOps layers read the integer tensor itself: their quantizers stay where they are requested
    integer_ops = config.quant_format == QuantFormat.IntegerOps
    units = config.effective_target_runtime() == TargetRuntime.ONNXRUNTIME and not integer_ops
    movable = {} if integer_ops else runtime_units.ORT_MOVABLE if units else None
    acts = place_activations(g, requests, ignored, symmetric, asym, movable)
    if units:  # onnxruntime fuses a layer into its int8 kernel only with a quantizer on its output too
        acts = runtime_units.add_unit_outputs(g, acts, non_float, symmetric)
    # onnxruntime's fused int8 Conv takes one activation scale: QDQ for OpenVINO's placement only
    if adv.per_channel_depthwise_inputs and per_channel and config.quant_format == QuantFormat.QDQ and not units:
        _per_channel_depthwise_inputs(g, acts)
    return QuantizationPlan(
        preset=config.effective_preset().value, target_device=TargetDevice(config.target_device).value,
        transformer=transformer or auto_tf, per_channel=per_channel,
        weights=[WeightQuantizer(w["tensor"], w["axis"], [tuple(e) for e in w["nodes"]], w["op_type"], w["narrow_bits"])
                 for w in weights.values()],
        activations=[ActivationQuantizer(a["tensor"], [tuple(e) for e in a["edges"]], a["symmetric"], a["signed"],
                                         a["group"], a.get("axis")) for a in acts],
        float_layers=[FloatLayer(k, reason, by) for k, (by, reason) in floats.items()],
        warnings=list(warnings or []) + (
            ["auto_safeguard: transformer-like graph; LayerNorm/Softmax/GELU regions kept in float"
             + ("; activations in it asymmetric (MIXED)" if asym else "")] if auto_tf else []))


def _per_channel_depthwise_inputs(g: GraphIndex, acts: list[dict]) -> None:
    """Give a scale per channel (axis 1) to each activation quantizer whose every edge is the data input of a
    depthwise convolution and which shares its scale with no other (a Concat group has one grid): a depthwise conv
    never mixes channels, so the runtime folds each input channel's scale into that channel's weight scale."""
    sizes = Counter(a["group"] for a in acts)
    for a in acts:
        if sizes[a["group"]] == 1 and a["edges"] and all(
                i == 0 and is_depthwise(g.by_name.get(node), g.inits) for node, i in a["edges"]):
            a["axis"] = 1


def _float_reason(n, g, ignored, after_stop, heads, transformer, dev_ops, auto_tf) -> tuple[str, str] | None:
    """Which part of placement keeps node ``n`` in float and why, or None when it may be quantized."""
    if n.op_type not in WEIGHTED and n.op_type not in ACT_INPUTS:
        return "placement", "not a quantizable op"
    if n.name in ignored:
        return "ignored_scope", "ignored_scope"
    if n.name in after_stop:
        return "placement", "downstream of NonMaxSuppression/TopK"
    if n.name in heads:
        return heads[n.name]
    if transformer and n.op_type in TRANSFORMER_FLOAT:
        what = "transformer: elementwise/normalization region kept in float"
        return ("safeguard_detected_transformer", "auto_safeguard: " + what) if auto_tf else ("model_type", what)
    if n.op_type not in dev_ops and n.op_type not in WEIGHTED:
        return "target_device", "not quantized on this target device"
    return None
