"""ptqflow.frontends without any framework installed: format sniffing from names and bytes, the pickle refusal,
and the conversion check's arithmetic and errors (base)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import builders
from ptqflow import frontends
from ptqflow.config import parse_config
from ptqflow.errors import ConfigError, InputError
from ptqflow.frontends import sniff
from ptqflow.frontends.base import (Conversion, ConversionOptions, InputSpec, check_feeds, compare,
                                    options_from_config, relative_difference, require, resolve_specs)
from ptqflow.pipeline.steps import fetch_model


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, b"x")
    return path


def test_sniffing_by_zip_members_and_magic_bytes(tmp_path):
    script = _zip(tmp_path / "scripted.pt", ["m/code/__torch__.py", "m/data.pkl", "m/constants.pkl"])
    program = _zip(tmp_path / "program.pt2", ["m/models/model.json", "m/data/weights/w0"])
    saved = _zip(tmp_path / "checkpoint.pt", ["archive/data.pkl", "archive/data/0"])  # torch.save's zip
    raw = tmp_path / "weights.bin"
    raw.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))  # starts with 0x80: a pickle whatever its name
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(32))
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(32))
    saved_model = tmp_path / "saved"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    onnx_model = builders.save(builders.mlp(), tmp_path / "model.onnx")

    assert sniff.is_torchscript(script) and not sniff.is_pickle(script)
    assert sniff.is_torch_export(program) and not sniff.is_torchscript(program) and not sniff.is_pickle(program)
    assert sniff.is_pickle(saved) and not sniff.is_torchscript(saved)
    assert sniff.is_pickle(raw)
    assert sniff.is_tflite(tflite) and sniff.is_keras(h5) and sniff.is_saved_model(saved_model)
    assert frontends.detect(script).source_format == "torchscript"
    assert frontends.detect(program).source_format == "torch_export"
    assert frontends.detect(saved_model).source_format == "tf_saved_model"
    assert frontends.detect(onnx_model) is None and not frontends.is_source_model(onnx_model)


@pytest.mark.parametrize("name", ["weights.pth", "model.ckpt", "state.pkl"])
def test_pickled_checkpoints_are_refused_with_what_to_export(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"anything")  # the name alone says pickle: it is never opened as one
    with pytest.raises(InputError, match="ptqflow never unpickles") as err:
        frontends.detect(path, f"s3://bucket/{name}")
    assert f"s3://bucket/{name}" in str(err.value) and "torch.jit.save" in str(err.value)
    assert "torch.export.save" in str(err.value)


def test_convert_refuses_what_no_frontend_claims(tmp_path):
    onnx_model = builders.save(builders.mlp(), tmp_path / "model.onnx")
    with pytest.raises(InputError, match="not a model format ptqflow converts"):
        frontends.convert(onnx_model, tmp_path / "out", ConversionOptions())


def test_a_missing_framework_is_a_config_error_naming_the_extra():
    with pytest.raises(ConfigError, match=r"pip install 'ptqflow\[torch\]'") as err:
        require("ptqflow_no_such_framework.sub", "torch", "torchscript")
    assert "a torchscript model needs ptqflow_no_such_framework" in str(err.value)


def test_relative_difference_is_scaled_by_the_reference():
    ref = np.array([0.0, 2.0, -4.0])
    assert relative_difference(ref, ref) == 0.0
    assert relative_difference(ref, ref + np.array([0.0, 0.0, 0.004])) == pytest.approx(1e-3)
    assert relative_difference(np.zeros(3), np.full(3, 1e-9)) == 0.0  # within float32's resolution at 1
    assert relative_difference(np.zeros(3), np.full(3, 1e-3)) == float("inf")
    assert relative_difference(ref, ref[:2]) == float("inf")


def test_compare_names_the_worst_output_and_the_tolerance():
    ref = [[np.ones(4), np.full(2, 10.0)]]
    assert compare(["a", "b"], ref, [[np.ones(4), np.full(2, 10.001)]], 1e-3, "m.pt") == pytest.approx(
        {"a": 0.0, "b": 1e-4})
    with pytest.raises(InputError, match=r"m\.pt: the converted ONNX model's output 'b' differs .* by 0\.01 .* "
                                         r"conversion\.tolerance = 0\.001"):
        compare(["a", "b"], ref, [[np.ones(4), np.full(2, 10.1)]], 1e-3, "m.pt")
    with pytest.raises(InputError, match=r"output 'a' has shape \[3\] in the converted ONNX model but \[4\]"):
        compare(["a", "b"], ref, [[np.ones(3), np.full(2, 10.0)]], 1e-3, "m.pt")
    with pytest.raises(InputError, match="has 1 outputs, the source 2"):
        compare(["a"], ref, [[np.ones(4)]], 1e-3, "m.pt")


def test_compare_holds_the_conversion_to_the_closest_of_the_sources_executions():
    # The source's default kernels round a large output 2e-3 away from its builtin kernels; the converted model
    # agrees with the builtin ones: the difference is the source's own float32 noise, not the conversion's.
    logits = np.linspace(-1500.0, 1900.0, 64)
    default, builtin = [[logits + 3.8 * np.sign(logits)]], [[logits + 0.01]]
    converted = [[logits]]
    with pytest.raises(InputError, match=r"output 'seg' differs .* by 0\.002"):
        compare(["seg"], default, converted, 1e-3, "m.tflite")
    assert compare(["seg"], default, converted, 1e-3, "m.tflite", others=[builtin]) == pytest.approx(
        {"seg": 0.01 / 1900}, rel=1e-4)
    with pytest.raises(InputError, match=r"output 'seg' differs .* by 0\.002"):
        compare(["seg"], default, [[logits + 0.01]], 1e-3, "m.tflite", others=[[[logits - 3.8]]])
    # A wrong conversion is far from every execution of the source.
    with pytest.raises(InputError, match="output 'seg'"):
        compare(["seg"], default, [[logits * 1.01]], 1e-3, "m.tflite", others=[builtin])


def test_resolve_specs_fixes_the_batch_and_names_what_is_missing():
    specs = [InputSpec("x", (None, 3, 8)), InputSpec("ids", (None, None), "int64")]
    with pytest.raises(InputError, match=r"input 'ids' has open dimensions \[None, None\]; give its shape in "
                                         r"conversion\.input_shapes"):
        resolve_specs(specs, ConversionOptions(), "m.pt2")
    resolved = resolve_specs(specs, ConversionOptions(input_shapes={"ids": (2, 5)}, input_dtypes={"x": "float16"}),
                             "m.pt2")
    assert resolved == [InputSpec("x", (1, 3, 8), "float16"), InputSpec("ids", (2, 5), "int64")]
    with pytest.raises(ConfigError, match=r"name 'y', which is not an input of m\.pt2 \(inputs: ids, x\)"):
        resolve_specs(specs, ConversionOptions(input_shapes={"y": (1,)}), "m.pt2")


def test_check_feeds_are_seeded_typed_or_given():
    specs = [InputSpec("x", (2, 3)), InputSpec("ids", (2,), "int64"), InputSpec("mask", (2,), "bool")]
    feeds, source = check_feeds(specs, ConversionOptions(check_samples=3, seed=5))
    again, _ = check_feeds(specs, ConversionOptions(check_samples=3, seed=5))
    assert source == "synthetic (seed 5)" and len(feeds) == 3
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(feeds, again) for k in a)
    assert feeds[0]["x"].dtype == np.float32 and feeds[0]["ids"].dtype == np.int64 and feeds[0]["mask"].dtype == bool
    given = ({"x": np.ones((2, 3), np.float32)},) * 6
    feeds, source = check_feeds(specs, ConversionOptions(check_samples=2, samples=given))
    assert source == "given" and len(feeds) == 2


def test_the_config_section_reaches_the_options_and_the_cache_key(tmp_path):
    default = parse_config({"model": "m.pt"})
    changed = parse_config({"model": "m.pt", "conversion": {"input_shapes": {"x": [1, 3, 8, 8]}, "tolerance": 1e-4,
                                                              "exporter": "torchscript", "dynamic_batch": False}})
    options = options_from_config(changed.conversion)
    assert options.input_shapes == {"x": (1, 3, 8, 8)} and options.tolerance == 1e-4
    assert options.exporter == "torchscript" and options.dynamic_batch is False
    assert "conversion" not in fetch_model.config_section(default)  # keys of ONNX models stay as they were
    assert fetch_model.config_section(changed)["conversion"]["tolerance"] == 1e-4


def test_conversion_record_is_json_ready(tmp_path):
    record = Conversion("torchscript", "torch.onnx.export (torchscript)", {"torch": "2.13.0"}, tmp_path / "model.onnx",
                        1e-6, {"y": 1e-6}, 1e-3, 4, "synthetic (seed 0)", 0.1, 0.5, ["note"]).record()
    assert record["onnx_path"] == "model.onnx" and record["notes"] == ["note"] and record["per_output"] == {"y": 1e-6}
