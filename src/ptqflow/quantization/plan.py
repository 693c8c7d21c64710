"""The quantization plan: which weights and activation tensors get a quantizer and how, what stays in float (each
decision with the pass that made it and why), and SmoothQuant's factors.

Format-neutral: it names tensors, edges and number formats, not QDQ nodes. Writing it as ONNX QDQ is one writer
(ptqflow.quantization.algorithms.minmax.insert_qdq); other formats would be other writers of the same plan. It is
saved as JSON next to the statistics (``to_json`` / ``from_json``, with a version) so another process applies it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ptqflow.errors import InputError

PLAN_VERSION = 2  # 2: float decisions record the pass that made them ("by"); 1 is read with by=""

Edge = tuple[str, int]  # (consumer node name, input index)

# A measured float decision: the model's output error against FP32 with the quantizer (or group) in int8 and
# with it in float (normalized as ptqflow.quantization.algorithms.output_error defines it), their difference, the
# model output whose error fell the most, and the calibration samples measured on.
MEASURED_KEYS = ("error_int8", "error_float", "gain", "output", "samples")


@dataclass
class WeightQuantizer:
    """An int8 weight: ``axis`` the per-output-channel axis (None: per tensor); ``nodes`` its consumer edges."""

    tensor: str
    axis: int | None
    nodes: list[Edge]
    op_type: str
    narrow_bits: int = 8  # 7 with overflow_fix


@dataclass
class ActivationQuantizer:
    """An activation quantizer on ``tensor``, rewiring ``edges``; quantizers of one ``group`` share a scale (they
    meet at a Concat or another op that only moves values). ``signed`` is known once the statistics are (None
    before). ``axis``: a scale per channel of this axis (the input of depthwise convolutions only: see
    AdvancedParameters.per_channel_depthwise_inputs), from ``channel_absmax`` (each channel's largest |x| over
    the calibration samples, filled with the statistics); None: one scale for the tensor."""

    tensor: str
    edges: list[Edge]
    symmetric: bool
    signed: bool | None = None
    group: str = ""
    axis: int | None = None
    channel_absmax: list[float] | None = None


@dataclass
class FloatLayer:
    """A quantizable layer kept in float: ``by`` the pass that decided it, ``reason`` why; ``measured``: the
    measurement that decided it, where one did (see MEASURED_KEYS)."""

    node: str
    reason: str
    by: str = ""
    measured: dict | None = None


@dataclass
class FloatTensor:
    """An activation quantizer dropped after placement (the tensor stays float): ``by`` the pass, ``reason`` why;
    ``measured``: the measurement that decided it, where one did (see MEASURED_KEYS)."""

    tensor: str
    reason: str
    by: str = ""
    measured: dict | None = None


@dataclass
class SmoothQuantFactors:
    """SmoothQuant's migration strength as configured (a number, or "auto": measured per tensor) and, per smoothed
    activation tensor, its factors (``scales``), the MatMuls that read it (``nodes``), its ``alpha`` and, where
    measured, each candidate's error (``errors``)."""

    alpha: float | str
    tensors: dict[str, dict]


@dataclass
class QuantizationPlan:
    """What quantize inserts (see the module docstring). ``collected``: what the statistics pass observed beyond
    the activation ranges (ptqflow.quantization.statistics.points), so quantize can refuse statistics that lack
    what its config needs."""

    preset: str
    target_device: str
    transformer: bool
    per_channel: bool
    weights: list[WeightQuantizer] = field(default_factory=list)
    activations: list[ActivationQuantizer] = field(default_factory=list)
    float_layers: list[FloatLayer] = field(default_factory=list)
    float_tensors: list[FloatTensor] = field(default_factory=list)
    bias_layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    collected: dict[str, Any] = field(default_factory=dict)
    smooth_quant: SmoothQuantFactors | None = None
    output_errors: dict[str, float] = field(default_factory=dict)  # tensor -> its measured error contribution
    # scale group -> the range chosen by measured error (passes/range_search.py): {"estimator", "min", "max",
    # "error" (its squared error against FP32), "errors" (every candidate's)}; Statistics.ranges applies it
    ranges: dict[str, dict] = field(default_factory=dict)
    # the verdict on the chosen ranges as a whole (passes/range_search.py): {"kept", "error_chosen", "error_default",
    # "relative_chosen", "relative_default", "output", "samples", "held_out"}: the model's output errors on held-out
    # samples with them and with the default estimator's
    range_verdict: dict[str, Any] = field(default_factory=dict)
    # weight tensor -> what AdaRound did with it (algorithms/adaround.py): {"applied", "flipped" (share of codes
    # rounded the other way than nearest), "loss_nearest", "loss_adaround" (the layer's relative output error),
    # "iterations", "rows", "reason" where not applied}; set at quantization
    adaround: dict[str, dict] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def refinements(self) -> tuple[int, int, int]:
        """The counts of float tensors, float layers and chosen ranges: what a quantize-stage pass changes (the plan
        is then written again)."""
        return len(self.float_tensors), len(self.float_layers), len(self.ranges)

    def keep_in_float(self, decisions: list[FloatTensor]) -> None:
        """Record ``decisions`` and drop their tensors' activation quantizers. A layer that loses one input's
        quantizer runs in float, so the quantizers of its other inputs stop at it too (their edges into it go;
        one left with no edge goes, recorded with the decision's pass): an Add with one input quantized and the
        other float only adds rounding error, and OpenVINO's CPU plugin failed to compile one (MiniLM's position
        embedding Add, kept float by mixed precision: "Check 'convert->constant_fold(...)' failed")."""
        self.float_tensors.extend(decisions)
        drop = {d.tensor: d for d in decisions}
        stopped = {node: drop[p.tensor] for p in self.activations if p.tensor in drop for node, _ in p.edges}
        self.activations = [p for p in self.activations if p.tensor not in drop]
        lost = self.inputs_only_to(set(stopped))
        for p in lost:
            d = stopped[p.edges[0][0]]
            self.float_tensors.append(FloatTensor(
                p.tensor, f"its layer {p.edges[0][0]} runs in float: its input {d.tensor} is kept in float", d.by))
        gone = {p.tensor for p in lost}
        self.activations = [p for p in self.activations if p.tensor not in gone]
        for p in self.activations:
            p.edges = [e for e in p.edges if e[0] not in stopped]

    def inputs_only_to(self, layers: set[str]) -> list[ActivationQuantizer]:
        """The activation quantizers whose every edge goes into ``layers``: they go when those layers go float."""
        return [a for a in self.activations if a.edges and all(node in layers for node, _ in a.edges)]

    def keep_layers_float(self, decisions: list[FloatLayer]) -> None:
        """Record ``decisions`` and take their layers out of the plan: their weight quantizers, the activation
        quantizers' edges into them (a quantizer left with no edge goes) and their bias correction."""
        self.float_layers.extend(decisions)
        nodes = {d.node for d in decisions}
        for w in self.weights:
            w.nodes = [e for e in w.nodes if e[0] not in nodes]
        for a in self.activations:
            a.edges = [e for e in a.edges if e[0] not in nodes]
        self.weights = [w for w in self.weights if w.nodes]
        self.activations = [a for a in self.activations if a.edges]
        self.bias_layers = [b for b in self.bias_layers if b not in nodes]

    def check_matches(self, model) -> None:
        """InputError when a tensor or consumer node of this plan is not in ``model`` (the prepared ModelProto): the
        statistics came from another model, or one prepared with other settings."""
        g = model.graph
        names = {n.name for n in g.node}
        tensors = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
        for p in self.activations:
            if p.tensor not in tensors or any(e[0] not in names for e in p.edges):
                raise InputError(f"statistics do not match this model: tensor {p.tensor!r} of the plan is not in it")
        for w in self.weights:
            if w.tensor not in tensors:
                raise InputError(f"statistics do not match this model: weight {w.tensor!r} of the plan is not in it")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (edges as [node, index] lists)."""
        doc = asdict(self)
        if self.smooth_quant is None:
            del doc["smooth_quant"]
        if not self.output_errors:  # only measured plans carry these: unmeasured plans stay as they were
            del doc["output_errors"]
        if not self.ranges:
            del doc["ranges"]
        if not self.range_verdict:
            del doc["range_verdict"]
        if not self.adaround:
            del doc["adaround"]
        for f in doc["float_layers"] + doc["float_tensors"]:
            if f["measured"] is None:
                del f["measured"]
        for w in doc["weights"]:
            w["nodes"] = [list(e) for e in w["nodes"]]
        for a in doc["activations"]:
            a["edges"] = [list(e) for e in a["edges"]]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "QuantizationPlan":
        """The plan ``to_json`` wrote (this version or 1); InputError naming the field that does not fit."""
        if not isinstance(doc, dict):
            raise InputError(f"plan: expected a JSON object, got {type(doc).__name__}")
        version = doc.get("version")
        if version not in (1, PLAN_VERSION):
            raise InputError(f"plan: version {version!r} is not one this ptqflow reads (1, {PLAN_VERSION}); "
                             "collect statistics again")
        try:
            sq = doc.get("smooth_quant")
            return cls(
                preset=doc["preset"], target_device=doc["target_device"], transformer=bool(doc["transformer"]),
                per_channel=bool(doc["per_channel"]),
                weights=[_make(WeightQuantizer, w, nodes=[_edge(e) for e in w["nodes"]]) for w in doc["weights"]],
                activations=[_make(ActivationQuantizer, a, edges=[_edge(e) for e in a["edges"]])
                             for a in doc["activations"]],
                float_layers=[_make(FloatLayer, f) for f in doc.get("float_layers", [])],
                float_tensors=[_make(FloatTensor, f) for f in doc.get("float_tensors", [])],
                bias_layers=list(doc.get("bias_layers", [])), warnings=list(doc.get("warnings", [])),
                collected=dict(doc.get("collected") or {}),
                output_errors={str(k): float(v) for k, v in (doc.get("output_errors") or {}).items()},
                ranges={str(k): dict(v) for k, v in (doc.get("ranges") or {}).items()},
                range_verdict=dict(doc.get("range_verdict") or {}),
                adaround={str(k): dict(v) for k, v in (doc.get("adaround") or {}).items()},
                smooth_quant=SmoothQuantFactors(sq["alpha"] if sq["alpha"] == "auto" else float(sq["alpha"]),
                                                dict(sq["tensors"])) if sq else None,
                version=PLAN_VERSION)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"plan: field {exc} is missing or malformed; collect statistics again") from None


def _edge(e) -> Edge:
    node, index = e
    return str(node), int(index)


def _make(kind, doc: dict, **override):
    """``kind`` from the JSON object ``doc``, its known fields only (unknown ones are newer additions)."""
    names = {f.name for f in fields(kind)}
    return kind(**{**{k: v for k, v in doc.items() if k in names}, **override})
