"""The ptqflow command line: config precedence, bad config, missing inputs, caching, logs, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import builders
from ptqflow import __version__
from ptqflow.artifacts.manifest import read_manifest
from ptqflow.cli import build_parser, main, overrides_from_args
from ptqflow.config import load_config

PTQFLOW = [sys.executable, "-m", "ptqflow.cli"]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``ptqflow`` in a subprocess (as a pod would) and capture its output."""
    return subprocess.run([*PTQFLOW, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_version_and_schema():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ptqflow {__version__}"
    r = cli("config-schema")
    schema = json.loads(r.stdout)
    assert r.returncode == 0
    assert "fast_bias_correction" in json.dumps(schema)
    assert schema["title"] == "ptqflow pipeline configuration"


def test_flags_override_config_file_and_set_parses_yaml(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("quantization:\n  subset_size: 50\n  preset: mixed\n  fast_bias_correction: true\n"
                        "data:\n  seed: 3\n")
    args = build_parser().parse_args([
        "run", "--config", str(cfg_file), "--subset-size", "7", "--no-fast-bias-correction",
        "--ignored-types", "Softmax, Gelu", "--min-cosine", "0.9",
        "--set", "quantization.advanced.per_channel=false", "--set", "validation.latency_iterations=5",
    ])
    cfg = load_config(args.config, overrides_from_args(args))
    q = cfg.quantization
    assert (q.subset_size, q.preset.value, q.fast_bias_correction) == (7, "mixed", False)
    assert q.ignored_scope.types == ["Softmax", "Gelu"]
    assert q.advanced.per_channel is False
    assert cfg.data.seed == 3  # untouched by flags: from the file
    assert cfg.validation.gate.min_cosine == 0.9 and cfg.validation.latency_iterations == 5


def test_unknown_config_key_and_wrong_type_exit_2_naming_the_field(tmp_path, capsys):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    bad = tmp_path / "bad.yaml"
    bad.write_text("quantization:\n  subset_sise: 10\n")
    out = tmp_path / "o"
    assert main(["fetch-model", "--model", str(model), "--out", str(out), "--config", str(bad)]) == 2
    assert "quantization.subset_sise" in capsys.readouterr().err
    assert main(["fetch-model", "--model", str(model), "--out", str(out), "--set", "quantization.subset_size=many"]) == 2
    assert "quantization.subset_size" in capsys.readouterr().err
    assert main(["fetch-model", "--model", str(model), "--out", str(out), "--set", "novalue"]) == 2
    assert not out.exists()  # rejected before any work


def test_missing_inputs_rejected_before_work(tmp_path, capsys):
    out = tmp_path / "stats"
    assert main(["collect-stats", "--in-model", str(tmp_path), "--out", str(out)]) == 2
    assert "--in-calibration" in capsys.readouterr().err
    assert main(["run", "--model", "m.onnx", "--output", str(out)]) == 2
    assert "data.source" in capsys.readouterr().err
    assert not out.exists()


def test_input_without_manifest_is_input_error(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "cal").mkdir()
    code = main(["collect-stats", "--in-model", str(tmp_path / "model"), "--in-calibration", str(tmp_path / "cal"),
                 "--out", str(tmp_path / "o")])
    assert code == 3
    assert "input 'model'" in capsys.readouterr().err


def test_cache_skip_and_force(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "fm"
    first = cli("fetch-model", "--model", str(model), "--out", str(out))
    assert first.returncode == 0, first.stderr
    created = read_manifest(out).created
    mtime = (out / "manifest.json").stat().st_mtime_ns
    again = cli("fetch-model", "--model", str(model), "--out", str(out))
    assert again.returncode == 0 and "skipped" in again.stderr
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    forced = cli("fetch-model", "--model", str(model), "--out", str(out), "--force")
    assert forced.returncode == 0 and "running" in forced.stderr and "skipped" not in forced.stderr
    assert (out / "manifest.json").stat().st_mtime_ns != mtime
    assert read_manifest(out).digest == json.loads(first.stdout)["digest"]  # same content, same digest
    assert created  # a timestamp is recorded


def test_damaged_output_is_rebuilt(tmp_path, capsys):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "fm"
    assert main(["fetch-model", "--model", str(model), "--out", str(out)]) == 0
    (out / "model.onnx").write_bytes(b"damaged")
    assert main(["fetch-model", "--model", str(model), "--out", str(out)]) == 0
    assert "damaged files" in capsys.readouterr().err
    assert (out / "model.onnx").read_bytes() == model.read_bytes()


def test_changed_source_file_refetches(tmp_path):
    model = builders.save(builders.mlp(seed=0), tmp_path / "m.onnx")
    out = tmp_path / "fm"
    assert main(["fetch-model", "--model", str(model), "--out", str(out)]) == 0
    first = read_manifest(out).digest
    builders.save(builders.mlp(seed=1), model)
    assert main(["fetch-model", "--model", str(model), "--out", str(out)]) == 0
    assert read_manifest(out).digest != first


def test_json_logs_are_one_object_per_line(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    r = cli("--log-format", "json", "fetch-model", "--model", str(model), "--out", str(tmp_path / "o"))
    assert r.returncode == 0
    records = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "message"} <= set(rec) for rec in records)
    assert any(rec.get("step") == "fetch-model" for rec in records)
    r = cli("--log-format", "json", "fetch-model", "--model", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x"))
    assert r.returncode == 3
    err = json.loads(r.stderr.strip().splitlines()[-1])
    assert err["exit_code"] == 3 and err["retryable"] is False and "nope.onnx" in err["message"]


def test_unexpected_error_exits_1_with_traceback_under_v(tmp_path, monkeypatch, capsys):
    import ptqflow.pipeline.runner as pipeline

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "run_step", broken)
    args = ["fetch-model", "--model", "m.onnx", "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "Traceback" not in err
    assert main(["-v", *args]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_progress_logs_plain_lines_when_not_a_tty(capsys):
    from ptqflow.logs import progress, setup_logging

    setup_logging("text")
    items = list(progress(range(5), desc="stats", every_s=0.0))
    assert items == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "stats: 1/5" in err and "stats: 5/5 done" in err and "\r" not in err


def _help(command: str) -> str:
    return build_parser()._subparsers._group_actions[0].choices[command].format_help()


@pytest.mark.parametrize("step", ["fetch-model", "collect-stats", "quantize", "build-calibration", "validate", "export-ir"])
def test_every_step_has_a_subcommand(step):
    help_text = _help(step)
    assert "--output URI, --out URI" in help_text and "--force" in help_text and "--set" in help_text


@pytest.mark.parametrize("step, shown, hidden", [
    ("fetch-model", {"--model", "--model-sha256"}, {"--preset", "--min-cosine", "--data", "--device", "--seed"}),
    ("build-calibration", {"--data", "--subset-size", "--seed", "--transform", "--preprocess", "--validation-size"},
     {"--preset", "--min-cosine", "--device", "--model", "--fast-bias-correction"}),
    ("collect-stats", {"--preset", "--subset-size", "--ignored-types", "--device", "--fast-bias-correction"},
     {"--min-cosine", "--seed", "--data", "--model"}),
    ("quantize", {"--preset", "--fast-bias-correction", "--device"}, {"--min-cosine", "--seed", "--model"}),
    ("validate", {"--min-cosine", "--max-accuracy-drop", "--min-speedup", "--device"}, {"--preset", "--subset-size"}),
    ("export-ir", set(), {"--preset", "--min-cosine", "--device", "--subset-size"}),
])
def test_step_help_lists_only_the_flags_its_config_reads(step, shown, hidden):
    words = set(_help(step).replace(",", " ").split())
    assert shown <= words and not hidden & words
    run_words = set(_help("run").replace(",", " ").split())
    assert (shown | hidden) <= run_words  # run keeps every flag


def test_flag_a_step_does_not_read_is_refused_naming_the_steps_that_do(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build-calibration", "--in-model", str(tmp_path), "--data", str(tmp_path),
              "--output", str(tmp_path / "o"), "--preset", "mixed"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--preset sets quantization.preset, which the build-calibration step does not read" in err
    assert "collect-stats, quantize" in err
    with pytest.raises(SystemExit):
        main(["export-ir", "--output", str(tmp_path / "o"), "--no-fast-bias-correction"])
    assert "quantization.fast_bias_correction" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_output_and_out_are_one_flag_for_steps(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    assert main(["fetch-model", "--model", str(model), "--output", str(tmp_path / "a")]) == 0
    assert read_manifest(tmp_path / "a").step == "fetch-model"
    parser = build_parser()
    assert parser.parse_args(["quantize", "--out", "x"]).out == parser.parse_args(["quantize", "--output", "x"]).out


# --- CONFIG_READS (what the CLI offers per step) against what each step's config_section really reads ----------


def _leaves(model_type, prefix=""):
    """(dotted key, annotation) of every leaf field of a config model (dataclass fields included)."""
    import dataclasses
    import typing

    from pydantic import BaseModel

    fields = (model_type.model_fields.items() if issubclass(model_type, BaseModel)
              else ((f.name, f) for f in dataclasses.fields(model_type)))
    for name, f in fields:
        ann = getattr(f, "annotation", None) or f.type
        inner = [a for a in (typing.get_args(ann) or (ann,)) if a is not type(None)]
        sub = inner[0] if len(inner) == 1 and isinstance(inner[0], type) else None
        if sub is not None and (issubclass(sub, BaseModel) or dataclasses.is_dataclass(sub)):
            yield from _leaves(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", ann


def _choices(ann) -> list:
    """Literal values and enum values found anywhere in an annotation."""
    import enum
    import typing

    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return [m.value for m in ann]
    return [c for a in typing.get_args(ann) for c in _choices(a)]


def _changed_config(base: dict, key: str, ann):
    """A valid config differing from ``base`` in ``key`` only, or None when no candidate value fits."""
    import copy

    from ptqflow.config import parse_config, set_dotted
    from ptqflow.errors import ConfigError

    before = parse_config(base)
    old = before
    for part in key.split("."):
        old = getattr(old, part)
    candidates = [*_choices(ann), not old if isinstance(old, bool) else None, 7, 0.5, 0.25, "a" * 64, "m:f",
                  "x", [3, 3], ["x"], [{"inputs": ["x"], "outputs": ["y"]}], True,  # True: bool | None = None
                  {"x": [0, 0.5]}, {"x": [1, 3]}, {"x": "float16"}]
    for value in candidates:
        data = copy.deepcopy(base)
        set_dotted(data, key, value)
        try:
            cfg = parse_config(data)
        except ConfigError:
            continue
        new = cfg
        for part in key.split("."):
            new = getattr(new, part)
        if new != old:
            return cfg
    return None


def test_config_reads_table_matches_each_steps_config_section():
    from ptqflow.config import PipelineConfig, parse_config
    from ptqflow.pipeline.steps import CONFIG_READS, load_step, reads

    base = {"registry": {}}  # publish needs the section to exist
    leaves = list(_leaves(PipelineConfig))
    assert len(leaves) > 40
    wrong, untested = [], []
    for key, ann in leaves:
        changed = _changed_config(base, key, ann)
        if changed is None and key == "quantization.nbits":
            continue  # 8 is its only valid value: nothing to change
        if changed is None:
            untested.append(key)
            continue
        for step in CONFIG_READS:
            section = load_step(step).config_section
            actual = section(changed) != section(parse_config(base))
            if actual != reads(step, key):
                wrong.append(f"{step} {'reads' if actual else 'does not read'} {key}")
    assert not untested, f"no valid other value found for {untested}: extend _changed_config's candidates"
    assert not wrong, "steps.CONFIG_READS disagrees with config_section: " + "; ".join(wrong)


def test_gate_value_that_cannot_hold_exits_2_before_any_step(tmp_path, capsys):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "run"
    for flags, field in ((["--min-cosine", "1.5"], "validation.gate.min_cosine"),
                         (["--min-top1-agreement", "-0.1"], "validation.gate.min_top1_agreement"),
                         (["--set", "data.max_bad_fraction=2"], "data.max_bad_fraction"),
                         (["--max-accuracy-drop", "5", "--set", "validation.gate.accuracy_drop_mode=relative"],
                          "validation.gate")):
        code = main(["run", "--model", str(model), "--data", str(tmp_path), "--output", str(out), *flags])
        err = capsys.readouterr().err
        assert code == 2 and f"field '{field}'" in err, err
        assert not out.exists()  # rejected before fetch-model started
    # each step checks the whole config, so a step run alone refuses it too
    assert main(["fetch-model", "--model", str(model), "--output", str(out), "--set",
                 "validation.gate.min_cosine=1.5"]) == 2
    assert not out.exists()


def test_entry_point_script_runs():
    exe = Path(sys.executable).parent / "ptqflow"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and __version__ in r.stdout


def test_progress_draws_a_bar_on_a_terminal(monkeypatch):
    import pty
    import select

    from ptqflow.logs import progress, setup_logging

    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        setup_logging("text")
        assert list(progress(range(3), desc="stats")) == [0, 1, 2]
        tty.flush()
        drawn = b""
        # a pty hands the bar over in chunks: read until nothing more comes
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            drawn += chunk
        drawn = drawn.decode()
    os.close(master)
    assert "\rstats [" in drawn and "3/3" in drawn
