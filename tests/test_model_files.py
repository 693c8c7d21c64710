"""The one path for model files and sessions of models of any size (ptqflow.runtime.model_files, make_session).

Models over 2 GB take minutes to build and run (tests/test_large_model.py, slow); here the 2 GB limit is lowered
to 0 bytes instead, so tiny models take the large-model path: external data written without touching the
ModelProto, sessions from a temporary file in the scratch directory, shape inference on the skeleton.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from ptqflow.runtime import model_files
from ptqflow.runtime.model_files import is_large, model_nbytes, save_model, skeleton, tensor_nbytes
from ptqflow.runtime.sessions import make_session


@pytest.fixture
def no_limit(monkeypatch):
    """Every model counts as over protobuf's limit."""
    monkeypatch.setattr(model_files, "PROTO_LIMIT", 0)


def test_tensor_bytes_are_counted_from_dims_and_type():
    model = builders.conv_classifier()
    for t in model.graph.initializer:
        assert tensor_nbytes(t) == len(t.raw_data) or not t.HasField("raw_data")
    assert model_nbytes(model) == sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert not is_large(model)


def test_small_model_is_saved_as_onnx_saves_it(tmp_path):
    model = builders.conv_classifier()
    onnx.save(model, str(tmp_path / "a.onnx"))
    save_model(model, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert not (tmp_path / "b.onnx.data").exists()


def test_large_model_keeps_its_weights_beside_it_and_stays_unchanged(tmp_path, no_limit):
    model = builders.mlp(features=64, hidden=128)
    before = model.SerializeToString()
    path = save_model(model, tmp_path / "model.onnx")
    assert model.SerializeToString() == before  # onnx.save(save_as_external_data=True) would have emptied it
    header = onnx.load(str(path), load_external_data=False)
    external = [t for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(int(next(e.value for e in t.external_data if e.key == "offset")) % 65536 == 0
                            for t in external)
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    loaded = onnx.load(str(path))
    for a, b in zip(model.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_session_of_a_large_modelproto_goes_through_the_scratch_dir(tmp_path, no_limit, monkeypatch):
    from ptqflow.scratch import scratch_root

    model = builders.mlp(features=64, hidden=128)
    x = {"input": np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)}
    monkeypatch.setattr(model_files, "PROTO_LIMIT", 2**40)
    expected = make_session(model).run(None, x)  # from serialized bytes
    monkeypatch.setattr(model_files, "PROTO_LIMIT", 0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    made = []
    real = model_files.scratch_dir
    monkeypatch.setattr(model_files, "scratch_dir", lambda prefix: made.append(prefix) or real(prefix))
    with scratch_root(scratch):
        got = make_session(model).run(None, x)
    assert made and not list(scratch.iterdir())  # written there, removed once the session had read it
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_skeleton_holds_no_weight_bytes_and_infers_the_same_shapes(no_limit):
    from onnx import shape_inference

    from ptqflow.quantization.graph.passes.infer_shapes import InferShapes

    model = builders.conv_classifier()
    bare = skeleton(model)
    assert model_nbytes(bare) < 1024 * len(model.graph.initializer)
    expected = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inferred, _ = InferShapes().run(copy)  # the large-model path: inferred on the skeleton, written in place
    assert inferred.SerializeToString() == expected.SerializeToString()


def test_quantization_through_the_large_model_path_gives_the_same_model(monkeypatch):
    """Every session of the engine (statistics, bias correction, its guard) accepts a ModelProto over the limit:
    with the limit at 0 the INT8 model is byte-identical (graph preparation included: onnxruntime's optimizer
    fuses MatMul+Add into Gemm here, reading and writing the model with external data)."""
    from ptqflow.api import quantize_with_config
    from ptqflow.config import QuantizationConfig

    model = builders.mlp(features=64, hidden=128)  # weights over EXTERNAL_MIN_BYTES: they go to external data
    samples = builders.random_inputs(12, (64,))
    for fast in (True, False):
        config = QuantizationConfig(subset_size=12, fast_bias_correction=fast)
        config.advanced.statistics_runtime = "onnxruntime"
        expected = quantize_with_config(model, samples, config)
        monkeypatch.setattr(model_files, "PROTO_LIMIT", 0)
        got = quantize_with_config(model, samples, config)
        monkeypatch.setattr(model_files, "PROTO_LIMIT", 2**40)
        assert got.model.SerializeToString() == expected.model.SerializeToString()
        # the same measurements too: the guard's FP32 outputs taken first, the mixed-precision search's gated model
        # run from a file, the INT8 model set aside in a file while the search runs. The search runs one sample a
        # run, and onnxruntime's single-row Gemm of the gated model read from a file with external data sums in
        # another order than from memory: its measurements agree to float32 precision, not to the last bit.
        (got_shape, got_floats), (shape, floats) = _floats_apart(got.layers), _floats_apart(expected.layers)
        assert got_shape == shape and got_floats == pytest.approx(floats, rel=1e-4)


def _floats_apart(value, floats: list | None = None):
    """(``value`` (dicts, lists, numbers, strings) with each float replaced by None, its floats in order)."""
    floats = [] if floats is None else floats
    if isinstance(value, float):
        floats.append(value)
        return None, floats
    if isinstance(value, dict):
        return {k: _floats_apart(v, floats)[0] for k, v in value.items()}, floats
    if isinstance(value, (list, tuple)):
        return [_floats_apart(v, floats)[0] for v in value], floats
    return value, floats


def test_a_model_set_aside_comes_back_byte_identical(tmp_path):
    """SetAside writes the model to the scratch directory and reads it back equal field for field: data moved to
    the external file, a tensor already without data (copy_without) and data_location set or not."""
    from ptqflow.runtime.model_files import SetAside, copy_without

    model = builders.mlp(features=64, hidden=128)
    model.graph.initializer[0].data_location = onnx.TensorProto.DEFAULT  # as onnx.load leaves loaded tensors
    model = copy_without(model, {model.graph.initializer[1].name})
    expected = model.SerializeToString()
    with SetAside(model) as aside:
        del model
        back = aside.back()
        assert any(p.name.endswith(".data") for p in Path(aside._path).parent.iterdir())
    assert back.SerializeToString() == expected
    with SetAside(back, to_file=False) as aside:
        assert aside.back() is back


def test_fetch_model_lowers_the_ir_version_of_a_model_with_external_data(tmp_path, no_limit):
    from ptqflow.artifacts.manifest import read_manifest
    from ptqflow.cli import main

    model = builders.mlp(features=64, hidden=128)
    model.ir_version = 11
    (tmp_path / "src").mkdir()
    src = save_model(model, tmp_path / "src" / "model.onnx")
    assert (tmp_path / "src" / "model.onnx.data").is_file()
    out = tmp_path / "out"
    assert main(["fetch-model", "--model", str(src), "--out", str(out)]) == 0
    assert onnx.load(str(out / "model.onnx"), load_external_data=False).ir_version == 10
    assert read_manifest(out).extra["ir_version_original"] == 11
    fetched = onnx.load(str(out / "model.onnx"))
    for a, b in zip(model.graph.initializer, fetched.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
