"""Every config field, every step: either the field is in the step's cache key, or changing it leaves the
step's output byte-identical. A cached result is never wrong only if this holds for all of them, so the test
walks the whole config (a new field without an entry in ALTERNATIVES fails it) and runs the real steps on a
tiny model.

Also the case that broke it: a run without FastBiasCorrection followed by one with it into the same output.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from enum import Enum
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import builders
from ptqflow.pipeline import runner as pipeline
from ptqflow.config import PipelineConfig, parse_config, set_dotted
from ptqflow.pipeline.steps import STEP_MODULES, load_step

# A valid other value for each field whose default has no obvious alternative (None, free text, lists).
# Booleans flip, numbers move, enums and literals take another member: see _alternative.
ALTERNATIVES: dict[str, object] = {
    "model": "/elsewhere/model.onnx",
    "model_sha256": "0" * 64,
    "output": "/elsewhere/out",
    "quantization.preset": "mixed",
    "quantization.model_type": "transformer",
    "quantization.ignored_scope.names": ["no_such_node"],
    "quantization.ignored_scope.patterns": ["no_such_.*"],
    "quantization.ignored_scope.types": ["LSTM"],
    "quantization.ignored_scope.subgraphs": [{"inputs": ["a"], "outputs": ["b"]}],
    "quantization.nbits": 8,  # its only valid value: nothing to change
    "quantization.input_quantization_params": {"r1": [0, 0.05]},
    "quantization.output_quantization_params": {"r2": [0, 0.05]},
    "quantization.advanced.bias_correction_subset_size": 2,
    "quantization.advanced.smooth_quant_alpha": 0.5,
    "quantization.advanced.safeguard_outliers": False,
    "quantization.advanced.safeguard_depthwise": False,
    "quantization.advanced.per_channel_depthwise_inputs": False,
    "quantization.advanced.bias_correction_fallback": False,
    "quantization.advanced.bias_correction_fallback_samples": 3,
    "quantization.advanced.safeguard_softmax_heads": False,
    "quantization.advanced.safeguard_detected_transformer": False,
    "quantization.advanced.safeguard_mixed_precision": False,
    "quantization.advanced.decision_outputs": ["logits"],  # conv_classifier's output
    "quantization.advanced.graph_constant_folding": False,
    "quantization.advanced.graph_fold_batchnorm": False,
    "quantization.advanced.cross_layer_equalization": True,
    "quantization.advanced.range_search": True,
    "quantization.advanced.range_search_samples": 4,
    "quantization.advanced.bias_absorption_sigmas": 2.0,
    "conversion.input_shapes": {"x": [1, 3, 8, 8]},
    "conversion.input_dtypes": {"x": "float16"},
    "conversion.opset": 17,
    "data.source": "/elsewhere/data",
    "data.transform": "no_such_module:fn",
    "data.label_file": "labels.txt",
    "data.preprocess.resize": [8, 8],
    "data.preprocess.center_crop": [6, 6],
    "data.preprocess.mean": [0.5, 0.5, 0.5],
    "data.preprocess.std": [0.25, 0.25, 0.25],
    "validation.metric": "no_such_module:fn",
    "validation.gate.accuracy_metric": "top5",
    "validation.gate.max_accuracy_drop": 0.5,
    "validation.gate.min_cosine": 0.0,
    "validation.gate.min_speedup": 0.5,
    "validation.gate.min_sqnr_db": -100.0,
    "validation.gate.min_top1_agreement": 0.0,
    "validation.accuracy_control.max_time_s": 60.0,
    "validation.openvino_device": "GPU",
    "export.openvino_device": "GPU",
    "registry": {"tracking_uri": "http://registry.invalid", "target_name": "m-int8"},
}
# Fields that only place or name things, never change a result: each step may ignore them freely. The
# output location is checked separately by the runner (a rerun into the same place must be a cache hit).
PLACEMENT_ONLY = {"output"}


def _leaves(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in ("registry",) and not path.endswith("ignored_scope.subgraphs"):
            out += _leaves(value, path + ".")
        else:
            out.append(path)
    return out


def _field_info(path: str):
    model, info = PipelineConfig, None
    for part in path.split("."):
        info = model.model_fields[part] if hasattr(model, "model_fields") else model.__pydantic_fields__[part]
        model = _model_of(info.annotation)
    return info


def _model_of(annotation):
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and (hasattr(arg, "model_fields") or hasattr(arg, "__pydantic_fields__")):
            return arg
    return None


def _choices(annotation) -> list:
    out = []
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, Enum):
            out += [m.value for m in arg]
        elif typing.get_origin(arg) is typing.Literal:
            out += list(typing.get_args(arg))
    return out


def _alternative(path: str, value):
    if path in ALTERNATIVES:
        return ALTERNATIVES[path]
    if isinstance(value, bool):
        return not value
    choices = [c for c in _choices(_field_info(path).annotation) if c != value]
    if choices:
        return choices[0]
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    raise AssertionError(f"config field {path!r} has no alternative value: add one to ALTERNATIVES")


def _outputs(step: str, out: Path) -> dict[str, str]:
    """sha256 of each output file except the manifest; validate's report without its timings and speed."""
    digests = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"):
        rel = f.relative_to(out).as_posix()
        if step == "validate" and rel == "report.html":
            continue  # the same figures as report.json, with the speed plots
        data = f.read_bytes()
        if step == "export-ir" and rel.endswith(".xml"):
            # OpenVINO names the nodes it creates from a counter global to the process (Constant_30745), some
            # of them while saving; the graph is the same.
            data = re.sub(rb'name="([A-Za-z]+)_[0-9]+"', rb'name="\1_N"', data)
        if step == "validate" and rel == "report.json":
            report = json.loads(data)
            report.pop("speed")
            report["gate"] = [c for c in report["gate"] if "speedup" not in c["name"]]
            data = json.dumps(report, sort_keys=True).encode()
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def _images(root: Path) -> None:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            rng = np.random.default_rng(hash((c, i)) % 2**32)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "labels.txt").write_text("".join(f"{c}/{i}.png\tline {i}\n" for c in "ab" for i in range(8)))


def _base(tmp_path: Path, output: Path, **quantization) -> PipelineConfig:
    model = builders.save(builders.conv_classifier(size=8), tmp_path / "src" / "model.onnx")
    _images(tmp_path / "data")
    return parse_config({
        "model": str(model), "output": str(output), "data": {"source": str(tmp_path / "data"), "validation_size": 6},
        "quantization": {"subset_size": 8, **quantization},
        "validation": {"latency_iterations": 1, "gate": {"max_accuracy_drop": None, "min_cosine": None,
                                                          "min_speedup": None}},
    })


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    cfg = _base(tmp, tmp / "run")
    pipeline.run_pipeline(cfg)
    return tmp, cfg


def test_every_field_is_in_the_key_or_leaves_the_output_unchanged(baseline):
    tmp, cfg = baseline
    base = cfg.model_dump(mode="json")
    fields = _leaves(base)
    assert len(fields) > 40  # the walk reached the nested sections
    unkeyed: dict[str, list[str]] = {}
    for name in STEP_MODULES:
        step = load_step(name)
        for path in fields:
            if step.config_section(_changed(base, [path])) != step.config_section(cfg):
                continue  # in the key: a change reruns the step
            unkeyed.setdefault(name, []).append(path)
        # Group testing: one run with every field outside the key changed at once; only when the output moved,
        # halve the group until the field that moved it is named.
        group = [p for p in unkeyed[name] if p not in PLACEMENT_ONLY]
        culprit = _moving_field(tmp, step, base, group)
        assert culprit is None, (
            f"{name}: config field {culprit} is not in the step's cache key, but changing it changed the output")
    # The keys are not everything: each step leaves the other steps' sections out.
    assert "quantization.fast_bias_correction" not in unkeyed["quantize"]
    assert "quantization.advanced.bias_correction_threshold" in unkeyed["collect-stats"]
    assert "validation.gate.min_cosine" in unkeyed["quantize"]


def _changed(base: dict, paths: list[str]) -> PipelineConfig:
    changed = json.loads(json.dumps(base))
    for path in paths:
        set_dotted(changed, path, _alternative(path, _get(base, path)))
    return parse_config(changed, f"alternatives for {', '.join(paths)}")


def _moving_field(tmp: Path, step, base: dict, group: list[str]) -> str | None:
    """A field of ``group`` whose alternative value changes the step's output, or None."""
    inputs = {i: tmp / "run" / pipeline.PRODUCERS[i] for i in step.INPUTS}
    reference = _outputs(step.NAME, tmp / "run" / step.NAME)
    out = tmp / "alt" / step.NAME / hashlib.sha256(" ".join(group).encode()).hexdigest()[:12]
    out.mkdir(parents=True)
    step.run(inputs, out, _changed(base, group))
    if _outputs(step.NAME, out) == reference:
        return None
    if len(group) == 1:
        return group[0]
    half = len(group) // 2
    return _moving_field(tmp, step, base, group[:half]) or _moving_field(tmp, step, base, group[half:])


def _get(data: dict, path: str):
    for part in path.split("."):
        data = data[part]
    return data


def _statistics_missing(out: Path) -> list[str]:
    summary = json.loads((out / "quantize" / "summary.json").read_text())
    layers = summary["layers"] if isinstance(summary, dict) else summary
    return [row["name"] for row in layers if "statistics missing" in json.dumps(row)]


@pytest.mark.parametrize("first,second", [(False, True), (True, False)])
def test_switching_the_bias_correction_mode_collects_what_the_new_mode_needs(tmp_path, first, second):
    out = tmp_path / "run"
    pipeline.run_pipeline(_base(tmp_path, out, fast_bias_correction=first))
    stats_before = (out / "collect-stats" / "manifest.json").read_text()
    result = pipeline.run_pipeline(_base(tmp_path, out, fast_bias_correction=second))
    assert (out / "collect-stats" / "manifest.json").read_text() != stats_before  # collected again
    assert not _statistics_missing(out)
    plan = json.loads((out / "collect-stats" / "plan.json").read_text())["plan"]
    assert plan["collected"] == {"bias_input_means": second}
    assert result["quantize"].config["quantization"]["fast_bias_correction"] is second


def test_quantize_refuses_statistics_without_what_fast_bias_correction_needs(tmp_path):
    from ptqflow.errors import InputError

    out = tmp_path / "run"
    cfg = _base(tmp_path, out, fast_bias_correction=False)
    pipeline.run_pipeline(cfg)
    step = load_step("quantize")
    fast = _base(tmp_path, out, fast_bias_correction=True)
    inputs = {i: out / pipeline.PRODUCERS[i] for i in step.INPUTS}
    (tmp_path / "q").mkdir()
    with pytest.raises(InputError, match="lack FastBiasCorrection's per-channel input means.*bias_input_means=False"):
        step.run(inputs, tmp_path / "q", fast)


def test_collect_stats_key_changes_with_the_saved_statistics_format(monkeypatch):
    """A cached collect-stats artifact written in another statistics or plan format is not reused."""
    from ptqflow.config import parse_config
    from ptqflow.pipeline.steps import collect_stats
    from ptqflow.quantization import plan
    from ptqflow.quantization.statistics import store

    cfg = parse_config({"model": "m.onnx", "data": {"source": "d"}, "output": "o"})
    before = collect_stats.config_section(cfg)
    monkeypatch.setattr(store, "FORMAT", store.FORMAT + 1)
    after_statistics = collect_stats.config_section(cfg)
    monkeypatch.setattr(plan, "PLAN_VERSION", plan.PLAN_VERSION + 1)
    assert before != after_statistics != collect_stats.config_section(cfg)
