"""TensorFlow SavedModels, Keras models and TFLite flatbuffers to ONNX, by tf2onnx (the ``tensorflow`` extra).

tf2onnx is the converter: it is maintained under the ONNX project, reads all three formats (a SavedModel's
signature or a Keras model as a traced ``tf.function``, a ``.tflite`` flatbuffer directly) and works with the
TensorFlow, numpy, protobuf and onnx versions ptqflow pins. Keras 3's own ``model.export(format="onnx")`` calls
tf2onnx too but reads neither SavedModels nor TFLite; tflite2onnx reads TFLite only (docs/frameworks.md
compares them).

What each converter does:

- SavedModel directory: the ``serving_default`` signature; input names, dtypes and shapes from it, output names
  from its keys; the reference is the loaded signature itself.
- Keras ``.keras`` and legacy HDF5 ``.h5``: ``keras.models.load_model(compile=False, safe_mode=True)`` (safe mode
  refuses to deserialize Python lambdas), traced as a ``tf.function`` over the model's inputs; the reference is
  the Keras model's own call.
- TFLite: tf2onnx reads the flatbuffer; the reference is the TFLite interpreter (ai-edge-litert's when installed,
  else ``tf.lite.Interpreter``). FP16 weights (TFLite ``Dequantize`` fp16 -> fp32) come out as FP32 initializers,
  so ptqflow quantizes from FP32; the batch stays as the flatbuffer's signature has it (mediapipe's are fixed
  at 1, TFLiteConverter's from a Keras model open).

Layouts stay as the source has them: a TensorFlow image model takes NHWC in ONNX too (tf2onnx transposes around
each convolution internally; OpenVINO and onnxruntime fuse those transposes), so the calibration data that fed
the TensorFlow model feeds the ONNX one unchanged.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ptqflow.errors import InputError
from ptqflow.frontends.base import (MODEL_FILE, Conversion, ConversionOptions, InputSpec, check_feeds, compare,
                                    lower_ir_version, require, resolve_specs, run_onnx, versions)

EXTRA = "tensorflow"
SIGNATURE = "serving_default"
_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx")


@dataclass
class _Source:
    """A loaded source model: its inputs, how to convert it, and how the framework itself runs it."""

    specs: list[InputSpec]
    convert: Callable[[list[InputSpec], ConversionOptions], onnx.ModelProto]  # tf2onnx, on the resolved inputs
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # output name -> array
    load_s: float
    notes: list[str]
    # The source's other float32 executions, each a run like ``run`` (TFLite: its builtin kernels beside the
    # XNNPACK delegate); the conversion check holds the converted model to the closest of them.
    also_run: tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], ...] = ()


def _frameworks(source_format: str):
    # TensorFlow's C++ INFO lines (oneDNN, CPU features) would flood fetch-model's log; warnings still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    tf = require("tensorflow", EXTRA, source_format)
    tf2onnx = require("tf2onnx", EXTRA, source_format)
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    return tf, tf2onnx


def _tensor_spec(tf, spec: InputSpec, options: ConversionOptions):
    shape = (None, *spec.shape[1:]) if options.dynamic_batch and spec.shape else spec.shape
    return tf.TensorSpec(shape, tf.as_dtype(spec.dtype), name=spec.name)


def _from_function(tf, tf2onnx, call: Callable, output_names: list[str]):
    """A converter tracing ``call(*inputs)`` (returning its outputs in ``output_names`` order) as a tf.function
    whose structured inputs and outputs carry the source's names, so the ONNX model keeps them."""

    def convert(resolved: list[InputSpec], options: ConversionOptions) -> onnx.ModelProto:
        signature = [_tensor_spec(tf, s, options) for s in resolved]

        @tf.function(input_signature=signature)
        def traced(*inputs):
            return dict(zip(output_names, call(*inputs), strict=True))

        proto, _ = tf2onnx.convert.from_function(traced, input_signature=signature, opset=options.opset)
        return proto

    return convert


def _numpy_outputs(outputs, output_names: list[str]) -> list:
    if isinstance(outputs, dict):
        return [outputs[n] for n in output_names]
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _load_saved_model(path: Path, uri: str) -> _Source:
    tf, tf2onnx = _frameworks("tf_saved_model")
    start = time.perf_counter()
    loaded = tf.saved_model.load(str(path))
    load_s = time.perf_counter() - start
    if SIGNATURE not in loaded.signatures:
        raise InputError(f"{uri}: the SavedModel has no {SIGNATURE!r} signature (it has "
                         f"{', '.join(loaded.signatures) or 'none'}); save it with one "
                         f"(tf.saved_model.save(obj, path, signatures=...) or keras model.export(path))")
    signature = loaded.signatures[SIGNATURE]
    inputs = signature.structured_input_signature[1]
    names = sorted(inputs)
    specs = [InputSpec(n, tuple(inputs[n].shape.as_list()), inputs[n].dtype.as_numpy_dtype.__name__)
             for n in names]
    output_names = sorted(signature.structured_outputs)

    def call(*tensors):  # through `loaded`, which owns the variables the signature reads
        outputs = loaded.signatures[SIGNATURE](**dict(zip(names, tensors)))
        return [outputs[n] for n in output_names]

    def run(feed):
        outputs = loaded.signatures[SIGNATURE](**{n: tf.constant(feed[n]) for n in names})
        return {n: outputs[n].numpy() for n in output_names}

    return _Source(specs, _from_function(tf, tf2onnx, call, output_names), run, load_s,
                   [f"signature {SIGNATURE!r}"])


def _load_keras(path: Path, uri: str) -> _Source:
    tf, tf2onnx = _frameworks("keras")
    keras = require("keras", EXTRA, "keras")
    start = time.perf_counter()
    try:
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except (ValueError, TypeError, OSError) as err:
        raise InputError(f"{uri}: Keras could not load the model: {err}") from None
    load_s = time.perf_counter() - start
    if not getattr(model, "inputs", None):
        raise InputError(f"{uri}: the Keras model has no defined inputs (a subclassed or unbuilt model); save a "
                         f"functional or built Sequential model, or a SavedModel with model.export(path)")
    specs = [InputSpec(t.name, tuple(t.shape), np.dtype(t.dtype).name) for t in model.inputs]
    output_names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])

    def call(*tensors):
        return _numpy_outputs(model(list(tensors) if len(tensors) > 1 else tensors[0], training=False),
                              output_names)

    def run(feed):
        outputs = call(*[feed[s.name] for s in specs])
        return {n: np.asarray(o) for n, o in zip(output_names, outputs, strict=True)}

    return _Source(specs, _from_function(tf, tf2onnx, call, output_names), run, load_s,
                   [f"keras {keras.__version__}"])


def _tflite_interpreter(tf, path: Path, builtin_kernels: bool = False):
    """The TFLite interpreter of ``path``: its default kernels (the XNNPACK delegate), or with ``builtin_kernels``
    TFLite's builtin kernels without the delegate (another float32 summation order of the same model)."""
    try:  # LiteRT is where the TFLite interpreter lives on; tf.lite.Interpreter is deprecated
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin_kernels else OpResolverType.AUTO
        return Interpreter(model_path=str(path), experimental_op_resolver_type=resolver), "ai-edge-litert"
    except ImportError:
        resolvers = tf.lite.experimental.OpResolverType
        resolver = resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin_kernels else resolvers.AUTO
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return (tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver),
                    "tf.lite.Interpreter")


def _tflite_runner(interpreter, specs: list[InputSpec]):
    """A run (feed -> output name -> array) on ``interpreter``, resizing its inputs to the feed's shapes."""
    inputs = interpreter.get_input_details()

    def run(feed):
        for d, spec in zip(inputs, specs):
            if tuple(feed[spec.name].shape) != tuple(d["shape"]):
                interpreter.resize_tensor_input(d["index"], list(feed[spec.name].shape))
        interpreter.allocate_tensors()
        for d, spec in zip(inputs, specs):
            interpreter.set_tensor(d["index"], feed[spec.name])
        interpreter.invoke()
        return {d["name"]: np.array(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()}

    interpreter.allocate_tensors()
    return run


def _load_tflite(path: Path, uri: str) -> _Source:
    tf, tf2onnx = _frameworks("tflite")
    start = time.perf_counter()
    try:
        interpreter, runtime = _tflite_interpreter(tf, path)
    except ValueError as err:
        raise InputError(f"{uri}: the TFLite interpreter could not read the model: {err}") from None
    load_s = time.perf_counter() - start
    inputs = interpreter.get_input_details()
    specs = [InputSpec(d["name"], tuple(None if int(n) < 0 else int(n) for n in d["shape_signature"]),
                       np.dtype(d["dtype"]).name) for d in inputs]
    fp16 = sum(1 for t in interpreter.get_tensor_details() if np.dtype(t["dtype"]) == np.float16)
    notes = [f"reference: {runtime} (the XNNPACK delegate and the builtin kernels, the closer of the two)",
             "TFLite: the batch is dynamic only where the flatbuffer's signature leaves it open"]
    if fp16:
        notes.append(f"{fp16} FP16 tensors in the source (weights dequantized to FP32 at run time); the ONNX "
                     f"model holds them as FP32")

    def convert(resolved: list[InputSpec], options: ConversionOptions) -> onnx.ModelProto:
        given = {s.name: list(s.shape) for s in resolved if s.name in options.input_shapes}
        proto, _ = tf2onnx.convert.from_tflite(str(path), opset=options.opset, shape_override=given or None)
        return proto

    builtin = _tflite_runner(_tflite_interpreter(tf, path, builtin_kernels=True)[0], specs)
    return _Source(specs, convert, _tflite_runner(interpreter, specs), load_s, notes, also_run=(builtin,))


def fold_fp16_constants(model: onnx.ModelProto) -> int:
    """``model`` (changed in place) with every ``Cast`` of an FP16 initializer to FP32 replaced by an FP32
    initializer, so quantization starts from FP32 weights; returns how many were folded."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source is not None and source.data_type == onnx.TensorProto.FLOAT16 and to == onnx.TensorProto.FLOAT:
            graph.initializer.append(numpy_helper.from_array(
                numpy_helper.to_array(source).astype(np.float32), node.output[0]))
            consumers[source.name] -= 1
            folded += 1
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    unused = [i for i in graph.initializer if consumers.get(i.name, 1) == 0]
    for initializer in unused:
        graph.initializer.remove(initializer)
    return folded


def name_batch_dimension(model: onnx.ModelProto, name: str = "N") -> None:
    """The symbolic first dimension of the inputs (tf2onnx names it ``unk__<n>``) renamed ``name`` wherever it
    appears, so the converted model reads like other ptqflow inputs (``["N", 16, 16, 3]``)."""
    graph = model.graph
    batch = {i.type.tensor_type.shape.dim[0].dim_param for i in graph.input
             if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param in batch:
                dim.dim_param = name


def _check_ops(model: onnx.ModelProto, uri: str) -> None:
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in _ONNX_DOMAINS})
    if foreign:
        raise InputError(f"{uri}: tf2onnx could not convert the operators {', '.join(foreign)} to ONNX; "
                         f"refusing the conversion")


def _convert(source_format: str, load: Callable[[Path, str], _Source], path: Path, out_dir: Path,
             options: ConversionOptions) -> Conversion:
    uri = str(path)
    source = load(path, uri)
    resolved = resolve_specs(source.specs, options, uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / MODEL_FILE
    start = time.perf_counter()
    try:
        proto = source.convert(resolved, options)
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as err:
        raise InputError(f"{uri}: tf2onnx could not convert the {source_format} model: "
                         f"{type(err).__name__}: {err}") from None
    folded = fold_fp16_constants(proto)
    name_batch_dimension(proto)
    export_s = time.perf_counter() - start
    _check_ops(proto, uri)
    notes = [*source.notes, f"source loaded in {source.load_s:.2f} s"]
    if folded:
        notes.append(f"{folded} FP16 constants folded to FP32")
    try:
        onnx.save(proto, str(onnx_path))
        notes += lower_ir_version(onnx_path)
        feeds, sample_source = check_feeds(resolved, options)
        references = [source.run(feed) for feed in feeds]
        names, converted = run_onnx(onnx_path, feeds)
        missing = [n for n in names if n not in references[0]]
        if missing:
            raise InputError(f"{uri}: the converted ONNX model's outputs {missing} are not among the source's "
                             f"({', '.join(references[0])}); refusing the conversion")
        others = [[[r[n] for n in names] for r in map(run, feeds)] for run in source.also_run]
        per_output = compare(names, [[r[n] for n in names] for r in references], converted, options.tolerance, uri,
                             others=others)
    except BaseException:
        onnx_path.unlink(missing_ok=True)  # a refused conversion leaves no model behind
        raise
    return Conversion(source_format=source_format, converter="tf2onnx",
                      versions=versions(*_DISTRIBUTIONS, "ai-edge-litert"), onnx_path=onnx_path,
                      max_rel_diff=max(per_output.values(), default=0.0), per_output=per_output,
                      tolerance=options.tolerance, samples_checked=len(feeds), sample_source=sample_source,
                      export_s=export_s, total_s=time.perf_counter() - start, notes=notes)


def convert_saved_model(path: Path, out_dir: Path, options: ConversionOptions) -> Conversion:
    """A SavedModel directory's ``serving_default`` signature as ``out_dir/model.onnx``, checked against the
    loaded SavedModel."""
    return _convert("tf_saved_model", _load_saved_model, Path(path), Path(out_dir), options)


def convert_keras(path: Path, out_dir: Path, options: ConversionOptions) -> Conversion:
    """A Keras ``.keras`` or HDF5 ``.h5`` model as ``out_dir/model.onnx``, checked against the Keras model."""
    return _convert("keras", _load_keras, Path(path), Path(out_dir), options)


def convert_tflite(path: Path, out_dir: Path, options: ConversionOptions) -> Conversion:
    """A ``.tflite`` flatbuffer as an FP32 ``out_dir/model.onnx`` (FP16 weights folded to FP32), checked against
    the TFLite interpreter."""
    return _convert("tflite", _load_tflite, Path(path), Path(out_dir), options)
