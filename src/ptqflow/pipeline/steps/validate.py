"""validate: FP32 vs INT8 on the held-out validation split: accuracy, fidelity, speed, gate, report.

The models run one sample at a time and each sample is added to sums (``metrics.ValidationSums``: counts, exact
sums, per-class tallies) that ``finalize`` turns into the report. ``validate --shard I/N`` evaluates only shard I of
N of the split and writes those sums (partial.json); merge-validation merges the shards' sums and finalizes them
with the same code, so its report is the one validate writes on the whole split, the speed figures aside (shard 0
measures speed, on the same first sample, in its own process).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ptqflow.pipeline import metrics as M
from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, write_manifest
from ptqflow.config import GateConfig, PipelineConfig, section_dump
from ptqflow.errors import ConfigError, GateFailedError, InputError
from ptqflow.logs import get_logger
from ptqflow.pipeline.report import load_decisions
from ptqflow.pipeline.steps import accuracy_gate, spec
from ptqflow.pipeline.steps.fetch_model import model_file

_SPEC = spec("validate")  # its entry in the steps table
log = get_logger("validate")
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs
_WARMUP = 3


def config_section(cfg: PipelineConfig) -> dict:
    """The validation section, the execution device and the runtime the model is for (its speed is gated)."""
    q = cfg.quantization
    return {"validation": section_dump(cfg.validation), "device": cfg.device.value,
            "target_runtime": q.effective_target_runtime().value,  # and the fields it is derived from:
            "runtime_fields": {"target_runtime": q.target_runtime and q.target_runtime.value,
                               "quant_format": q.quant_format.value, "static": q.static}}


def _session(path, device: str):
    from ptqflow.runtime.sessions import make_session

    return make_session(path, device=device)


def iter_validation(calibration_dir: Path):
    """(sample, label) per validation sample, in the split's order: class indices, or the label strings when the
    data came with a text label file."""
    from ptqflow.data import iter_labeled, read_index

    index = read_index(calibration_dir)
    names = index.get("label_names") if index.get("label_kind") == "text" else None
    for sample, label in iter_labeled(calibration_dir, "validation"):
        yield sample, (names[label] if names is not None and label is not None else label)


def _no_samples(calibration_dir: Path) -> InputError:
    return InputError(f"{calibration_dir}/validation: no validation samples: build-calibration held none out "
                      "(data.validation_size 0); rebuild it with data.validation_size > 0 or unset")


def load_validation(calibration_dir: Path) -> tuple[list[dict], list]:
    """Validation samples and labels: class indices, or the label strings when the data came with a text label
    file; InputError when the split is empty (never falls back to calibration)."""
    pairs = list(iter_validation(calibration_dir))
    if not pairs:
        raise _no_samples(calibration_dir)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def shard_range(num_samples: int, shard: int, shards: int) -> tuple[int, int]:
    """The validation samples [start, stop) of ``shard`` (0-based) of ``shards``, as even as they divide (each
    sample runs alone, so no block alignment is needed; a shard is empty when there are more shards than samples)."""
    return shard * num_samples // shards, (shard + 1) * num_samples // shards


def check_shardable(vc, what: str = "validate --shard") -> None:
    """ConfigError naming each configured metric that cannot be merged from shards: a validation.metric function
    sees every output at once (fn(outputs, labels)), so its value on a shard says nothing about the whole split;
    and accuracy control, which validates candidate models on the whole split in one process."""
    if vc.accuracy_control.enabled:
        raise ConfigError(f"{what}: validation.accuracy_control.enabled validates every candidate model on the whole "
                          "validation split in one process and cannot run in shards; validate in one process (no "
                          "--shard, validation_shards 1), or disable accuracy control")
    if vc.metric:
        raise ConfigError(f"{what}: validation.metric {vc.metric!r} is computed on all outputs at once and cannot "
                          "be merged from shards; validate in one process (no --shard), or unset validation.metric")


def layer_pairs(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(layer, FP32 output, INT8 output) of each quantized layer: a node whose weight comes from a
    DequantizeLinear, matched to the FP32 model's node of the same name, in the INT8 graph's order."""
    producers = {o: n for n in int8_model.graph.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32_model.graph.node if n.name}
    pairs = []
    for node in int8_model.graph.node:
        if node.name in fp32_nodes and node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input[1:2]
        ):
            pairs.append((node.name, fp32_nodes[node.name].output[0], node.output[0]))
    return pairs


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
            existing.add(n)
    return m


@dataclass
class Evaluation:
    """What evaluating a range of validation samples gives: the sums, the first sample of the split (speed is
    measured on it) and, for a validation.metric, every output and label (one process only)."""

    sums: M.ValidationSums
    first: dict | None
    split_samples: int
    kept: tuple[dict, dict, list] | None = None


def evaluate(fp32_path: Path, int8_path, calibration: Path, cfg: PipelineConfig,
             span: tuple[int, int] | None = None, keep: bool = False, layers: bool = True) -> Evaluation:
    """Run the FP32 and INT8 models (``int8_path``: a path, or a ModelProto when ``layers`` is False) on the
    validation samples [span) (all when None), one sample at a time, and accumulate them (per-layer rows too when
    configured and ``layers``); ``keep``: also keep every output and label."""
    device = cfg.device.value
    fp32, int8 = _session(fp32_path, device), _session(int8_path, device)
    names = [o.name for o in fp32.get_outputs()]
    pairs, layer_sessions = [], None
    if layers and cfg.validation.per_layer_sensitivity and fp32_path.suffix == ".onnx":  # QDQ pairs: ONNX models only
        fp32_model, int8_model = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
        pairs = layer_pairs(fp32_model, int8_model)
        if pairs:  # their outputs added to copies of both models, run beside them
            layer_sessions = (_session(_with_outputs(fp32_model, [p[1] for p in pairs]), device),
                              _session(_with_outputs(int8_model, [p[2] for p in pairs]), device))
    sums = M.ValidationSums(outputs={n: M.OutputSums() for n in names}, layers={p[0]: M.OutputSums() for p in pairs})
    kept = ({n: [] for n in names}, {n: [] for n in names}, []) if keep else None
    first, seen = None, 0
    for index, (sample, label) in enumerate(iter_validation(calibration)):
        seen += 1
        first = sample if index == 0 else first
        if span is not None and not span[0] <= index < span[1]:
            continue
        a = dict(zip(names, fp32.run(names, sample)))
        b = dict(zip(names, int8.run(names, sample)))
        layers = None
        if layer_sessions is not None:
            la = layer_sessions[0].run([p[1] for p in pairs], sample)
            lb = layer_sessions[1].run([p[2] for p in pairs], sample)
            layers = {p[0]: (x, y) for p, x, y in zip(pairs, la, lb)}
        sums.add(a, b, label, layers)
        if kept is not None:
            for n in names:
                kept[0][n].append(np.asarray(a[n]))
                kept[1][n].append(np.asarray(b[n]))
            kept[2].append(label)
    if not seen:
        raise _no_samples(calibration)
    if kept is not None:
        kept = (_concat(kept[0]), _concat(kept[1]), kept[2])
    return Evaluation(sums, first, seen, kept)


def _concat(per: dict[str, list]) -> dict[str, np.ndarray]:
    """Each output's arrays along the batch axis (scalars stacked)."""
    return {n: np.concatenate(v, axis=0) if v and v[0].ndim else np.stack(v) for n, v in per.items()}


def accuracy_metrics(fp32: dict, int8: dict, labels: list) -> dict:
    """Top-1/top-5 of the first classifier-like output when every sample has a label; {} otherwise. ``fp32`` and
    ``int8`` hold every sample's outputs, one row per sample (as ``ValidationSums.accuracy`` sees them)."""
    sums = M.ValidationSums(outputs={n: M.OutputSums() for n in fp32})
    for i, label in enumerate(labels):
        sums.add({n: v[i:i + 1] for n, v in fp32.items()}, {n: v[i:i + 1] for n, v in int8.items()}, label)
    return sums.accuracy()


def measure_speed(run_fp32, run_int8, iterations: int) -> dict:
    """Alternating FP32/INT8 batch-1 timings; median/p90 latency (ms), throughput (1/s) and INT8/FP32 ratios."""
    for _ in range(_WARMUP):
        run_fp32(), run_int8()
    times = {"fp32": [], "int8": []}
    for i in range(iterations):
        # Alternate the order too, so neither model always runs on a cache the other just warmed.
        order = (("fp32", run_fp32), ("int8", run_int8)) if i % 2 == 0 else (("int8", run_int8), ("fp32", run_fp32))
        for key, fn in order:
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1000.0)
    return _speed_figures(times)


def measure_apart(make_fp32, make_int8, iterations: int) -> dict:
    """measure_speed's figures with one model loaded at a time: ``make_fp32()`` returns FP32's run function,
    which is warmed up, timed and dropped before ``make_int8()`` is called. For models whose weights no cache
    holds (over 2 GB, ``one_at_a_time``), where two compiled models at once would be the step's peak memory."""
    times = {}
    for key, make in (("fp32", make_fp32), ("int8", make_int8)):
        times[key] = _time_alone(make(), iterations)
    return _speed_figures(times)


def _time_alone(run, iterations: int) -> list[float]:
    for _ in range(_WARMUP):
        run()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _speed_figures(times: dict[str, list[float]]) -> dict:
    out = {}
    for key, ts in times.items():
        med = float(np.median(ts))
        out[key] = {"latency_ms_median": med, "latency_ms_p90": float(np.percentile(ts, 90)),
                    "throughput_per_s": 1000.0 / med if med > 0 else float("inf"), "samples_ms": [round(t, 4) for t in ts]}
    out["speedup"] = out["fp32"]["latency_ms_median"] / max(out["int8"]["latency_ms_median"], 1e-9)
    out["latency_ratio_p90"] = out["int8"]["latency_ms_p90"] / max(out["fp32"]["latency_ms_p90"], 1e-9)
    return out


def one_at_a_time(fp32_path: Path) -> bool:
    """Whether the speed measurement loads one model at a time (measure_apart): an FP32 model over protobuf's 2 GB
    limit (its weights, wherever they are stored)."""
    from ptqflow.runtime.model_files import PROTO_LIMIT, stored_bytes

    return fp32_path.suffix == ".onnx" and stored_bytes(fp32_path) > PROTO_LIMIT


def speed_onnxruntime(fp32_path, int8_path, sample, device: str, iterations: int) -> dict:
    """measure_speed with onnxruntime sessions (measure_apart for a model over 2 GB)."""
    def runner(path):
        session = _session(path, device)
        return lambda: session.run(None, sample)

    if one_at_a_time(Path(fp32_path)):
        timed = measure_apart(lambda: runner(fp32_path), lambda: runner(int8_path), iterations)
    else:
        timed = measure_speed(runner(fp32_path), runner(int8_path), iterations)
    return {"runtime": "onnxruntime", "device": device, **timed}


def speed_openvino(fp32_path, int8_path, sample, device: str, precision: str, iterations: int) -> dict:
    """measure_speed with OpenVINO (measure_apart for a model over 2 GB); the FP32 baseline compiled with
    INFERENCE_PRECISION_HINT=precision.

    Where the device runs FP32 models at another precision by default (bf16 on CPUs with AMX or AVX512-BF16),
    ``default_precision`` holds a second comparison against the FP32 model at that default, which is what an
    OpenVINO user gets without a hint and where INT8's edge is smaller."""
    from ptqflow.runtime import openvino as ov

    c = ov.core()

    def runner(path, hint=None):
        request = ov.compile_model(c, ov.for_compile(c, path), device, hint).create_infer_request()
        return lambda: request.infer(sample)

    # Each FP32 compilation is released before the next is made: for a model over 2 GB two at once would hold
    # its weights twice more (models with external data are read, not converted: see ov.for_compile); such a
    # model is also timed apart from its INT8 model, never both compiled at once.
    apart = one_at_a_time(Path(fp32_path))
    if apart:
        timed = measure_apart(lambda: runner(fp32_path, precision), lambda: runner(int8_path), iterations)
    else:
        fp32, int8 = runner(fp32_path, precision), runner(int8_path)
        timed = measure_speed(fp32, int8, iterations)
        del fp32
    out = {"runtime": "openvino", "device": device, "fp32_inference_precision": precision, **timed}
    default = ov.default_precision(c, device)
    if default is not None and default != precision:
        if apart:
            fp32_ms = float(np.median(_time_alone(runner(fp32_path), iterations)))
            timed = {"speedup": fp32_ms / max(timed["int8"]["latency_ms_median"], 1e-9),
                     "fp32": {"latency_ms_median": fp32_ms}, "int8": timed["int8"]}
        else:
            timed = measure_speed(runner(fp32_path), int8, iterations)
        out["default_precision"] = {"fp32_inference_precision": default, "speedup": timed["speedup"],
                                    "fp32_latency_ms_median": timed["fp32"]["latency_ms_median"],
                                    "int8_latency_ms_median": timed["int8"]["latency_ms_median"]}
    return out


# Relative tolerance of every gate comparison: a value equal to its threshold passes even when the two were
# reached by different float roundings (0.96 - 0.94 = 0.020000000000000018). The report states it.
GATE_TOLERANCE = 1e-9


def accuracy_drop(gate: GateConfig, accuracy: dict) -> tuple[str, float] | None:
    """(metric name, drop) of the gated task metric: gate.accuracy_metric, else top1, else the first metric;
    for top-k the drop comes from counts, so a drop of 4 in 200 is exactly 0.02."""
    if not accuracy.get("fp32"):
        return None
    key = gate.accuracy_metric or ("top1" if "top1" in accuracy["fp32"] else next(iter(accuracy["fp32"])))
    if key not in accuracy["fp32"] or key not in accuracy.get("int8", {}):
        raise ConfigError(f"validation.gate.accuracy_metric {key!r}: the validation computed no such metric; it has "
                          f"{', '.join(accuracy['fp32']) or 'none'}")
    counts = accuracy.get("correct")
    if counts and key in counts["fp32"]:
        ref, got = counts["fp32"][key], counts["int8"][key]
        scale = accuracy["samples"] if gate.accuracy_drop_mode == "absolute" else ref
    else:
        ref, got = accuracy["fp32"][key], accuracy["int8"][key]
        scale = 1.0 if gate.accuracy_drop_mode == "absolute" else ref
    return key, (ref - got) / scale if scale else 0.0


def evaluate_gate(gate: GateConfig, accuracy: dict, fidelity: dict, speed: dict,
                  target_runtime: str = "openvino") -> list[dict]:
    """One check per enabled threshold: {name, threshold, value, passed, margin, tolerance} (margin < 0 means
    worse than the threshold by that much; it still passes within ``tolerance``). ``min_speedup`` applies to the
    speed on ``target_runtime``."""
    checks = []

    def add(name, threshold, value, larger_is_better=True):
        if threshold is None or value is None:
            return
        margin = value - threshold if larger_is_better else threshold - value
        tolerance = GATE_TOLERANCE * max(1.0, abs(threshold))
        checks.append({"name": name, "threshold": threshold, "value": value, "passed": bool(margin >= -tolerance),
                       "margin": margin, "tolerance": tolerance})

    if gate.max_accuracy_drop is not None:
        found = accuracy_drop(gate, accuracy)
        if found is not None:
            key, drop = found
            add(f"max_accuracy_drop ({gate.accuracy_drop_mode}, {key})", gate.max_accuracy_drop, drop, False)
    outs = list(fidelity.values())
    add("min_cosine", gate.min_cosine, min((f["cosine"] for f in outs), default=None))
    add("min_sqnr_db", gate.min_sqnr_db, min((f["sqnr_db"] for f in outs), default=None))
    add("min_top1_agreement", gate.min_top1_agreement,
        min((f["top1_agreement"] for f in outs if "top1_agreement" in f), default=None))
    if gate.min_speedup is not None and (speed.get(target_runtime) or {}).get("speedup") is None:
        raise ConfigError(f"validation.gate.min_speedup: no speed was measured on {target_runtime}, the target "
                          "runtime (quantization.target_runtime)")
    add(f"min_speedup ({target_runtime})", gate.min_speedup, (speed.get(target_runtime) or {}).get("speedup"))
    return checks


def measure(fp32_path: Path, int8_path: Path, sample: dict, cfg: PipelineConfig) -> dict:
    """Speed at batch 1 on ``sample``: {"onnxruntime": ..., "openvino": ...}; an OpenVINO IR's on OpenVINO only.
    For a model made for onnxruntime (quantization.target_runtime), OpenVINO may not read its format (QOperator's
    QLinearConv): the OpenVINO figure is then left out, with a warning."""
    vc = cfg.validation
    onnx_model = fp32_path.suffix == ".onnx"
    speed = {}
    if onnx_model:
        speed["onnxruntime"] = speed_onnxruntime(fp32_path, int8_path, sample, cfg.device.value,
                                                 vc.latency_iterations)
    try:
        speed["openvino"] = speed_openvino(fp32_path, int8_path, sample, vc.openvino_device,
                                           vc.fp32_inference_precision, vc.latency_iterations)
    except Exception as err:  # noqa: BLE001  (OpenVINO raises its own types)
        if not onnx_model or cfg.quantization.effective_target_runtime().value == "openvino":
            raise
        log.warning("no OpenVINO speed: OpenVINO cannot run this model made for onnxruntime (%s: %s)",
                    type(err).__name__, str(err)[:300])
    return speed


def figures(sums: M.ValidationSums, cfg: PipelineConfig, kept: tuple[dict, dict, list] | None) -> tuple[dict, dict]:
    """(accuracy, fidelity) of the whole split from its sums (and, for a validation.metric, every output and
    label: ``kept``): what the gate's accuracy and fidelity thresholds read."""
    accuracy = sums.accuracy()
    if cfg.validation.metric:
        fn = M.load_metric(cfg.validation.metric)
        fp32_out, int8_out, labels = kept
        accuracy.setdefault("fp32", {}).update(M.user_metric(fn, fp32_out, labels))
        accuracy.setdefault("int8", {}).update(M.user_metric(fn, int8_out, labels))
    return accuracy, sums.fidelity()


def finalize(sums: M.ValidationSums, speed: dict, cfg: PipelineConfig,
             kept: tuple[dict, dict, list] | None = None, decisions: list[dict] | None = None) -> dict:
    """The report of the whole split from its sums, the speed figures, for a validation.metric every output and
    label (``kept``) and the quantize step's per-layer ``decisions`` (report.html's decision table; left out when
    None); validate and merge-validation both end here."""
    vc = cfg.validation
    accuracy, fidelity = figures(sums, cfg, kept)
    checks = evaluate_gate(vc.gate, accuracy, fidelity, speed, cfg.quantization.effective_target_runtime().value)
    report = {"verdict": "pass" if all(c["passed"] for c in checks) else "fail", "gate": checks,
              "samples": sums.samples, "labeled": sums.labeled, "accuracy": accuracy, "fidelity": fidelity,
              "speed": speed, "layers": sums.layer_rows(), "config": section_dump(vc), "device": cfg.device.value}
    if decisions is not None:
        report["decisions"] = decisions
    return report


def publish_report(out: Path, report: dict, step: str, config: dict, inputs: dict, timings: dict,
                   extra: dict | None = None) -> Manifest:
    """Write report.json, report.html and the manifest into ``out``; then GateFailedError when the gate failed."""
    from ptqflow.pipeline.report import write_report

    write_report(out, report)
    fidelity, speed, accuracy, checks = report["fidelity"], report["speed"], report["accuracy"], report["gate"]
    summary = {"verdict": report["verdict"], "samples": report["samples"],
               "min_cosine": min(f["cosine"] for f in fidelity.values()),
               "speedup_openvino": speed.get("openvino", {}).get("speedup"),
               "speedup_onnxruntime": (speed.get("onnxruntime") or {}).get("speedup"),
               "openvino_fp32_precision": speed.get("openvino", {}).get("fp32_inference_precision")}
    if "default_precision" in speed.get("openvino", {}):
        default = speed["openvino"]["default_precision"]
        summary["speedup_openvino_default_precision"] = default["speedup"]
        summary["openvino_default_precision"] = default["fp32_inference_precision"]
    if accuracy.get("fp32"):
        summary.update({f"fp32_{k}": v for k, v in accuracy["fp32"].items()})
        summary.update({f"int8_{k}": v for k, v in accuracy["int8"].items()})
    manifest = write_manifest(out, step=step, config=config, inputs=inputs, metrics=summary, timings=timings,
                              extra={"gate": checks, **(extra or {})})
    if report["verdict"] != "pass":
        failed = "; ".join(f"{c['name']}: {c['value']:.6g} vs threshold {c['threshold']:.6g} (off by {-c['margin']:.6g})"
                           for c in checks if not c["passed"])
        raise GateFailedError(f"quality gate failed: {failed}; see {out / 'report.html'}")
    return manifest


def _with_accuracy_control(inputs: dict[str, Path], out: Path, cfg: PipelineConfig, fp32_path: Path,
                           report: dict) -> tuple[dict, dict]:
    """The report after accuracy control (accuracy_gate) ran on a gate that failed on accuracy: the report of the
    best model it found, with its ``accuracy_control`` section, and that model published as ``out/quantized`` when
    the whole gate passes with it; the manifest's extra. When it found no other model (no revert kept, the gate's
    thresholds not met) the report stands."""
    from ptqflow.pipeline.steps.quantize import with_readers
    from ptqflow.quantization.graph.prepare import MAX_IR_VERSION
    from ptqflow.runtime.model_files import save_model
    from ptqflow.scratch import scratch_dir

    start = time.monotonic()
    calibration, keep = Path(inputs["calibration"]), bool(cfg.validation.metric)
    no_speed = cfg.validation.gate.model_copy(update={"min_speedup": None})  # speed: on the final model only
    target = cfg.quantization.effective_target_runtime().value

    def gate_checks(model: onnx.ModelProto) -> list[dict]:
        ev = evaluate(fp32_path, model, calibration, cfg, keep=keep, layers=False)
        return evaluate_gate(no_speed, *figures(ev.sums, cfg, ev.kept), {}, target)

    before = [c for c in report["gate"] if not c["name"].startswith("min_speedup")]
    result, after = accuracy_gate.restore(inputs, fp32_path, cfg, report["gate"], gate_checks)
    new, published = report, False
    if result.reverted or result.met:  # a model other than the quantize step's (met without reverts: requantized)
        result.model.ir_version = min(result.model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
        with scratch_dir("ptqflow-accuracy-control-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_model(result.model, path)
            ev = evaluate(fp32_path, path, calibration, cfg, keep=keep)
            speed = measure(fp32_path, path, ev.first, cfg)
        new = finalize(ev.sums, speed, cfg, ev.kept, with_readers(list(result.layers), result.model))
        published = new["verdict"] == "pass"
        if published:
            counts = accuracy_gate.publish_model(out, result)
    section = accuracy_gate.summary(result, before, after, report["speed"], new["speed"],
                                    time.monotonic() - start, published)
    new["accuracy_control"] = section
    log.info("accuracy control: %s; reverted %s; %s", "gate met" if published else "gate still fails",
             ", ".join(r["tensor"] for r in section["reverted"]) or "nothing",
             ", ".join(f"speedup {k} {section['speedup_before'][k]:.3g} -> {v:.3g}"
                       for k, v in section["speedup_after"].items() if section["speedup_before"].get(k) is not None))
    keys = ("met", "published", "stopped", "reverted", "speed_cost", "seconds")
    extra = {k: section[k] for k in keys}
    if published:
        extra.update(model=accuracy_gate.CONTROLLED_MODEL, layers=counts)
    return new, {"accuracy_control": extra}


# validate --shard writes partial.json: its shard's sums, where in the split it lies, and (shard 0) the speed.
PARTIAL, PARTIAL_FORMAT = "partial.json", 1


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig, shard: tuple[int, int] | None = None) -> Manifest:
    """Validate into ``out`` (report.json, report.html, manifest); GateFailedError after writing when the gate fails.
    With ``shard`` (i, n): evaluate only shard i of n of the validation split and write partial.json for
    merge-validation (shard 0 also measures speed, on the split's first sample); no report, no gate."""
    start = time.monotonic()
    out = Path(out)
    fp32_path, int8_path = model_file(Path(inputs["model"])), model_file(Path(inputs["quantized"]))
    calibration, span = Path(inputs["calibration"]), None
    if cfg.validation.accuracy_control.enabled and shard is None:
        accuracy_gate.check_config(cfg, fp32_path)
    if shard is not None:
        from ptqflow.data import read_index

        check_shardable(cfg.validation)
        count = int(read_index(calibration).get("counts", {}).get("validation", 0))
        span = shard_range(count, *shard)
    digests = input_digests(inputs)
    decisions = load_decisions(Path(inputs["quantized"]))  # before the models run: a damaged summary fails fast
    ev = evaluate(fp32_path, int8_path, calibration, cfg, span, keep=bool(cfg.validation.metric))
    if shard is not None and ev.split_samples != count:  # the shards would not cover the split exactly
        raise InputError(f"{calibration}: index.json counts {count} validation samples, the split holds "
                         f"{ev.split_samples}; rebuild the calibration artifact (build-calibration --force)")
    t_eval = time.monotonic() - start
    speed = measure(fp32_path, int8_path, ev.first, cfg) if shard is None or shard[0] == 0 else None
    timings = {"evaluate_s": round(t_eval, 3), "total_s": round(time.monotonic() - start, 3)}
    if shard is None:
        report, extra = finalize(ev.sums, speed, cfg, ev.kept, decisions), None
        if cfg.validation.accuracy_control.enabled and accuracy_gate.failed_on_accuracy(report["gate"]):
            report, extra = _with_accuracy_control(inputs, out, cfg, fp32_path, report)
            timings["total_s"] = round(time.monotonic() - start, 3)
        return publish_report(out, report, NAME, config_section(cfg), digests, timings, extra)
    # Shard 0 carries the decisions to merge-validation (which reads only the partials), as it carries the speed.
    doc = {"format": PARTIAL_FORMAT, "shard": shard[0], "shards": shard[1], "start": span[0], "stop": span[1],
           "split_samples": count, "sums": ev.sums.to_json(), "speed": speed,
           "decisions": decisions if shard[0] == 0 else None}
    (out / PARTIAL).write_text(json.dumps(doc), encoding="utf-8")  # floats round-trip, inf/nan included
    return write_manifest(out, step=NAME, config=config_section(cfg) | {"shard": f"{shard[0]}/{shard[1]}"},
                          inputs=digests, metrics={"shard": shard[0], "shards": shard[1],
                                                   "num_samples": ev.sums.samples, "first_sample": span[0]},
                          timings=timings)
