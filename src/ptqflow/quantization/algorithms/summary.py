"""The per-layer summary of a quantization: what was quantized, kept in float and why, bias shifts."""

from __future__ import annotations

import onnx

from ptqflow.quantization.algorithms import quantizer_placement as placement
from ptqflow.quantization.plan import QuantizationPlan


def layer_summary(prepared: onnx.ModelProto, plan: QuantizationPlan, records: list[dict], bc: list[dict]) -> list[dict]:
    """One dict per quantizable layer: status quantized/float, reason and the pass or placement rule that decided
    it (``decided_by``), weight and input quantizers, bias shift.
    ``records``: what insert_qdq inserted; ``bc``: the bias-correction records."""
    weights = {r["tensor"]: r for r in records if r["kind"] == "weight"}
    acts_by_node: dict[str, list] = {}
    for r in records:
        if r["kind"] == "activation":
            for c in r["consumers"]:
                acts_by_node.setdefault(c, []).append(r["tensor"])
    floats = {f.node: f for f in plan.float_layers}
    bc_by = {d.get("layer"): d for d in bc}
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
        else:
            decision = floats.get(n.name)
            row.update(status="float", reason=decision.reason if decision else "no activation input to quantize",
                       decided_by=decision.by if decision else "placement")
            if n.name not in floats and n.op_type in placement.ELEMENTWISE:
                continue  # bias adds / constant scales: part of a layer, not layers themselves
        if n.name in bc_by:
            d = bc_by[n.name]
            row["bias_correction"] = d
            row["bias_corrected"] = bool(d.get("applied"))
        rows.append(row)
    for f in plan.float_tensors:
        rows.append({"name": f.tensor, "op_type": "tensor", "status": "float", "reason": f.reason,
                     "decided_by": f.by})
    return rows
