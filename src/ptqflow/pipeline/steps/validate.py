"""validate: FP32 vs INT8 on the held-out validation split: accuracy, fidelity, speed, gate, report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from ptqflow.pipeline import metrics as M
from ptqflow.artifacts import input_digests
from ptqflow.artifacts.manifest import Manifest, write_manifest
from ptqflow.config import GateConfig, PipelineConfig, section_dump
from ptqflow.errors import ConfigError, GateFailedError, InputError
from ptqflow.pipeline.steps import spec

_SPEC = spec("validate")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs
_WARMUP = 3


def config_section(cfg: PipelineConfig) -> dict:
    """The validation section and the execution device."""
    return {"validation": section_dump(cfg.validation), "device": cfg.device.value}


def _session(path, device: str):
    from ptqflow.runtime.sessions import make_session

    return make_session(path, device=device)


def _run_all(sess, samples: list[dict]) -> dict[str, np.ndarray]:
    """Outputs of every sample, concatenated along the batch axis, keyed by output name."""
    names = [o.name for o in sess.get_outputs()]
    per = {n: [] for n in names}
    for s in samples:
        for n, v in zip(names, sess.run(names, s)):
            per[n].append(np.asarray(v))
    return {n: np.concatenate(v, axis=0) if v and v[0].ndim else np.stack(v) for n, v in per.items()}


def load_validation(calibration_dir: Path) -> tuple[list[dict], list]:
    """Validation samples and labels: class indices, or the label strings when the data came with a text label
    file; InputError when the split is empty (never falls back to calibration)."""
    from ptqflow.data import iter_labeled, read_index

    pairs = list(iter_labeled(calibration_dir, "validation"))
    if not pairs:
        raise InputError(f"{calibration_dir}/validation: no validation samples: build-calibration "
                         "held none out (data.validation_size 0); rebuild it with data.validation_size > 0 or unset")
    labels = [p[1] for p in pairs]
    index = read_index(calibration_dir)
    if index.get("label_kind") == "text":
        names = index["label_names"]
        labels = [None if label is None else names[label] for label in labels]
    return [p[0] for p in pairs], labels


def accuracy_metrics(fp32: dict, int8: dict, labels: list) -> dict:
    """Top-1/top-5 of the first classifier-like output when every sample has a label; {} otherwise."""
    if not labels or any(label is None or isinstance(label, str) for label in labels):
        return {}
    for name, ref in fp32.items():
        if M.is_classifier_like(ref) and ref.shape[0] == len(labels):
            y = np.asarray(labels)
            # Counts ride along so that the gate compares exact drops (4 of 200 is 0.02, not 0.02 + 1.7e-17).
            return {"output": name, "samples": len(labels),
                    "fp32": {"top1": M.topk_accuracy(ref, y, 1), "top5": M.topk_accuracy(ref, y, 5)},
                    "int8": {"top1": M.topk_accuracy(int8[name], y, 1), "top5": M.topk_accuracy(int8[name], y, 5)},
                    "correct": {"fp32": {"top1": M.topk_correct(ref, y, 1), "top5": M.topk_correct(ref, y, 5)},
                                "int8": {"top1": M.topk_correct(int8[name], y, 1),
                                         "top5": M.topk_correct(int8[name], y, 5)}}}
    return {}


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
    out = {}
    for key, ts in times.items():
        med = float(np.median(ts))
        out[key] = {"latency_ms_median": med, "latency_ms_p90": float(np.percentile(ts, 90)),
                    "throughput_per_s": 1000.0 / med if med > 0 else float("inf"), "samples_ms": [round(t, 4) for t in ts]}
    out["speedup"] = out["fp32"]["latency_ms_median"] / max(out["int8"]["latency_ms_median"], 1e-9)
    out["latency_ratio_p90"] = out["int8"]["latency_ms_p90"] / max(out["fp32"]["latency_ms_p90"], 1e-9)
    return out


def speed_onnxruntime(fp32_path, int8_path, sample, device: str, iterations: int) -> dict:
    """measure_speed with onnxruntime sessions."""
    a, b = _session(fp32_path, device), _session(int8_path, device)
    return {"runtime": "onnxruntime", "device": device,
            **measure_speed(lambda: a.run(None, sample), lambda: b.run(None, sample), iterations)}


def speed_openvino(fp32_path, int8_path, sample, device: str, precision: str, iterations: int) -> dict:
    """measure_speed with OpenVINO; the FP32 baseline compiled with INFERENCE_PRECISION_HINT=precision.

    Where the device runs FP32 models at another precision by default (bf16 on CPUs with AMX or AVX512-BF16),
    ``default_precision`` holds a second comparison against the FP32 model at that default, which is what an
    OpenVINO user gets without a hint and where INT8's edge is smaller."""
    from ptqflow.runtime import openvino as ov

    c = ov.core()
    fp32_model = ov.convert(fp32_path)
    a = ov.compile_model(c, fp32_model, device, precision).create_infer_request()
    b = ov.compile_model(c, ov.convert(int8_path), device).create_infer_request()
    out = {"runtime": "openvino", "device": device, "fp32_inference_precision": precision,
           **measure_speed(lambda: a.infer(sample), lambda: b.infer(sample), iterations)}
    default = ov.default_precision(c, device)
    if default is not None and default != precision:
        d = ov.compile_model(c, fp32_model, device).create_infer_request()
        timed = measure_speed(lambda: d.infer(sample), lambda: b.infer(sample), iterations)
        out["default_precision"] = {"fp32_inference_precision": default, "speedup": timed["speedup"],
                                    "fp32_latency_ms_median": timed["fp32"]["latency_ms_median"],
                                    "int8_latency_ms_median": timed["int8"]["latency_ms_median"]}
    return out


def layer_sensitivity(fp32_model: onnx.ModelProto, int8_model: onnx.ModelProto, samples, device: str) -> list[dict]:
    """SQNR (dB) of each quantized layer's output vs FP32: layers whose weight comes from a DequantizeLinear,
    matched to the FP32 model by node name; their outputs are added as extra graph outputs in both models."""
    producers = {o: n for n in int8_model.graph.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32_model.graph.node if n.name}
    pairs = []
    for node in int8_model.graph.node:
        if node.name in fp32_nodes and node.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input[1:2]
        ):
            pairs.append((node.name, fp32_nodes[node.name].output[0], node.output[0]))
    if not pairs:
        return []
    fp32_out = _run_all(_session(_with_outputs(fp32_model, [p[1] for p in pairs]), device), samples)
    int8_out = _run_all(_session(_with_outputs(int8_model, [p[2] for p in pairs]), device), samples)
    return [{"layer": name, "sqnr_db": M.sqnr_db(fp32_out[a], int8_out[b]), "cosine": M.cosine(fp32_out[a], int8_out[b])}
            for name, a, b in pairs]


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
            existing.add(n)
    return m


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


def evaluate_gate(gate: GateConfig, accuracy: dict, fidelity: dict, speed: dict) -> list[dict]:
    """One check per enabled threshold: {name, threshold, value, passed, margin, tolerance} (margin < 0 means
    worse than the threshold by that much; it still passes within ``tolerance``)."""
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
    ov_speed = speed.get("openvino") or {}
    add("min_speedup (openvino)", gate.min_speedup, ov_speed.get("speedup"))
    return checks


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Validate into ``out`` (report.json, report.html, manifest); GateFailedError after writing when the gate fails."""
    from ptqflow.pipeline.report import write_report

    start = time.monotonic()
    out = Path(out)
    vc = cfg.validation
    fp32_path, int8_path = Path(inputs["model"]) / "model.onnx", Path(inputs["quantized"]) / "model.onnx"
    for p in (fp32_path, int8_path):
        if not p.is_file():
            raise InputError(f"{p}: model.onnx missing")
    digests = input_digests(inputs)
    samples, labels = load_validation(Path(inputs["calibration"]))
    device = cfg.device.value
    fp32_out = _run_all(_session(fp32_path, device), samples)
    int8_out = _run_all(_session(int8_path, device), samples)
    accuracy = accuracy_metrics(fp32_out, int8_out, labels)
    if vc.metric:
        fn = M.load_metric(vc.metric)
        accuracy.setdefault("fp32", {}).update(M.user_metric(fn, fp32_out, labels))
        accuracy.setdefault("int8", {}).update(M.user_metric(fn, int8_out, labels))
    fidelity = {name: M.fidelity(ref, int8_out[name]) for name, ref in fp32_out.items()}
    t_eval = time.monotonic() - start
    speed = {"onnxruntime": speed_onnxruntime(fp32_path, int8_path, samples[0], device, vc.latency_iterations),
             "openvino": speed_openvino(fp32_path, int8_path, samples[0], vc.openvino_device,
                                        vc.fp32_inference_precision, vc.latency_iterations)}
    layers = []
    if vc.per_layer_sensitivity:
        layers = layer_sensitivity(onnx.load(str(fp32_path)), onnx.load(str(int8_path)), samples, device)
    checks = evaluate_gate(vc.gate, accuracy, fidelity, speed)
    passed = all(c["passed"] for c in checks)
    report = {"verdict": "pass" if passed else "fail", "gate": checks, "samples": len(samples),
              "labeled": sum(label is not None for label in labels), "accuracy": accuracy, "fidelity": fidelity,
              "speed": speed, "layers": layers, "config": section_dump(vc), "device": device}
    write_report(out, report)
    summary = {"verdict": report["verdict"], "samples": len(samples),
               "min_cosine": min(f["cosine"] for f in fidelity.values()),
               "speedup_openvino": speed["openvino"]["speedup"], "speedup_onnxruntime": speed["onnxruntime"]["speedup"],
               "openvino_fp32_precision": speed["openvino"]["fp32_inference_precision"]}
    if "default_precision" in speed["openvino"]:
        default = speed["openvino"]["default_precision"]
        summary["speedup_openvino_default_precision"] = default["speedup"]
        summary["openvino_default_precision"] = default["fp32_inference_precision"]
    if accuracy.get("fp32"):
        summary.update({f"fp32_{k}": v for k, v in accuracy["fp32"].items()})
        summary.update({f"int8_{k}": v for k, v in accuracy["int8"].items()})
    manifest = write_manifest(out, step=NAME, config=config_section(cfg), inputs=digests, metrics=summary,
                              timings={"evaluate_s": round(t_eval, 3), "total_s": round(time.monotonic() - start, 3)},
                              extra={"gate": checks})
    if not passed:
        failed = "; ".join(f"{c['name']}: {c['value']:.6g} vs threshold {c['threshold']:.6g} (off by {-c['margin']:.6g})"
                           for c in checks if not c["passed"])
        raise GateFailedError(f"quality gate failed: {failed}; see {out / 'report.html'}")
    return manifest
