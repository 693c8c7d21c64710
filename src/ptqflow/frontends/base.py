"""What every frontend shares: the options of a conversion, its record, the inputs it is checked on, and the
check itself (source framework vs onnxruntime on the same inputs)."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ptqflow.errors import ConfigError, InputError
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION

MODEL_FILE = "model.onnx"  # what a converter writes into its out_dir (with external data beside it when large)


@dataclass(frozen=True)
class ConversionOptions:
    """How to convert and check (the config's ``conversion`` section; :func:`options_from_config`).

    ``input_shapes``/``input_dtypes`` give the inputs of a source format that does not record them (TorchScript),
    or fix dimensions it leaves open; a dimension left open elsewhere than the batch axis without a shape given is
    an error naming the input. ``check_samples`` inputs drawn with ``seed`` (or ``samples``, when the caller has
    real ones: the Python API passes calibration samples) go through the source framework and onnxruntime;
    the largest relative difference over the outputs must stay within ``tolerance``."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_dtypes: dict[str, str] = field(default_factory=dict)
    tolerance: float = 1e-3
    check_samples: int = 4
    seed: int = 0
    opset: int | None = None  # None: the converter's default
    dynamic_batch: bool = True
    exporter: str = "auto"  # torch: "auto" (dynamo, then TorchScript), "dynamo" or "torchscript"
    samples: tuple[dict[str, np.ndarray], ...] | None = None  # real inputs for the check, when the caller has them


@dataclass(frozen=True)
class InputSpec:
    """One input of the source model: its name, shape (None for a dimension the source leaves open) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


@dataclass
class Conversion:
    """The outcome of one conversion, recorded in fetch-model's manifest as ``conversion``."""

    source_format: str
    converter: str  # e.g. "torch.onnx.export (dynamo)", "tf2onnx"
    versions: dict[str, str]  # framework, converter, onnx, onnxruntime
    onnx_path: Path
    max_rel_diff: float  # over every output and check sample
    per_output: dict[str, float]  # output name -> largest relative difference
    tolerance: float
    samples_checked: int
    sample_source: str  # "synthetic (seed N)" or "given"
    export_s: float  # the framework's own export call
    total_s: float  # export + check
    notes: list[str] = field(default_factory=list)  # e.g. why the fallback exporter was used

    def record(self) -> dict:
        """The manifest's ``conversion`` entry (JSON-ready)."""
        record = asdict(self)
        record["onnx_path"] = self.onnx_path.name
        return record


def require(module: str, extra: str, source_format: str):
    """Import ``module`` or raise a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"a {source_format} model needs {module.split('.')[0]}, which is not installed "
            f"(pip install 'ptqflow[{extra}]'): {err}") from None


def versions(*distributions: str) -> dict[str, str]:
    """Installed versions of ``distributions`` plus onnx and onnxruntime (absent ones are left out)."""
    found = {}
    for name in (*distributions, "onnx", "onnxruntime"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def resolve_specs(specs: list[InputSpec], options: ConversionOptions, uri: str) -> list[InputSpec]:
    """``specs`` with ``conversion.input_shapes``/``input_dtypes`` applied and every dimension known: an open
    first dimension (the batch) becomes 1, any other open one is an InputError naming the input. A name in
    ``input_shapes`` that matches no input is a ConfigError naming it."""
    names = {s.name for s in specs}
    for given in (*options.input_shapes, *options.input_dtypes):
        if given not in names:
            raise ConfigError(f"conversion.input_shapes/input_dtypes name {given!r}, which is not an input of {uri} "
                              f"(inputs: {', '.join(sorted(names)) or 'none'})")
    resolved = []
    for spec in specs:
        shape = tuple(options.input_shapes.get(spec.name, spec.shape))
        dtype = options.input_dtypes.get(spec.name, spec.dtype)
        if shape and shape[0] is None:
            shape = (1, *shape[1:])
        if any(d is None or (isinstance(d, int) and d < 0) for d in shape):
            raise InputError(f"{uri}: input {spec.name!r} has open dimensions {list(spec.shape)}; give its shape in "
                             f"conversion.input_shapes, e.g. {{{spec.name!r}: [1, 3, 224, 224]}}")
        resolved.append(InputSpec(spec.name, tuple(int(d) for d in shape), str(np.dtype(dtype))))
    return resolved


def check_feeds(specs: list[InputSpec], options: ConversionOptions) -> tuple[list[dict[str, np.ndarray]], str]:
    """The inputs the conversion is checked on, and where they came from: ``options.samples`` when given, else
    ``check_samples`` draws (standard normal for floats, small non-negative integers for integer inputs, False/True
    for booleans) from a generator seeded with ``options.seed``."""
    if options.samples:
        return [dict(s) for s in options.samples[: max(1, options.check_samples)]], "given"
    rng = np.random.default_rng(options.seed)
    feeds = []
    for _ in range(options.check_samples):
        feed = {}
        for spec in specs:
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                feed[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
            elif dtype.kind == "b":
                feed[spec.name] = rng.integers(0, 2, spec.shape).astype(bool)
            else:
                feed[spec.name] = rng.integers(0, 8, spec.shape).astype(dtype)
        feeds.append(feed)
    return feeds, f"synthetic (seed {options.seed})"


ROUNDING_FLOOR = float(np.finfo(np.float32).eps)  # 1.19e-7: float32's resolution at 1


def relative_difference(reference: np.ndarray, converted: np.ndarray) -> float:
    """max |reference - converted| / max |reference| (the output's own scale; 0 when both are all zeros). An
    element-wise relative error would blow up at the outputs' zeros, which say nothing about the conversion.
    A difference within float32's resolution at 1 (``ROUNDING_FLOOR``) counts as none: an output whose values
    are all near zero (a saturated probability, 3.7e-8 in TFLite, 0 from onnxruntime's sigmoid) would
    otherwise read as 100% different."""
    reference = np.asarray(reference, dtype=np.float64)
    converted = np.asarray(converted, dtype=np.float64)
    if reference.shape != converted.shape:
        return float("inf")
    diff = float(np.max(np.abs(reference - converted), initial=0.0))
    scale = float(np.max(np.abs(reference), initial=0.0))
    if diff <= ROUNDING_FLOOR:
        return 0.0
    return diff / scale if scale > 0 else float("inf")


def compare(output_names: list[str], reference: list[list[np.ndarray]], converted: list[list[np.ndarray]],
            tolerance: float, uri: str, others: list[list[list[np.ndarray]]] = ()) -> dict[str, float]:
    """Per output, the largest relative difference over the samples; InputError naming the output and the
    tolerance when one exceeds ``tolerance`` (or the outputs' count or shapes differ).

    ``others`` are the source's other float32 executions of the same samples (another kernel set, e.g. TFLite's
    builtin kernels beside XNNPACK), laid out as ``reference``. Two float32 executions of one model sum in
    different orders and differ by their rounding, which grows with the output's depth and magnitude (a
    segmentation map of logits in the thousands); per sample and output the converted model is held to the
    closest of the source's executions, so a difference the source has with itself is not charged to the
    conversion, while a wrong conversion is far from all of them."""
    per_output = {name: 0.0 for name in output_names}
    for k, (ref_sample, conv_sample) in enumerate(zip(reference, converted, strict=True)):
        if len(ref_sample) != len(conv_sample):
            raise InputError(f"{uri}: the converted ONNX model has {len(conv_sample)} outputs, the source "
                             f"{len(ref_sample)}; refusing the conversion")
        for j, (name, ref, conv) in enumerate(zip(output_names, ref_sample, conv_sample)):
            if np.shape(ref) != np.shape(conv):
                raise InputError(f"{uri}: output {name!r} has shape {list(np.shape(conv))} in the converted ONNX "
                                 f"model but {list(np.shape(ref))} in the source; refusing the conversion")
            diff = min([relative_difference(ref, conv)] + [relative_difference(o[k][j], conv) for o in others])
            per_output[name] = max(per_output[name], diff)
    worst = max(per_output, key=per_output.get, default=None)
    if worst is not None and not per_output[worst] <= tolerance:
        raise InputError(f"{uri}: the converted ONNX model's output {worst!r} differs from the source framework's by "
                         f"{per_output[worst]:.3g} (max relative difference), above conversion.tolerance = "
                         f"{tolerance:g}; refusing the conversion")
    return per_output


def lower_ir_version(onnx_path: Path) -> list[str]:
    """Lower a converted model's IR version to MAX_IR_VERSION (onnxruntime's limit) when its converter wrote a
    newer one, so that the check (and everything after fetch-model) can load it; only the graph file is rewritten,
    external data files keep their bytes. Returns the note saying so, if it did."""
    proto = onnx.load(str(onnx_path), load_external_data=False)
    if proto.ir_version <= MAX_IR_VERSION:
        return []
    original, proto.ir_version = proto.ir_version, MAX_IR_VERSION
    onnx.save(proto, str(onnx_path))
    return [f"IR version {original} lowered to {MAX_IR_VERSION} for onnxruntime"]


def run_onnx(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> tuple[list[str], list[list[np.ndarray]]]:
    """The converted model's output names and its outputs on ``feeds`` (onnxruntime, CPU)."""
    from ptqflow.runtime.sessions import make_session

    session = make_session(Path(onnx_path))
    names = [o.name for o in session.get_outputs()]
    return names, [session.run(None, feed) for feed in feeds]


def options_from_config(section) -> ConversionOptions:
    """ConversionOptions from the config's ``conversion`` section (a ConversionConfig)."""
    return ConversionOptions(
        input_shapes={k: tuple(v) for k, v in section.input_shapes.items()},
        input_dtypes=dict(section.input_dtypes), tolerance=section.tolerance, check_samples=section.check_samples,
        seed=0, opset=section.opset, dynamic_batch=section.dynamic_batch, exporter=section.exporter)
