"""The per-layer summary of a quantization: what was quantized, kept in float and why, bias shifts."""

from __future__ import annotations

import onnx

from ptqflow.quantization.algorithms import quantizer_placement as placement
from ptqflow.quantization.plan import QuantizationPlan


def layer_summary(prepared: onnx.ModelProto, plan: QuantizationPlan, records: list[dict], bc: list[dict]) -> list[dict]:
    """One dict per quantizable layer: status quantized/float, reason and the pass or placement rule that decided
    it (``decided_by``) with the measurement that decided it (``measured``, see plan.MEASURED_KEYS), weight and
    input quantizers, bias shift and the bias-correction record (with the guard's error_before, error_after,
    held_out where it judged), the weight's AdaRound record (``weight.adaround``, plan.adaround) where it ran,
    and ``output_error``: the measured error contribution of the layer's input quantizers (the sum over those
    measured; plan.output_errors) where the engine measured one; ``input_ranges``: the range estimator of each
    input the range search chose (plan.ranges), where it is not the default; ``per_channel_inputs``: the inputs
    quantized with a scale per channel (a depthwise conv's), where any.
    ``records``: what insert_qdq inserted; ``bc``: the bias-correction records."""
    weights = {r["tensor"]: r for r in records if r["kind"] == "weight"}
    acts_by_node: dict[str, list] = {}
    per_channel = {r["tensor"] for r in records if r["kind"] == "activation" and r.get("axis") is not None}
    for r in records:
        if r["kind"] == "activation":
            for c in r["consumers"]:
                acts_by_node.setdefault(c, []).append(r["tensor"])
    floats = {f.node: f for f in plan.float_layers}
    bc_by = {d.get("layer"): d for d in bc}
    contribution = _contributions(plan)
    # the activation ranges the range search chose and kept, where another estimator than the default won
    chosen = {p.tensor: plan.ranges[p.group]["estimator"] for p in plan.activations
              if p.group in plan.ranges and plan.ranges[p.group].get("estimator") != "mean_minmax"}
    rows = []
    for n in prepared.graph.node:
        if n.op_type not in placement.WEIGHTED and n.op_type not in placement.ACT_INPUTS:
            continue
        w = next((weights[i] for i in n.input if i in weights), None)
        inputs = acts_by_node.get(n.name, [])
        row = {"name": n.name, "op_type": n.op_type}
        if w or inputs:
            row.update(status="quantized", weight=({"tensor": w["tensor"], "per_channel": w["axis"] is not None,
                                                    "bits": w["bits"]} if w else None),
                       quantized_inputs=inputs)
            if any(t in per_channel for t in inputs):
                row["per_channel_inputs"] = [t for t in inputs if t in per_channel]
            if any(t in chosen for t in inputs):
                row["input_ranges"] = {t: chosen[t] for t in inputs if t in chosen}
            if w and w["tensor"] in plan.adaround:
                row["weight"]["adaround"] = plan.adaround[w["tensor"]]
        else:
            decision = floats.get(n.name)
            row.update(status="float", reason=decision.reason if decision else "no activation input to quantize",
                       decided_by=decision.by if decision else "placement")
            if decision is not None and decision.measured:
                row["measured"] = decision.measured
            if n.name not in floats and n.op_type in placement.ELEMENTWISE:
                continue  # bias adds / constant scales: part of a layer, not layers themselves
        if n.name in contribution:
            row["output_error"] = contribution[n.name]
        if n.name in bc_by:
            d = bc_by[n.name]
            row["bias_correction"] = d
            row["bias_corrected"] = bool(d.get("applied"))
        rows.append(row)
    for f in plan.float_tensors:
        row = {"name": f.tensor, "op_type": "tensor", "status": "float", "reason": f.reason, "decided_by": f.by}
        if f.measured:
            row["measured"] = f.measured
        if f.tensor in plan.output_errors:
            row["output_error"] = plan.output_errors[f.tensor]
        rows.append(row)
    return rows


def _contributions(plan: QuantizationPlan) -> dict[str, float]:
    """Node -> the summed measured error contributions (plan.output_errors) of the activation quantizers feeding
    it, kept or reverted to float, for the nodes with at least one measured."""
    edges = {p.tensor: p.edges for p in plan.activations}
    by_node: dict[str, float] = {}
    for tensor, gain in plan.output_errors.items():
        for node, _ in edges.get(tensor, []):
            by_node[node] = by_node.get(node, 0.0) + gain
    return by_node
