"""A data set smaller than subset_size + validation_size: the split rule, and `ptqflow run` on 40 and 3 images.

With the sizes left at their defaults a small data set holds out a share for validation instead of spending
everything on calibration and failing at validate; one too small to split, or an explicit validation_size it
cannot meet, stops at build-calibration before any heavy step.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import builders
from ptqflow.artifacts.manifest import read_manifest
from ptqflow.cli import main
from ptqflow.config import parse_config
from ptqflow.data.selection import MIN_CALIBRATION, plan_split
from ptqflow.errors import ConfigError, InputError
from ptqflow.pipeline.steps import build_calibration

LATER_STEPS = ("collect-stats", "quantize", "validate", "export-ir")


@pytest.mark.parametrize("n, subset, expect", [
    (40, 300, (27, 13)),     # a third held out
    (450, 300, (300, 150)),  # calibration full, validation a third
    (599, 300, (300, 299)),  # validation takes what calibration cannot use
    (600, 300, (300, 300)),  # enough: the configured sizes
    (11, 300, (10, 1)),      # the smallest that splits: calibration keeps its floor
    (10, 8, (8, 2)),         # a small subset_size is the floor
])
def test_default_sizes_split_a_small_data_set(n, subset, expect):
    plan = plan_split(n, subset, 300, validation_size_set=False)
    assert (plan.calibration, plan.validation) == expect
    assert plan.rule == ("requested" if n >= subset + 300 else "auto")
    if plan.rule == "auto":
        assert f"{expect[1]} held out for validation, {expect[0]} for calibration" in plan.reason


def test_too_small_and_explicit_validation_size():
    with pytest.raises(InputError, match=rf"3 item\(s\): too small a data set.*at least {MIN_CALIBRATION + 1}") as err:
        plan_split(3, 300, 300, validation_size_set=False)
    assert "validation_size" not in str(err.value)  # raising it would not help
    explicit = plan_split(40, 300, 10, validation_size_set=True)
    assert (explicit.calibration, explicit.validation, explicit.rule) == (30, 10, "validation_size_set")
    with pytest.raises(ConfigError, match="validation_size=300 was set.*40 items.*at most 30"):
        plan_split(40, 300, 300, validation_size_set=True)
    assert (plan_split(40, 300, 0, validation_size_set=True).calibration,
            plan_split(40, 300, 0, validation_size_set=True).validation) == (40, 0)  # validation off on purpose


def test_explicit_validation_size_changes_the_cache_key():
    unset = parse_config({"data": {"source": "x"}})
    explicit = parse_config({"data": {"source": "x", "validation_size": 300}})
    assert unset.data.validation_size == explicit.data.validation_size
    assert build_calibration.config_section(unset) != build_calibration.config_section(explicit)


def _images(directory, n):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(directory / f"{i:02d}.png")
    return directory


def _run(tmp_path, n_images, *extra):
    model = builders.save(builders.conv_classifier(size=8), tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    code = main(["run", "--model", str(model), "--data", str(_images(tmp_path / "imgs", n_images)),
                 "--output", str(out), *extra])
    return code, out


def test_run_with_40_images_and_default_sizes_validates(tmp_path, capsys):
    # Only the gate's speed threshold and the timing loop are relaxed (a tiny model is not faster in INT8);
    # subset_size and validation_size stay at their defaults (300 and 300).
    code, out = _run(tmp_path, 40, "--set", "validation.gate.min_speedup=null",
                     "--set", "validation.latency_iterations=2")
    err = capsys.readouterr().err
    assert code == 0, err
    cal = read_manifest(out / "build-calibration")
    assert cal.metrics["calibration"] == 27 and cal.metrics["validation"] == 13 and cal.metrics["split"] == "auto"
    assert "13 held out for validation, 27 for calibration" in cal.metrics["split_reason"]
    assert "13 held out for validation" in err  # logged as well
    assert read_manifest(out / "validate") is not None
    assert json.loads((out / "build-calibration" / "index.json").read_text())["split"]["rule"] == "auto"


def test_run_with_3_images_stops_at_build_calibration(tmp_path, capsys):
    code, out = _run(tmp_path, 3)
    err = capsys.readouterr().err
    assert code == InputError.exit_code
    assert "3 item(s): too small a data set to both calibrate and validate" in err
    assert f"at least {MIN_CALIBRATION + 1}" in err and "fetch-model: done" in err
    assert read_manifest(out / "build-calibration") is None
    assert not any((out / step).exists() for step in LATER_STEPS)


def test_run_with_an_unmeetable_validation_size_stops_at_build_calibration(tmp_path, capsys):
    code, out = _run(tmp_path, 40, "--validation-size", "300")
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code
    assert "data.validation_size=300 was set, but data.source has 40 items" in err and "at most 30" in err
    assert not any((out / step).exists() for step in LATER_STEPS)


def test_run_with_validation_size_0_is_refused_before_any_step(tmp_path, capsys):
    code, out = _run(tmp_path, 40, "--validation-size", "0")
    assert code == ConfigError.exit_code
    assert "data.validation_size is 0, but ptqflow run validates" in capsys.readouterr().err
    assert not out.exists()


def test_validation_left_empty_by_unreadable_items_fails_at_build(tmp_path):
    from ptqflow.data.build import build

    model = builders.save(builders.conv_classifier(size=8), tmp_path / "m" / "model.onnx")
    imgs = _images(tmp_path / "imgs", 10)
    (imgs / "broken.png").write_bytes(b"not an image")  # 11 items: planned 10 + 1, only 10 readable
    out = tmp_path / "out"
    out.mkdir()
    cfg = parse_config({"data": {"source": str(imgs), "max_bad_fraction": 0.2}})
    with pytest.raises(InputError, match="none of the items left for validation could be read"), \
            pytest.warns(UserWarning, match="skipped 1"):
        build(imgs, model, out, cfg)
    assert list(out.iterdir()) == []


def test_kfp_resolved_config_keeps_which_sizes_the_run_set(tmp_path):
    # KFP's resolve-config writes the config every step reads: a size left at its default must stay unset
    # there, or a small data set is refused on KFP where `ptqflow run` splits it.
    from ptqflow.config import load_config
    from ptqflow.orchestration.kfp_runtime import resolve_config

    data = resolve_config(tmp_path / "a.json", {"model": "m.onnx", "data.validation_size": 300})
    assert data["data"]["validation_size"] == 300  # the full config is returned
    assert "validation_size" not in load_config(tmp_path / "a.json").data.model_fields_set
    resolve_config(tmp_path / "b.json", {"model": "m.onnx"}, "data:\n  validation_size: 300\n")
    assert "validation_size" in load_config(tmp_path / "b.json").data.model_fields_set
