"""ptqflow.data sources: multi-input .npz, stacked .pb, a 'labels' input, image transforms, shape checks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

import builders
from ptqflow.config import PipelineConfig
from ptqflow.data import iter_labeled, iter_samples, read_index
from ptqflow.data.build import build
from ptqflow.errors import InputError


def _cfg(**data):
    q = {"subset_size": data.pop("subset_size", 4)}
    return PipelineConfig.model_validate({"quantization": q, "data": {"source": "x", **data}})


def _two_inputs(tmp_path, second="labels"):
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3]),
          helper.make_tensor_value_info(second, TensorProto.FLOAT, [None, 3])]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])]
    model = builders.make_model([helper.make_node("Add", ["x", second], ["y"])], vi, out, [])
    return builders.save(model, tmp_path / "two" / "model.onnx")


def _out(tmp_path, name="o"):
    d = tmp_path / name
    d.mkdir()
    return d


def test_npz_multi_input_with_an_input_called_labels(tmp_path):
    model = _two_inputs(tmp_path)
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    np.savez(tmp_path / "d.npz", x=x, labels=-x)
    out = _out(tmp_path)
    build(tmp_path / "d.npz", model, out, _cfg(subset_size=5, validation_size=0))
    for sample, label in iter_labeled(out, "calibration"):
        assert set(sample) == {"x", "labels"} and label is None
        np.testing.assert_array_equal(sample["labels"], -sample["x"])  # the input, not ptqflow's label key
    assert sorted(int(s["x"][0, 0]) for s in iter_samples(out)) == [0, 3, 6, 9, 12]
    np.savez(tmp_path / "missing.npz", x=x)
    with pytest.raises(InputError, match=r"missing.npz.*\['labels'\]"):
        build(tmp_path / "missing.npz", model, out, _cfg())


def test_stacked_pb_and_zoo_multi_input(tmp_path):
    mlp = builders.save(builders.mlp(features=4), tmp_path / "m" / "model.onnx")
    data = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    (tmp_path / "b.pb").write_bytes(onnx.numpy_helper.from_array(data).SerializeToString())
    out = _out(tmp_path)
    build(tmp_path / "b.pb", mlp, out, _cfg(subset_size=3, validation_size=0))
    assert read_index(out)["sources"]["calibration"] and sorted(read_index(out)["sources"]["calibration"]) == [
        "b.pb[0]", "b.pb[1]", "b.pb[2]"]
    got = {read_index(out)["sources"]["calibration"][i]: s["input"] for i, s in enumerate(iter_samples(out))}
    np.testing.assert_array_equal(got["b.pb[1]"], data[1:2])
    model = _two_inputs(tmp_path, second="z")
    d = tmp_path / "zoo" / "test_data_set_0"
    d.mkdir(parents=True)
    for k, arr in enumerate((data[:1, :3], 2 * data[:1, :3])):
        (d / f"input_{k}.pb").write_bytes(onnx.numpy_helper.from_array(arr).SerializeToString())
    out2 = _out(tmp_path, "o2")
    build(tmp_path / "zoo", model, out2, _cfg(subset_size=1, validation_size=0))
    s = next(iter_samples(out2))
    np.testing.assert_array_equal(s["z"], 2 * s["x"])
    (tmp_path / "junk.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(InputError, match="junk.pb"):
        build(tmp_path / "junk.pb", builders.save(builders.mlp(features=4), tmp_path / "m3" / "model.onnx"), out, _cfg())


def test_image_transform_and_its_checks(tmp_path, monkeypatch):
    conv = builders.save(builders.conv_classifier(size=8), tmp_path / "m" / "model.onnx")
    for i in range(3):
        Image.new("RGB", (5, 5), (i, 2 * i, 3 * i)).save(tmp_path / f"{i}.png")
    (tmp_path / "tf.py").write_text(
        "import numpy as np\n"
        "def ok(img):\n    return {'input': np.full((1, 3, 8, 8), img.getpixel((0, 0))[2], np.float32)}\n"
        "def small(img):\n    return {'input': np.zeros((1, 3, 4, 4), np.float32)}\n"
        "def ints(img):\n    return {'input': np.zeros((1, 3, 8, 8), np.int64)}\n")
    monkeypatch.chdir(tmp_path)
    out = _out(tmp_path)
    (tmp_path / "imgs").mkdir()
    for p in tmp_path.glob("*.png"):
        p.rename(tmp_path / "imgs" / p.name)
    build(tmp_path / "imgs", conv, out, _cfg(subset_size=3, validation_size=0, transform="tf:ok"))
    assert sorted(float(s["input"][0, 0, 0, 0]) for s in iter_samples(out)) == [0.0, 3.0, 6.0]
    with pytest.raises(InputError, match=r"shape \[3, 4, 4\], expected \[None, 3, 8, 8\]"):
        build(tmp_path / "imgs", conv, out, _cfg(validation_size=0, transform="tf:small"))
    with pytest.raises(InputError, match="dtype int64, expected float32"):
        build(tmp_path / "imgs", conv, out, _cfg(validation_size=0, transform="tf:ints"))


def test_method1_through_build_and_dynamic_shape_mismatch(tmp_path):
    conv = builders.save(builders.conv_classifier(size=4), tmp_path / "m" / "model.onnx")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4), (255, 0, 51)).save(tmp_path / "imgs" / "a.png")
    out = _out(tmp_path)
    build(tmp_path / "imgs", conv, out, _cfg(subset_size=1, validation_size=0,
                                              preprocess={"method": "preprocess_method1"}))
    x = np.array([255, 0, 51], np.float32) / 127.5 - 1
    expect = np.broadcast_to((x - x.mean())[:, None, None], (3, 4, 4))[None]
    np.testing.assert_allclose(next(iter_samples(out))["input"], expect, atol=1e-6)
    vi = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, None, None])]
    out_vi = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, None, None])]
    dyn = builders.save(builders.make_model([helper.make_node("Relu", ["input"], ["y"])], vi, out_vi, []),
                        tmp_path / "dyn" / "model.onnx")
    Image.new("RGB", (6, 4)).save(tmp_path / "imgs" / "b.png")
    with pytest.raises(InputError, match="earlier samples"):
        build(tmp_path / "imgs", dyn, out, _cfg(subset_size=2, validation_size=0))
    idx = build(tmp_path / "imgs", dyn, out, _cfg(subset_size=2, validation_size=0, preprocess={"resize": [4, 4]}))
    assert idx["shapes"] == {"input": [1, 3, 4, 4]}


def test_rewritten_npz_is_read_again_and_txt_lines(tmp_path, monkeypatch):
    mlp = builders.save(builders.mlp(features=4), tmp_path / "m" / "model.onnx")
    for value in (1.0, 2.0):
        np.savez(tmp_path / "d.npz", input=np.full((2, 4), value, np.float32))
        out = tmp_path / f"o{value}"
        out.mkdir()
        build(tmp_path / "d.npz", mlp, out, _cfg(subset_size=2, validation_size=0))
        assert all(float(s["input"][0, 0]) == value for s in iter_samples(out))
    (tmp_path / "lines.txt").write_text("a\n\nbbb\n")
    (tmp_path / "linetok.py").write_text(  # a module name no other test imports (sys.modules caches it)
        "import numpy as np\ndef tok(s):\n    return np.full((4,), len(s), np.float32)\n")
    monkeypatch.chdir(tmp_path)
    out = _out(tmp_path)
    idx = build(tmp_path / "lines.txt", mlp, out, _cfg(subset_size=2, validation_size=0, transform="linetok:tok"))
    assert sorted(idx["sources"]["calibration"]) == ["lines.txt:1", "lines.txt:3"]  # blank line ignored
    assert sorted(float(s["input"][0, 0]) for s in iter_samples(out)) == [1.0, 3.0]
