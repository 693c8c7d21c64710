"""Graph preparation before placement: loading and checking model files, the format constants, and prepare_model,
which runs the graph passes (``ptqflow.quantization.graph.passes``: opset upgrade, folding, shape inference)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ptqflow.config import AdvancedParameters
from ptqflow.errors import InputError
from ptqflow.runtime.model_files import PROTO_LIMIT, all_tensors, is_large  # noqa: F401  (the format constant and its test, here too)

log = logging.getLogger(__name__)

# Constants of the formats, defined here only (the algorithms, the API and the steps import them). The tuned
# thresholds of the algorithms are not here: they are fields of config.AdvancedParameters.
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear exist from opset 13
MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects the IR version onnx 1.23 writes by default


def load_model(model) -> onnx.ModelProto:
    """A ModelProto from a ModelProto, a path or serialized bytes; InputError naming the file when unreadable."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise InputError(f"model bytes are not a valid ONNX model: {exc}") from exc
    path = Path(model)
    proto = check_model_file(path)
    try:  # external data next to the file, checked above to stay inside its directory
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise InputError(f"model file {str(path)!r}: cannot read its external data: {exc}") from exc
    return proto


def check_model_file(path: Path, where: str | None = None) -> onnx.ModelProto:
    """The model at ``path`` without its external data, after checking that it parses, has nodes and that
    every external data file it names exists inside its directory; InputError naming ``where`` (default: the
    file) otherwise."""
    path = Path(path)
    where = where or f"model file {str(path)!r}"
    if not path.is_file():
        raise InputError(f"{where} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InputError(f"{where} is truncated or not an ONNX model: {exc}") from exc
    if not proto.graph.node:
        raise InputError(f"{where} holds no graph nodes (truncated or not an ONNX model)")
    external_data_files(proto, path.parent, where)
    return proto


def external_data_files(model: onnx.ModelProto, base: Path, where: str) -> set[str]:
    """Relative paths of the external data files ``model`` (whose file lies in ``base``) references.

    InputError naming ``where`` when a location is absolute, leads outside ``base`` (``../../etc/passwd``)
    or names a missing file: a model must not make ptqflow read other files than its own.
    """
    base = Path(base)
    files: set[str] = set()
    for t in all_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(base.resolve()):
            raise InputError(f"{where}: tensor {t.name!r} has external data location {loc!r} outside the model "
                             "directory; refusing to read it")
        if not target.is_file():
            raise InputError(f"{where}: tensor {t.name!r} needs external data file {loc!r}, which is missing")
        files.add(Path(loc).as_posix())
    return files


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs: graph inputs that no initializer backs, in graph order.

    Old exports (IR 3, where every initializer had to be listed as an input) list the weights as graph inputs
    too. onnxruntime treats those as weights with a default value; so does ptqflow: nothing feeds them.
    """
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version of ``model``."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def prepare_model(model, advanced: AdvancedParameters | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The FP32 model (a copy; ``model`` may be a ModelProto, a path or bytes) ready for placement, and the
    warnings raised on the way.

    The graph passes (``ptqflow.quantization.graph.passes.GRAPH_PASSES``) run in order, those switched off in
    ``advanced`` (default: AdvancedParameters()) skipped; each change is logged. Deterministic: collect-stats and
    quantize (two processes) prepare the same model the same way, so the tensor names in a saved plan match.
    """
    from ptqflow.quantization.graph.passes import run_graph_passes  # the passes import this module's helpers

    loaded = load_model(model)
    if loaded is model:  # the caller's ModelProto stays as it was
        proto = onnx.ModelProto()
        proto.CopyFrom(loaded)
    else:  # loaded here from a path or bytes: nobody else holds it, no copy needed (a model's size saved)
        proto = loaded
    proto, results = run_graph_passes(proto, advanced if advanced is not None else AdvancedParameters())
    warnings: list[str] = []
    for result in results:
        for change in result.changes:
            log.info("%s: %s", result.name, change)
        warnings += result.warnings
    return proto, warnings
