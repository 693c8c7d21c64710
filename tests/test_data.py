"""ptqflow.data: sources, preprocessing against numpy arithmetic, selection, shards, bad inputs."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import builders
from ptqflow.config import PipelineConfig
from ptqflow.data import iter_labeled, iter_samples, read_index
from ptqflow.data.build import build
from ptqflow.errors import InputError


def _cfg(**data):
    q = {"subset_size": data.pop("subset_size", 4)}
    return PipelineConfig.model_validate({"quantization": q, "data": {"source": "x", **data}})


@pytest.fixture
def conv(tmp_path):
    return builders.save(builders.conv_classifier(size=8), tmp_path / "m" / "model.onnx")


@pytest.fixture
def mlp(tmp_path):
    return builders.save(builders.mlp(features=4), tmp_path / "m2" / "model.onnx")


def _image(path: Path, seed: int, size=(10, 6)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_image_folder_labels_split_and_chain_values(tmp_path, conv):
    for c in ("cat", "dog"):
        for i in range(6):
            _image(tmp_path / "imgs" / c / f"{i}.png", hash((c, i)) % 1000, size=(8, 8))
    out = tmp_path / "out"
    out.mkdir()
    cfg = _cfg(subset_size=4, validation_size=4, preprocess={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]})
    index = build(tmp_path / "imgs", conv, out, cfg)
    assert index["label_names"] == ["cat", "dog"]
    assert index["counts"] == {"calibration": 4, "validation": 4}
    assert not set(index["sources"]["calibration"]) & set(index["sources"]["validation"])
    labels = [lbl for _, lbl in iter_labeled(out, "calibration")]
    assert sorted(labels) == [0, 0, 1, 1]  # stratified
    sample, _ = next(iter_labeled(out, "calibration"))
    src = index["sources"]["calibration"][0]
    raw = np.asarray(Image.open(tmp_path / "imgs" / src), dtype=np.float32)  # 8x8 already: no resize
    expect = ((raw / 255 - 0.5) / np.array([0.25, 0.5, 1.0], np.float32)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(sample["input"], expect, atol=1e-6)
    assert sample["input"].shape == (1, 3, 8, 8) and sample["input"].dtype == np.float32


def test_preprocess_methods_match_numpy(tmp_path):
    from ptqflow.data.preprocess import preprocess_method1, preprocess_method2, preprocess_chain
    from ptqflow.config import PreprocessConfig

    img = Image.fromarray(np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5)
    x = np.asarray(img, np.float32)
    m1 = x / 127.5 - 1
    np.testing.assert_allclose(preprocess_method1(img, 4, 4), (m1 - m1.mean()).transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(preprocess_method2(img, 4, 4), (x - [123.68, 116.78, 103.94]).transpose(2, 0, 1), atol=1e-4)
    bgr = preprocess_chain(img, PreprocessConfig(channel_order="BGR", layout="NHWC", scale=1.0, dtype="uint8",
                                                 center_crop=[2, 2]), (4, 4))
    np.testing.assert_array_equal(bgr, x[1:3, 1:3, ::-1].astype(np.uint8))
    wide = Image.new("RGB", (8, 4), (10, 20, 30))
    padded = preprocess_chain(wide, PreprocessConfig(resize_mode="pad_right", scale=1.0), (4, 16))
    assert padded.shape == (3, 4, 16)
    assert (padded[:, :, :8] == np.array([10, 20, 30])[:, None, None]).all() and (padded[:, :, 8:] == 0).all()
    box = preprocess_chain(wide, PreprocessConfig(resize_mode="letterbox", scale=1.0), (8, 8))
    assert (box[:, 2:6, :] == np.array([10, 20, 30])[:, None, None]).all() and (box[:, :2] == 0).all()
    short = preprocess_chain(wide, PreprocessConfig(resize=2, resize_mode="shorter", scale=1.0), None)
    assert short.shape == (3, 2, 4)


def test_npy_npz_pb_and_zoo_layout(tmp_path, mlp):
    data = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "batch.npy", data)
    out = tmp_path / "o1"
    out.mkdir()
    build(tmp_path / "a", mlp, out, _cfg(subset_size=3, validation_size=3))
    got = np.concatenate([s["input"] for s in iter_samples(out)] + [s["input"] for s in iter_samples(out, "validation")])
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(data, axis=0))
    np.savez(tmp_path / "b.npz", input=data)
    out2 = tmp_path / "o2"
    out2.mkdir()
    assert build(tmp_path / "b.npz", mlp, out2, _cfg(subset_size=6, validation_size=0))["counts"]["calibration"] == 6
    zoo = tmp_path / "zoo" / "test_data_set_0"
    zoo.mkdir(parents=True)
    (zoo / "input_0.pb").write_bytes(onnx.numpy_helper.from_array(data[:1], "input").SerializeToString())
    out3 = tmp_path / "o3"
    out3.mkdir()
    build(tmp_path / "zoo", mlp, out3, _cfg(subset_size=1, validation_size=0))
    np.testing.assert_array_equal(next(iter_samples(out3))["input"], data[:1])


def test_text_with_transform_and_bad_transform(tmp_path, mlp, monkeypatch):
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": "ab" * i}) for i in range(1, 5)))
    (tmp_path / "tok.py").write_text(
        "import numpy as np\n"
        "def tok(x):\n    return {'input': np.full((1, 4), len(x['text']), np.float32)}\n"
        "def bad(x):\n    return {'wrong': np.zeros((1, 4), np.float32)}\n"
        "def boom(x):\n    raise RuntimeError('nope')\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    build(tmp_path / "t.jsonl", mlp, out, _cfg(subset_size=4, validation_size=0, transform="tok:tok"))
    assert sorted(int(s["input"][0, 0]) for s in iter_samples(out)) == [2, 4, 6, 8]
    with pytest.raises(InputError, match="wrong"):
        build(tmp_path / "t.jsonl", mlp, out, _cfg(validation_size=0, transform="tok:bad"))
    with pytest.raises(InputError, match="raised on item t.jsonl"):
        build(tmp_path / "t.jsonl", mlp, out, _cfg(validation_size=0, transform="tok:boom"))
    with pytest.raises(InputError, match="need data.transform"):
        build(tmp_path / "t.jsonl", mlp, out, _cfg(validation_size=0))
    assert not (out / "index.json").exists() and not (out / "calibration").exists()  # nothing half-written


def test_determinism_and_seed(tmp_path, mlp):
    np.save(tmp_path / "d.npy", np.arange(40, dtype=np.float32).reshape(10, 4))
    picks = []
    for i, seed in enumerate((1, 1, 2)):
        out = tmp_path / f"o{i}"
        out.mkdir()
        picks.append(build(tmp_path / "d.npy", mlp, out, _cfg(subset_size=4, validation_size=3, seed=seed))["sources"])
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_bad_inputs(tmp_path, mlp, conv):
    out = tmp_path / "o"
    out.mkdir()
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(InputError, match=r"wrong.npy.*'input'.*\[None, 4\]"):
        build(tmp_path / "wrong.npy", mlp, out, _cfg(validation_size=0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no usable items"):
        build(tmp_path / "empty", mlp, out, _cfg())
    imgs = tmp_path / "imgs"
    for i in range(9):
        _image(imgs / f"{i}.png", i)
    (imgs / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1"):
        idx = build(imgs, conv, out, _cfg(subset_size=20, validation_size=0, max_bad_fraction=0.2))
    assert idx["counts"]["calibration"] == 9 and idx["skipped"][0]["source"] == "broken.jpg"
    with pytest.raises(InputError, match="unreadable"), pytest.warns(UserWarning):
        build(imgs, conv, out, _cfg(subset_size=20, validation_size=0, max_bad_fraction=0.05))
    assert not (out / "index.json").exists()


def test_streaming_5000_samples_bounded_memory(tmp_path, mlp):
    m = builders.save(builders.mlp(features=1024), tmp_path / "big" / "model.onnx")
    data = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(5000, 1024))
    data[:] = 1.0
    del data
    out = tmp_path / "o"
    out.mkdir()
    tracemalloc.start()
    idx = build(tmp_path / "big.npy", m, out, _cfg(subset_size=4000, validation_size=1000, shard_max_mb=1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert idx["counts"] == {"calibration": 4000, "validation": 1000}  # 20 MB of samples in all
    assert peak < 10 * 1024 * 1024, peak  # measured ~6.3 MB; the samples total 20 MB
    assert read_index(out)["shards"]["calibration"] >= 15


def test_stratified_prefix_keeps_class_proportions():
    from ptqflow.data.selection import selection_order

    labels = [0] * 30 + [1] * 10
    for seed in range(5):
        order = selection_order(labels, seed)
        assert sorted(order) == list(range(40))
        first = [labels[i] for i in order[:8]]
        assert first.count(1) == 2  # 8 * 10/40
        rest = [labels[i] for i in order[8:16]]
        assert rest.count(1) == 2


def test_shorter_side_resize_crops_to_the_model_size():
    from ptqflow.config import PreprocessConfig
    from ptqflow.data.preprocess import preprocess_chain

    x = np.zeros((6, 12, 3), np.uint8)
    x[:, 3:9] = 200  # the central half of the width
    out = preprocess_chain(Image.fromarray(x), PreprocessConfig(resize_mode="shorter", scale=1.0), (6, 6))
    assert out.shape == (3, 6, 6) and (out == 200).all()


def test_transform_spec_errors(tmp_path, monkeypatch):
    from ptqflow.data.transform import load_transform
    from ptqflow.errors import ConfigError

    (tmp_path / "tfmod_x.py").write_text("VALUE = 1\ndef f(x):\n    return x\n")
    monkeypatch.chdir(tmp_path)
    assert load_transform("tfmod_x:f")(5) == 5
    for spec, msg in (("nocolon", "module:function"), ("tfmod_x:VALUE", "no callable"), ("no_such_mod_q:f", "cannot import")):
        with pytest.raises(ConfigError, match=msg):
            load_transform(spec)
