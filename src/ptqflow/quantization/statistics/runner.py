"""Runs the statistics model over the calibration batches, on onnxruntime or on OpenVINO's CPU plugin.

The statistics pass is one inference per calibration batch, and on CPU most of ptqflow's quantization time.
Models whose batch dim is fixed at 1 (PP-OCR det, many detectors) run one sample at a time, and one
onnxruntime session then leaves cores idle between its small ops; OpenVINO's CPU plugin runs the same ONNX
graph as two inference streams that share the weights, each sample on one stream, faster for little more memory
(evidence: docs/algorithms.md#the-statistics-pass).

``statistics_runtime`` chooses: ``onnxruntime`` always runs the session of ``device``; ``openvino`` runs OpenVINO
CPU and fails when it cannot; ``auto`` (default) takes OpenVINO for ``device="cpu"`` when it is installed and
compiles the statistics model, else onnxruntime, and logs which. Results are handed back in batch order,
so statistics do not depend on which stream finished first.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from ptqflow.errors import DeviceUnavailableError
from ptqflow.runtime.model_files import is_large, save_model
from ptqflow.scratch import scratch_dir

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "openvino")
# Streams (parallel inference requests) on OpenVINO: two fill two cores with batch-1 samples at about one
# onnxruntime session's memory (evidence: docs/algorithms.md#the-statistics-pass).
_OV_STREAMS = 2


class OnnxRuntimeRunner:
    """Sequential runs on an onnxruntime (or ptqflow.runtime.sessions) session."""

    def __init__(self, session, outputs: list[str]):
        self.session = session
        self.outputs = outputs

    def map(self, batches: Iterable[dict]) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        for batch in batches:
            values = self.session.run(self.outputs, batch["arrays"])
            yield dict(zip(self.outputs, values)), batch["count"]


class OpenVINORunner:
    """The statistics model compiled by OpenVINO for CPU at f32, run on ``_OV_STREAMS`` parallel requests."""

    def __init__(self, model, outputs: list[str]):
        """``model``: an onnx.ModelProto, or an ov.Model (an OpenVINO model's statistics model)."""
        from ptqflow.runtime import openvino as ov_helpers

        core = ov_helpers.core()
        ov_helpers.check_device(core, "CPU")
        if isinstance(model, onnx.ModelProto):
            # The ONNX frontend reads the model directly: convert_model's extra passes cost time (evidence:
            # docs/algorithms.md#the-statistics-pass).
            with scratch_dir("ptqflow-stats-") as tmp:
                path = os.path.join(tmp, "statistics.onnx")
                save_model(model, path)
                ov_model = core.read_model(path)
        else:
            ov_model = model
        # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise observe bf16 activations.
        self.compiled = core.compile_model(ov_model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "PERFORMANCE_HINT_NUM_REQUESTS": _OV_STREAMS,
        })
        ports = {}
        for i, port in enumerate(self.compiled.outputs):
            for n in port.get_names():
                ports.setdefault(n, i)
        missing = [o for o in outputs if o not in ports]
        if missing:
            raise RuntimeError(f"OpenVINO lost statistics output(s) {', '.join(missing[:3])}")
        self.outputs = outputs
        self.ports = [ports[o] for o in outputs]
        self.requests = max(1, min(_OV_STREAMS, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))))

    def map(self, batches: Iterable[dict]) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        # Plain infer requests used round-robin, no completion callbacks: the oldest request is waited for
        # before its slot takes the next batch, so results come back in batch order, and no OpenVINO thread
        # ever calls into Python (a Python callback on AsyncInferQueue aborted the process when onnxruntime
        # created a session right after the pass).
        free = deque(self.compiled.create_infer_request() for _ in range(self.requests))
        pending: deque = deque()
        try:
            for batch in batches:
                if not free:
                    request, count = pending.popleft()
                    request.wait()
                    yield self._values(request), count
                    free.append(request)
                request = free.popleft()
                request.start_async(batch["arrays"])  # inputs copied into the request's own tensors
                pending.append((request, batch["count"]))
            while pending:
                request, count = pending.popleft()
                request.wait()
                yield self._values(request), count
        finally:
            for request, _ in pending:
                request.wait()

    def _values(self, request) -> dict[str, np.ndarray]:
        return {o: np.array(request.get_output_tensor(p).data, copy=True) for o, p in zip(self.outputs, self.ports)}


def make_runner(model: onnx.ModelProto | Path, outputs: list[str], device: str, runtime: str, session_factory):
    """The runner for the statistics pass; ``session_factory(model, device)`` makes onnxruntime's session.
    ``model``: a ModelProto, or a model file (a model over 2 GB, with external data), which runs on onnxruntime."""
    device = str(getattr(device, "value", device)).lower()
    runtime = str(getattr(runtime, "value", runtime)).lower()
    if runtime not in RUNTIMES:
        raise ValueError(f"statistics_runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if not isinstance(model, onnx.ModelProto) or is_large(model):
        # over 2 GB (as a ModelProto, or a file with external data): onnxruntime's session handles the external data
        runtime = "onnxruntime"
    if runtime == "openvino" or (runtime == "auto" and device == "cpu"):
        if runtime == "openvino" and device != "cpu":
            raise DeviceUnavailableError(f"statistics_runtime 'openvino' runs on CPU only; device is {device!r}")
        try:
            runner = OpenVINORunner(model, outputs)
            log.info("statistics pass on OpenVINO CPU (f32, %d streams)", runner.requests)
            return runner
        except Exception as err:
            if runtime == "openvino":
                raise DeviceUnavailableError(f"statistics_runtime 'openvino' is not usable: {type(err).__name__}: "
                                             f"{str(err)[:300]}") from err
            log.info("statistics pass on onnxruntime (OpenVINO not usable: %s)", str(err).splitlines()[0][:200]
                     if str(err) else type(err).__name__)
    return OnnxRuntimeRunner(session_factory(model, device), outputs)
