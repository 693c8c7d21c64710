"""ptqflow's public API: Dataset, quantize, and its two halves collect_statistics / apply_quantization.

collect_statistics prepares the graph, decides placement (the plan) and observes the tensors the plan needs;
apply_quantization turns the FP32 model and those statistics into an INT8 QDQ model, then corrects biases.
The halves are separate pipeline steps (collect-stats, quantize) and may run in different processes.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx

from ptqflow.algorithms import bc_guard, placement, smooth_quant
from ptqflow.algorithms.minmax import insert_qdq
from ptqflow.config import (AdvancedParameters, IgnoredScope, ModelType, QuantizationConfig, QuantizationPreset,
                            RangeEstimator, TargetDevice)
from ptqflow.errors import InputError
from ptqflow.graph.prepare import MAX_IR_VERSION, graph_inputs, is_large, prepare_model
from ptqflow.runtime import make_session
from ptqflow.statistics.runner import make_runner
from ptqflow.statistics import Statistics
from ptqflow.statistics.collector import augment, check_sample, input_specs

try:  # bias correction lives in its own modules
    from ptqflow.algorithms import bias_correction, fast_bias_correction
    from ptqflow.algorithms.bias_layers import find_bias_layers
except ImportError:  # pragma: no cover
    bias_correction = fast_bias_correction = None

    def find_bias_layers(model):  # type: ignore[no-redef]
        return []

log = logging.getLogger(__name__)
MAX_BATCH = 8  # samples stacked per run when the batch dim is dynamic


class Dataset:
    """A calibration dataset: any iterable of items, and ``transform_fn`` mapping an item to the model input.

    The model input is a dict input-name -> array, or a bare array for single-input models. Items that are
    tuples ``(data, annotation[, metadata])`` (OpenVINO POT data loaders) are unpacked to ``data`` when no
    ``transform_fn`` is given.
    """

    def __init__(self, data_source: Iterable, transform_fn: Callable[[Any], Any] | None = None):
        self.data_source = data_source
        self.transform_fn = transform_fn

    def get_inference_data(self) -> Iterator:
        """The transformed items, in order."""
        for item in self.data_source:
            if self.transform_fn is not None:
                yield self.transform_fn(item)
            elif isinstance(item, tuple) and 2 <= len(item) <= 3 and not _all_arrays(item):
                yield item[0]
            else:
                yield item

    def __iter__(self) -> Iterator:
        return self.get_inference_data()


def _all_arrays(item) -> bool:
    return all(isinstance(x, np.ndarray) for x in item)


def _as_dict(item, names: list[str], index: int) -> dict:
    """A model-input dict from a dict, a bare array (single input) or a tuple/list of arrays (input order)."""
    if isinstance(item, dict):
        return item
    if isinstance(item, (list, tuple)) and len(item) == len(names) and len(names) > 1:
        return dict(zip(names, item))
    if len(names) == 1:
        return {names[0]: item}
    raise InputError(f"calibration sample {index}: a bare array was given but the model has inputs {names}; "
                     "give a dict keyed by input name")


def _samples(dataset, model: onnx.ModelProto, limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Checked sample dicts from ``dataset`` (a Dataset or any iterable), at most ``limit``."""
    specs = input_specs(model)
    items = dataset.get_inference_data() if isinstance(dataset, Dataset) else iter(dataset)
    for i, item in enumerate(islice(items, limit)):
        yield check_sample(_as_dict(item, list(specs), i), i, specs)


@dataclass
class QuantizationResult:
    """The INT8 model and the per-layer summary (what was quantized, kept in float and why, bias shifts)."""

    model: onnx.ModelProto
    layers: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# collect_statistics
# ---------------------------------------------------------------------------------------------------------


def statistics_request(config: QuantizationConfig) -> dict:
    """What ``collect_statistics`` observes for ``config`` beyond the planned ranges, as a JSON-ready dict.

    The one place that decides it: collect_statistics gathers exactly this and records it in the plan
    (``plan["collected"]``), the collect-stats step puts it in its cache key, and quantize refuses statistics
    that lack what its own config needs instead of quietly skipping the layers."""
    return {"bias_input_means": bool(config.fast_bias_correction and not config.advanced.disable_bias_correction)}


def collect_statistics(model, dataset, config: QuantizationConfig | None = None, *, device: str = "cpu",
                       keep_samples: int = 0, _kept: list | None = None) -> Statistics:
    """Prepare ``model``, plan the quantizers and observe the planned tensors on at most ``config.subset_size``
    samples of ``dataset``. Returns the Statistics (with the plan).
    """
    config = config or QuantizationConfig()
    prepared, warnings = prepare_model(model)
    stream = _samples(dataset, prepared, config.subset_size)
    smoothing = {}
    alpha = config.advanced.smooth_quant_alpha
    region = placement.transformer_nodes(prepared, config) if alpha is not None else set()
    if region:
        region -= placement.ignored_nodes(prepared, config.ignored_scope)
        # replayed below: the dataset may be a one-shot iterator
        head = list(islice(stream, config.advanced.smooth_quant_samples))
        runtime = config.advanced.statistics_runtime
        smoothing = smooth_quant.smooth(prepared, region, head, alpha,
                                        lambda m, outs: make_runner(m, outs, device, runtime, _session))
        stream = chain(head, stream)
    plan = placement.build_plan(prepared, config, warnings)
    if smoothing:
        plan["smooth_quant"] = {"alpha": alpha, "tensors": smoothing}
    layers = find_bias_layers(prepared)
    plan["bias_layers"] = [layer.name for layer in layers]
    plan["collected"] = request = statistics_request(config)
    tensors = sorted({p["tensor"] for p in plan["activations"]})
    means = {}
    for layer in layers if request["bias_input_means"] else []:  # FastBiasCorrection's input means; its reference is the FP32 layer
        means["in\0" + layer.name] = (layer.input, layer.input_channel_axis)
    batchable = _batchable(prepared, tensors)
    spread = ({t: (t, 1) for t in _depthwise_inputs(prepared, plan["activations"])}
              if config.advanced.auto_safeguards else {})
    aug, out_map = augment(prepared, tensors, means, per_sample=batchable, channel_absmax=spread)
    runner = make_runner(aug, list(out_map), device, config.advanced.statistics_runtime, _session)
    acc = _Accumulator(out_map)
    n = 0
    kept_probe = _kept if _kept is not None else []
    search = config.advanced.auto_safeguards and config.advanced.sensitivity_search
    keep_samples = max(keep_samples, config.advanced.sensitivity_samples if search else 0)
    batches = _batches(stream, batchable, keep_samples, kept_probe)
    for outs, count in runner.map(batches):
        acc.add(outs, count)
        n += count
    if n == 0:
        raise InputError("calibration dataset is empty: at least one sample is needed")
    stats = acc.result(plan, n)
    stats._prepared = prepared  # reused by quantize_with_config in the same process (not saved)
    _check_finite(stats)
    _fill_signedness(stats)
    _outlier_safeguard(stats, config)
    _depthwise_safeguard(prepared, stats, config, acc.channel_absmax(n))
    if config.advanced.auto_safeguards and config.advanced.sensitivity_search and kept_probe:
        _sensitivity_safeguard(prepared, stats, config, kept_probe, device)
    return stats


def _is_depthwise(node, inits) -> bool:
    """True for a Conv with one input channel per group (depthwise)."""
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group > 1 and inits[node.input[1]].dims[1] == 1


def _depthwise_inputs(prepared, points: list[dict]) -> set[str]:
    """Tensors of the activation points whose every consumer edge is a depthwise convolution."""
    nodes = {n.name: n for n in prepared.graph.node}
    inits = {t.name: t for t in prepared.graph.initializer}
    return {p["tensor"] for p in points if all(_is_depthwise(nodes.get(e[0]), inits) for e in p["edges"])}


def _depthwise_safeguard(prepared, stats: Statistics, config: QuantizationConfig,
                         channel_absmax: dict[str, np.ndarray]) -> None:
    """Keep in float two-sided inputs of depthwise convolutions whose channel ranges differ widely.

    A depthwise conv never mixes channels, so the channels whose range is far below the per-tensor scale lose
    their precision for good; two-sided (pre-activation, e.g. a BatchNorm output) inputs are where this bites.
    Thresholds: ``advanced.depthwise_channel_spread`` and ``advanced.depthwise_two_sided_ratio`` (measured on
    PP-OCR: quantizing the detector's depthwise inputs keeps its stem in int8 at no cost).
    """
    adv = config.advanced
    if not adv.auto_safeguards:
        return
    ranges = stats.ranges(True)
    depthwise = _depthwise_inputs(prepared, stats.plan["activations"])
    keep = []
    for p in stats.plan["activations"]:
        lo, hi = ranges[p["group"]]
        absmax = channel_absmax.get(p["tensor"])
        spread = float(np.median(absmax) / max(absmax.max(), 1e-12)) if absmax is not None else 0.0
        if (p["tensor"] in depthwise and lo < -adv.depthwise_two_sided_ratio * max(hi, 0.0)
                and spread < adv.depthwise_channel_spread):
            stats.plan.setdefault("float_tensors", []).append(
                {"tensor": p["tensor"], "reason": f"auto_safeguard: two-sided input [{lo:.3g}, {hi:.3g}] of a "
                                                  f"depthwise convolution, median channel at {spread:.2f} of its "
                                                  "range, kept in float"})
        else:
            keep.append(p)
    stats.plan["activations"] = keep


def _sensitivity_safeguard(prepared, stats: Statistics, config: QuantizationConfig, samples: list, device) -> None:
    """Keep in float the activation quantizers whose removal alone cuts the model's output error the most
    (``advanced.sensitivity_*`` bound the samples, the runs and how many are kept)."""
    from ptqflow.algorithms.sensitivity import find_sensitive

    adv = config.advanced
    points = len(stats.plan["activations"])
    n = max(2, min(adv.sensitivity_samples, adv.sensitivity_max_runs // max(points, 1)))
    mean_minmax = RangeEstimator(adv.activations_range) == RangeEstimator.MEAN_MINMAX
    found = find_sensitive(prepared, stats.plan, stats.ranges(mean_minmax), samples[:n],
                           lambda m: _session(m, device), max_points=adv.sensitivity_max_points,
                           min_gain=adv.sensitivity_min_gain, min_error=adv.sensitivity_min_error)
    drop = {t for t, _, _ in found}
    for t, before, after in found:
        stats.plan.setdefault("float_tensors", []).append(
            {"tensor": t, "reason": f"auto_safeguard: most accuracy-sensitive quantizer (output error "
                                    f"{before:.4g} -> {after:.4g} without it)"})
    stats.plan["activations"] = [p for p in stats.plan["activations"] if p["tensor"] not in drop]


def _session(model: onnx.ModelProto, device: str):
    """A session over ``model``; models over 2 GB go through a temporary file with external data."""
    if not is_large(model):
        return make_session(model, device)
    with tempfile.TemporaryDirectory(prefix="ptqflow-large-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.data")
        return make_session(path, device)


def _batchable(model: onnx.ModelProto, tensors: list[str]) -> bool:
    """True when every input and observed tensor has the same symbolic batch dim 0 (safe to stack samples)."""
    params = set()
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            return False
        params.add(dims[0].dim_param)
    if len(params) != 1:
        return False
    info = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)}
    for t in tensors:
        dims = info[t].type.tensor_type.shape.dim if t in info else []
        if len(dims) < 2 or dims[0].dim_param not in params:
            return False
    return True


def _batches(samples: Iterator[dict], batchable: bool, keep: int, kept: list | None) -> Iterator[dict]:
    """Runs to execute: consecutive same-shape batch-1 samples stacked up to MAX_BATCH when ``batchable``."""
    pending: list[dict] = []

    def flush():
        arrays = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        return {"arrays": arrays, "count": len(pending)}

    for s in samples:
        if kept is not None and len(kept) < keep:
            kept.append(s)
        if not batchable or any(a.shape[0] != 1 for a in s.values()):
            if pending:
                yield flush()
                pending = []
            yield {"arrays": s, "count": 1}
            continue
        if pending and any(pending[0][k].shape != s[k].shape for k in s):
            yield flush()
            pending = []
        pending.append(s)
        if len(pending) == MAX_BATCH:
            yield flush()
            pending = []
    if pending:
        yield flush()


class _Accumulator:
    """Per-sample minima/maxima lists and running per-channel mean sums."""

    def __init__(self, out_map: dict[str, tuple[str, str]]):
        self.out_map = out_map
        self.mins: dict[str, list] = {}
        self.maxs: dict[str, list] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.absmax_sums: dict[str, np.ndarray] = {}

    def add(self, outs: dict[str, np.ndarray], count: int) -> None:
        for out, value in outs.items():
            stat, key = self.out_map[out]
            if stat in ("mean", "absmax"):
                sums = self.sums if stat == "mean" else self.absmax_sums
                v = np.asarray(value, np.float64) * count
                sums[key] = sums[key] + v if key in sums else v
            else:
                target = self.mins if stat == "min" else self.maxs
                target.setdefault(key, []).extend(np.atleast_1d(np.asarray(value, np.float64)).ravel())

    def channel_absmax(self, n: int) -> dict[str, np.ndarray]:
        """Per observed tensor: the per-channel max |x|, averaged over the runs (weighted by samples)."""
        return {key: s / max(n, 1) for key, s in self.absmax_sums.items()}

    def result(self, plan: dict, n: int) -> Statistics:
        means_in, means_out = {}, {}
        for key, s in self.sums.items():
            kind, name = key.split("\0", 1)
            (means_in if kind == "in" else means_out)[name] = (s / n).astype(np.float32)
        return Statistics(plan=plan, mins={k: np.array(v) for k, v in self.mins.items()},
                          maxs={k: np.array(v) for k, v in self.maxs.items()},
                          means_in=means_in, means_out=means_out, num_samples=n)


def _check_finite(stats: Statistics) -> None:
    """InputError naming the first activation tensor that held NaN or Inf."""
    for t in stats.mins:
        if not (np.all(np.isfinite(stats.mins[t])) and np.all(np.isfinite(stats.maxs[t]))):
            raise InputError(f"activation tensor {t!r} holds NaN or Inf on the calibration data; "
                             "check the input preprocessing")


def _fill_signedness(stats: Statistics) -> None:
    """Record in the plan whether each quantizer is signed (int8) or not (uint8) from the observed ranges."""
    groups = stats.ranges(mean_minmax=False)
    for p in stats.plan["activations"]:
        p["signed"] = bool(groups[p["group"]][0] < 0)


def _outlier_safeguard(stats: Statistics, config: QuantizationConfig) -> None:
    """Drop quantizers on tensors with extreme ranges (kept in float, recorded in the plan).

    A range ``advanced.outlier_range_ratio`` times wider than the typical per-sample range is dominated by rare
    outliers (at 8 bits the typical values would collapse onto a few codes); values beyond
    ``advanced.outlier_abs_max`` are out of int8's reach next to ordinary ones."""
    adv = config.advanced
    if not adv.auto_safeguards:
        return
    keep = []
    for p in stats.plan["activations"]:
        lo, hi = np.median(stats.mins[p["tensor"]]), np.median(stats.maxs[p["tensor"]])
        glo, ghi = np.min(stats.mins[p["tensor"]]), np.max(stats.maxs[p["tensor"]])
        typical = max(hi - lo, 1e-12)
        if max(abs(glo), abs(ghi)) > adv.outlier_abs_max or (ghi - glo) / typical > adv.outlier_range_ratio:
            stats.plan.setdefault("float_tensors", []).append(
                {"tensor": p["tensor"], "reason": f"auto_safeguard: extreme activation range [{glo:.4g}, {ghi:.4g}] "
                                                  f"vs typical [{lo:.4g}, {hi:.4g}]"})
        else:
            keep.append(p)
    stats.plan["activations"] = keep


# ---------------------------------------------------------------------------------------------------------
# apply_quantization
# ---------------------------------------------------------------------------------------------------------


def quantize_with_summary(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                          dataset=None, device: str = "cpu", _samples_list: list | None = None,
                          _prepared: onnx.ModelProto | None = None) -> QuantizationResult:
    """Insert the planned quantizers with parameters from ``statistics``, then correct biases.

    Returns the INT8 QDQ model (ir_version <= MAX_IR_VERSION, checked) and the per-layer summary.
    """
    config = config or QuantizationConfig()
    plan = statistics.plan
    if _prepared is not None:
        prepared = _prepared
    else:
        prepared = prepare_model(model)[0]
        if plan.get("smooth_quant"):  # the factors collect-stats chose, re-applied exactly
            smooth_quant.apply(prepared, plan["smooth_quant"]["tensors"])
    _check_plan_matches(prepared, plan)
    q = onnx.ModelProto()
    q.CopyFrom(prepared)
    mean_minmax = RangeEstimator(config.advanced.activations_range) == RangeEstimator.MEAN_MINMAX
    records = insert_qdq(q, plan, statistics.ranges(mean_minmax))
    bc = _bias_correction(prepared, q, statistics, config, dataset, device, _samples_list)
    q.ir_version = min(q.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    if not is_large(q):
        onnx.checker.check_model(q)
    return QuantizationResult(model=q, layers=_summary(prepared, plan, records, bc))


def apply_quantization(model, statistics: Statistics, config: QuantizationConfig | None = None, *,
                       dataset=None, device: str = "cpu") -> onnx.ModelProto:
    """The INT8 QDQ model (see quantize_with_summary)."""
    return quantize_with_summary(model, statistics, config, dataset=dataset, device=device).model


def _check_plan_matches(prepared: onnx.ModelProto, plan: dict) -> None:
    names = {n.name for n in prepared.graph.node}
    tensors = {o for n in prepared.graph.node for o in n.output} | {i.name for i in prepared.graph.input}
    tensors |= {t.name for t in prepared.graph.initializer}
    for p in plan["activations"]:
        if p["tensor"] not in tensors or any(e[0] not in names for e in p["edges"]):
            raise InputError(f"statistics do not match this model: tensor {p['tensor']!r} of the plan is not in it")
    for w in plan["weights"]:
        if w["tensor"] not in tensors:
            raise InputError(f"statistics do not match this model: weight {w['tensor']!r} of the plan is not in it")


def _bias_correction(prepared, q, statistics, config, dataset, device, samples_list) -> list[dict]:
    """Run the configured bias correction on ``q`` in place, then the guard (ptqflow.algorithms.bc_guard): when
    the corrected model's output error against FP32 on a few calibration samples is higher than without the
    correction, ``q`` goes back to its uncorrected biases and every record says why. Returns the records.
    Samples: ``advanced.bias_correction_guard_samples``, or ``..._no_softmax`` for models without a decision
    (Softmax/LogSoftmax) output, whose squared error alone is continuous and settles on fewer samples."""
    adv = config.advanced
    n_guard = adv.bias_correction_guard_samples
    uncorrected = None
    if n_guard and not config.advanced.disable_bias_correction and not is_large(q):
        uncorrected = onnx.ModelProto()
        uncorrected.CopyFrom(q)
    records = _correct_biases(prepared, q, statistics, config, dataset, device, samples_list)
    if uncorrected is None or not any(r.get("applied") for r in records):
        return records
    if not bc_guard.decision_outputs(prepared):
        n_guard = adv.bias_correction_guard_samples_no_softmax
        if not n_guard:
            return records
    samples = list(samples_list[:n_guard]) if samples_list else (
        list(_samples(dataset, prepared, n_guard)) if dataset is not None else [])
    if not samples:
        log.info("bias correction guard skipped: no calibration samples at hand")
        return records
    keep, before, after = bc_guard.judge(prepared, uncorrected, q, samples, device,
                                         tie_weight=adv.bias_correction_guard_tie_weight)
    verdict = "kept" if keep else "reverted"
    log.info("bias correction %s: model output error on %d calibration samples %.4g without, %.4g with it",
             verdict, len(samples), before, after)
    if not keep:
        q.CopyFrom(uncorrected)
        for r in records:
            if r.get("applied"):
                r["applied"] = False
                r["reason"] = (f"reverted: bias correction raised the model's output error on {len(samples)} "
                               f"calibration samples ({before:.4g} -> {after:.4g})")
    return records


def _correct_biases(prepared, q, statistics, config, dataset, device, samples_list) -> list[dict]:
    """Run the configured bias correction on ``q`` in place; returns its per-layer records."""
    if config.advanced.disable_bias_correction or fast_bias_correction is None:
        return []
    wanted = set(statistics.plan.get("bias_layers", []))
    layers = [layer for layer in find_bias_layers(prepared) if layer.name in wanted]
    if not layers:
        return []
    threshold = config.advanced.bias_correction_threshold
    if config.fast_bias_correction:
        _require_collected(statistics, config, "bias_input_means", "FastBiasCorrection's per-channel input means")
        return fast_bias_correction.apply_fast_bias_correction(
            q, layers, statistics.means_in, statistics.means_out, threshold=threshold, fp32_model=prepared,
            device=device)
    n = config.bias_correction_samples()
    samples = list(samples_list[:n]) if samples_list is not None else (
        list(_samples(dataset, prepared, n)) if dataset is not None else [])
    if not samples:
        raise InputError("full bias correction (fast_bias_correction=False) needs the calibration dataset")
    return bias_correction.apply_bias_correction(prepared, q, layers, samples, threshold=threshold, device=device,
                                                 runtime=config.advanced.statistics_runtime)


def _require_collected(statistics: Statistics, config: QuantizationConfig, key: str, what: str) -> None:
    """InputError when ``statistics`` were collected without ``key`` of this config's statistics request (they
    came from a run with other settings); statistics from before the plan recorded it pass when not empty."""
    collected = statistics.plan.get("collected")
    held = collected.get(key, False) if collected is not None else bool(statistics.means_in)
    if statistics_request(config)[key] and not held:
        raise InputError(f"the statistics lack {what}: they were collected with other settings "
                         f"({', '.join(f'{k}={v}' for k, v in (collected or {}).items()) or 'none recorded'}); "
                         "collect statistics again with this quantization config")


def _summary(prepared: onnx.ModelProto, plan: dict, records: list[dict], bc: list[dict]) -> list[dict]:
    """One dict per quantizable layer: status quantized/float, reason, weight and input quantizers, bias shift."""
    weights = {r["tensor"]: r for r in records if r["kind"] == "weight"}
    acts_by_node: dict[str, list] = {}
    for r in records:
        if r["kind"] == "activation":
            for c in r["consumers"]:
                acts_by_node.setdefault(c, []).append(r["tensor"])
    floats = {f["node"]: f["reason"] for f in plan.get("float_layers", [])}
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
            row.update(status="float", reason=floats.get(n.name, "no activation input to quantize"))
            if n.name not in floats and n.op_type in placement.ELEMENTWISE:
                continue  # bias adds / constant scales: part of a layer, not layers themselves
        if n.name in bc_by:
            d = bc_by[n.name]
            row["bias_correction"] = d
            row["bias_corrected"] = bool(d.get("applied"))
        rows.append(row)
    for f in plan.get("float_tensors", []):
        rows.append({"name": f["tensor"], "op_type": "tensor", "status": "float", "reason": f["reason"]})
    return rows


# ---------------------------------------------------------------------------------------------------------
# quantize (NNCF-style one call)
# ---------------------------------------------------------------------------------------------------------


def quantize(model, calibration_dataset, *, preset: QuantizationPreset | None = None,
             target_device: TargetDevice = TargetDevice.ANY, subset_size: int = 300,
             fast_bias_correction: bool = True, model_type: ModelType | None = None,
             ignored_scope: IgnoredScope | None = None, advanced_parameters: AdvancedParameters | None = None,
             device: str = "cpu") -> onnx.ModelProto:
    """Quantize ``model`` (ModelProto or path) on ``calibration_dataset``; returns the INT8 QDQ ModelProto."""
    config = QuantizationConfig(
        preset=preset, target_device=target_device, subset_size=subset_size,
        fast_bias_correction=fast_bias_correction, model_type=model_type,
        ignored_scope=ignored_scope or IgnoredScope(), advanced=advanced_parameters or AdvancedParameters())
    return quantize_with_config(model, calibration_dataset, config, device=device).model


def quantize_with_config(model, dataset, config: QuantizationConfig, *, device: str = "cpu") -> QuantizationResult:
    """Both halves in one process (the dataset is read once). Returns model and summary."""
    adv = config.advanced
    keep = 0 if config.fast_bias_correction else config.bias_correction_samples()
    if not adv.disable_bias_correction:
        keep = max(keep, adv.bias_correction_guard_samples, adv.bias_correction_guard_samples_no_softmax)
    kept: list = []
    stats = collect_statistics(model, dataset, config, device=device, keep_samples=keep, _kept=kept)
    return quantize_with_summary(model, stats, config, device=device, _samples_list=kept,
                                 _prepared=getattr(stats, "_prepared", None))
