"""Quantizes one model with one method in its own process; prints one JSON line with time and peak RSS.

Usage: worker.py METHOD MODEL.onnx CALIBRATION_ARTIFACT_DIR OUT.onnx [transformer]

Every method calibrates on the same samples: the calibration shards that ptqflow's build-calibration step
wrote, read with ``ptqflow.data.shards.iter_samples`` (one dict of batch-1 arrays per sample).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback

import onnx
import onnxruntime

onnxruntime.set_default_logger_severity(3)


def _samples(artifact_dir: str) -> list[dict]:
    from ptqflow.data.shards import iter_samples

    return list(iter_samples(artifact_dir, "calibration"))


def run_ptqflow(model, samples, variant: str, transformer: bool):
    import ptqflow

    kw = {"subset_size": len(samples)}
    if transformer and variant != "untold":  # untold: default settings, no model_type (bench/run.py)
        kw["model_type"] = ptqflow.ModelType.TRANSFORMER
    if variant == "bc":
        kw["fast_bias_correction"] = False
    if variant == "nobc":
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(disable_bias_correction=True)
    if variant == "cle":  # cross-layer equalization with bias absorption (opt-in)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(cross_layer_equalization=True)
    if variant == "cle_nodw":  # equalization instead of the depthwise safeguard's fitted threshold
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(cross_layer_equalization=True, safeguard_depthwise=False)
    if variant == "nodw":  # the depthwise safeguard off, nothing instead (the side-by-side reference of cle_nodw)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(safeguard_depthwise=False)
    if variant == "range":  # activation ranges chosen by measured error and judged (opt-in)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(range_search=True)
    if variant == "norange":  # the range search explicitly off (the default; a reference where it was on)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(range_search=False)
    if variant == "evals16":  # mixed precision's evaluation budget as it was before the default became 64
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(mixed_precision_max_evals=16)
    if variant == "adaround":  # adaptive weight rounding (opt-in), reconstructing from the FP32 layer inputs
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(adaround=True)
    if variant == "adaround64":  # ... on 64 samples: enough rows for the encoder's 384-input layers (2 per input)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(adaround=True, adaround_samples=64)
    if variant == "adaround_q":  # ... from the layer inputs as their activation quantizers write them
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(adaround=True, adaround_quantized_inputs=True)
    if variant == "decisions":  # the first output declared argmaxed (logits with no Softmax in the graph)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(decision_outputs=[model.graph.output[0].name])
    if variant == "pcdw":  # a scale per channel for depthwise-convolution inputs (the default since it runs on ORT)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(per_channel_depthwise_inputs=True)
    if variant == "bcfb":  # full BiasCorrection where the guard reverts FastBiasCorrection (the default too)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(bias_correction_fallback=True)
    if variant == "ptdw":  # one scale for depthwise-convolution inputs (the default before; the safeguard judges)
        kw["advanced_parameters"] = ptqflow.AdvancedParameters(per_channel_depthwise_inputs=False)
    if variant == "ort":  # placed for onnxruntime, written as QDQ
        kw["target_runtime"] = ptqflow.TargetRuntime.ONNXRUNTIME
    if variant == "qop":
        kw["quant_format"] = ptqflow.QuantFormat.QOperator
    if variant == "dynamic":
        return ptqflow.quantize_dynamic(model)
    if variant == "dynamic_noconv":  # Conv kept float: onnxruntime's ConvInteger is slower than its float Conv
        return ptqflow.quantize_dynamic(model, ignored_scope=ptqflow.IgnoredScope(types=["Conv"], validate=False))
    return ptqflow.quantize(model, ptqflow.Dataset(samples), **kw)


def run_nncf(model, samples, variant: str, transformer: bool):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    kw = {"subset_size": len(samples)}
    if transformer:
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    if variant == "bc":
        kw["fast_bias_correction"] = False
    if variant == "nobc":
        kw["advanced_parameters"] = AdvancedQuantizationParameters(disable_bias_correction=True)
    return nncf.quantize(model, nncf.Dataset(samples), **kw)


def run_ort(model_path, samples, out_path, variant: str = "minmax"):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    if variant == "dynamic":  # onnxruntime's defaults for its dynamic quantization: int8 weights, per tensor
        quantize_dynamic(model_path, out_path, weight_type=QuantType.QInt8)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    fmt = QuantFormat.QOperator if variant == "qop" else QuantFormat.QDQ
    quantize_static(model_path, out_path, Reader(), quant_format=fmt, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)


# Reverts each accuracy control may try (both tools default to no limit: every quantizer, one validation each).
AC_ITERATIONS = 10


def accuracy_control(tool: str, model, calib: str, samples: list, transformer: bool):
    """``tool``'s quantize_with_accuracy_control (max_drop 0.01 absolute) with the bench task's primary metric
    (report.PRIMARY) as validation_fn, validated on the calibration ``samples`` of the artifact ``calib`` and their
    truth (the task's render saved it beside its source folder; the encoder has none, its labels are the samples'
    attention masks): the task is named by BENCH_TASK, its work folder by BENCH_WORK. Returns (INT8 model, what it
    reports)."""
    import os
    from pathlib import Path

    import report
    import run as bench

    name, work = os.environ["BENCH_TASK"], Path(os.environ["BENCH_WORK"])
    task = bench.make_task(name, work)
    truth_file = work / name / "source-truth.json"
    truth = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    sources = json.loads((Path(calib) / "index.json").read_text())["sources"]["calibration"]
    labels = task.labels(samples, sources, truth)
    refs = bench.infer(model, samples)

    def validation_fn(candidate, data) -> float:
        items = list(data)
        return float(bench.task_metrics(task, bench.infer(candidate, items), labels[:len(items)],
                                        refs[:len(items)])[report.PRIMARY[name]])

    if tool == "ptqflow":
        import ptqflow

        kw = {"model_type": ptqflow.ModelType.TRANSFORMER} if transformer else {}
        result = ptqflow.quantize_with_accuracy_control_result(
            model, ptqflow.Dataset(samples), ptqflow.Dataset(samples), validation_fn, max_drop=0.01,
            subset_size=len(samples), advanced_accuracy_restorer_parameters=ptqflow.AdvancedAccuracyRestorerParameters(
                max_num_iterations=AC_ITERATIONS), **kw)
        return result.model, {"fp32_metric": result.fp32_metric, "int8_metric": result.int8_metric,
                              "metric": result.metric, "reverted": len(result.reverted), "met": result.met,
                              "stopped": result.stopped}
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    kw = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(samples), nncf.Dataset(samples), validation_fn, max_drop=0.01, subset_size=len(samples),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=AC_ITERATIONS),
        **kw)
    return q, {}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss would also count the parent's peak, which Linux carries
    across fork and exec, so every worker would report at least the harness's size."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    method, model_path, calib, out = sys.argv[1:5]
    transformer = len(sys.argv) > 5 and sys.argv[5] == "transformer"
    samples = _samples(calib)
    res: dict = {"method": method}
    t0 = time.perf_counter()
    try:
        tool, _, variant = method.partition("_")
        if tool == "ort":
            run_ort(model_path, samples, out, variant)
        elif variant == "ac":
            q, res["accuracy_control"] = accuracy_control(tool, onnx.load(model_path), calib, samples, transformer)
            q.ir_version = min(q.ir_version, 10)
            onnx.save(q, out)
        else:
            model = onnx.load(model_path)
            q = (run_ptqflow if tool == "ptqflow" else run_nncf)(model, samples, variant, transformer)
            q.ir_version = min(q.ir_version, 10)
            onnx.save(q, out)
        res["ok"] = True
    except Exception as err:  # a failing method is a result, not a crash of the bench
        res.update(ok=False, error=f"{type(err).__name__}: {err}"[:500], trace=traceback.format_exc()[-2000:])
    res["quantize_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = peak_rss_mb()
    print("BENCHRESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
