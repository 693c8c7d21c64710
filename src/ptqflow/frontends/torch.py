"""PyTorch models to ONNX: TorchScript archives (``torch.jit.save``), torch.export programs (``torch.export.save``,
``.pt2``) and, through the Python API, ``torch.nn.Module`` objects.

The export is ``torch.onnx.export``: the dynamo exporter (torch.export, then onnxscript) where it works, the
TorchScript exporter as the fallback (``conversion.exporter``: auto, dynamo or torchscript; the manifest's notes
say why the fallback was taken). A TorchScript archive records no input shapes, so ``conversion.input_shapes``
gives them; a ``.pt2`` program keeps its inputs' shapes and dtypes, its open dimensions included. Nothing is
unpickled here: ``torch.jit.load`` and ``torch.export.load`` read their own archive formats.

The converted model gets a dynamic first axis on every input (``dynamic_batch``), the requested opset, an IR
version onnxruntime accepts, and its weights in an external data file when they are over protobuf's 2 GB limit.
The check runs the source module and onnxruntime on the same inputs (base.check_feeds, base.compare).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import time
import warnings
from itertools import chain, islice
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from ptqflow.errors import ConfigError, InputError
from ptqflow.frontends.base import (MODEL_FILE, Conversion, ConversionOptions, InputSpec, check_feeds, compare,
                                    lower_ir_version, require, resolve_specs, run_onnx, versions)
from ptqflow.logs import get_logger
from ptqflow.runtime.model_files import PROTO_LIMIT
from ptqflow.scratch import scratch_dir

EXTRA = "torch"
DISTRIBUTIONS = ("torch", "onnxscript")
log = get_logger("frontends.torch")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours its exporter's messages


def _torch(source_format: str):
    return require("torch", EXTRA, source_format)


def convert_torchscript(path: Path, out_dir: Path, options: ConversionOptions) -> Conversion:
    """Convert a TorchScript archive; its inputs' shapes come from ``conversion.input_shapes`` (ConfigError naming
    the field and the inputs when one is missing)."""
    start = time.monotonic()
    torch = _torch("torchscript")
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # torch raises RuntimeError for anything it cannot read
        raise InputError(f"{path.name}: torch.jit.load cannot read the TorchScript archive: {err}") from None
    arguments = module.forward.schema.arguments[1:]  # the first is the module itself
    missing = [a.name for a in arguments if a.name not in options.input_shapes]
    if missing:
        raise ConfigError(f"{path.name}: a TorchScript model does not record its input shapes; give them in "
                          f"conversion.input_shapes (missing: {', '.join(missing)}), e.g. "
                          f"{{{missing[0]!r}: [1, 3, 224, 224]}}")
    specs = resolve_specs([InputSpec(a.name, tuple(options.input_shapes[a.name])) for a in arguments], options,
                          path.name)
    return export_and_check(module, specs, out_dir, options, path.name, "torchscript", start)


def convert_exported_program(path: Path, out_dir: Path, options: ConversionOptions) -> Conversion:
    """Convert a torch.export program (``.pt2``): its user inputs' names, shapes and dtypes come from the program
    (``conversion.input_shapes`` fixes dimensions it leaves open)."""
    start = time.monotonic()
    torch = _torch("torch_export")
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise InputError(f"{path.name}: torch.export.load cannot read the program: {err}") from None
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path.name}: input {node.name!r} of the program is not a tensor "
                             f"({type(value).__name__}); ptqflow converts programs over tensor inputs only")
        shape = tuple(int(d) if isinstance(d, int) else None for d in value.shape)  # SymInt: an open dimension
        specs.append(InputSpec(node.name, shape, str(value.dtype).removeprefix("torch.")))
    static = [s.name for s in specs if s.shape and s.shape[0] is not None]
    notes = [f"the program's batch dimension is static for {', '.join(static)}: the ONNX model keeps it (export "
             f"with torch.export.export(..., dynamic_shapes=...) for a dynamic batch)"] if (
        static and options.dynamic_batch) else []
    specs = resolve_specs(specs, options, path.name)
    return export_and_check(program, specs, out_dir, options, path.name, "torch_export", start, notes)


def convert_module(module, example_inputs, out_dir: Path, options: ConversionOptions) -> Conversion:
    """Convert a ``torch.nn.Module`` (the Python API): ``example_inputs`` is a tensor, a tuple of tensors (the
    forward's positional arguments) or a dict of them by argument name; their shapes are the inputs' shapes."""
    start = time.monotonic()
    torch = _torch("torch.nn.Module")
    examples = _named_examples(module, example_inputs, torch)
    specs = [InputSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in examples.items()]
    specs = resolve_specs(specs, options, type(module).__name__)
    return export_and_check(module.eval(), specs, out_dir, options, type(module).__name__, "torch_module", start)


def _named_examples(module, example_inputs, torch) -> dict:
    if example_inputs is None:
        raise ConfigError(f"quantizing a torch.nn.Module ({type(module).__name__}) needs example_inputs: a tensor, "
                          "a tuple of tensors (forward's positional arguments) or a dict by argument name")
    if isinstance(example_inputs, dict):
        named = dict(example_inputs)
    else:
        values = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(values) > len(params):
            raise ConfigError(f"example_inputs has {len(values)} values but {type(module).__name__}.forward takes "
                              f"{len(params)} positional arguments ({', '.join(params)})")
        named = dict(zip(params, values))
    for name, value in named.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            raise ConfigError(f"example_inputs {name!r} is a {type(value).__name__}; give tensors or arrays")
    return {name: torch.as_tensor(value) for name, value in named.items()}


# --------------------------------------------------------------------------------------------------
# Export, then check
# --------------------------------------------------------------------------------------------------


def export_and_check(source, specs: list[InputSpec], out_dir: Path, options: ConversionOptions, uri: str,
                     source_format: str, start: float, notes: list[str] | None = None) -> Conversion:
    """Export ``source`` (a ScriptModule, ExportedProgram or nn.Module) to ``out_dir/model.onnx`` and check it
    against ``source`` on the check feeds; returns the Conversion record."""
    torch = _torch(source_format)
    feeds, sample_source = check_feeds(specs, options)
    names = [s.name for s in specs]
    runnable = source.module() if isinstance(source, torch.export.ExportedProgram) else source
    with torch.no_grad():
        reference = [_flatten(runnable(*[torch.from_numpy(np.ascontiguousarray(f[n])) for n in names]))
                     for f in feeds]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / MODEL_FILE
    large = _weight_bytes(source, torch) > PROTO_LIMIT
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[0][n])) for n in names)
    converter, export_s, export_notes = _export(source, args, names, len(reference[0]), onnx_path, large, options,
                                                uri, torch)
    notes = [*(notes or []), *export_notes, *lower_ir_version(onnx_path)]
    output_names, converted = run_onnx(onnx_path, feeds)
    per_output = compare(output_names, reference, converted, options.tolerance, uri)
    return Conversion(
        source_format=source_format, converter=converter, versions=versions(*DISTRIBUTIONS), onnx_path=onnx_path,
        max_rel_diff=max(per_output.values(), default=0.0), per_output=per_output, tolerance=options.tolerance,
        samples_checked=len(feeds), sample_source=sample_source, export_s=round(export_s, 3),
        total_s=round(time.monotonic() - start, 3), notes=notes)


def _export(source, args, names, n_outputs, onnx_path, large, options, uri, torch) -> tuple[str, float, list[str]]:
    """Run the configured exporter(s); returns the converter's name, the successful export call's seconds and
    the notes (why the fallback was taken)."""
    if options.exporter not in ("auto", "dynamo", "torchscript"):
        raise ConfigError(f"conversion.exporter {options.exporter!r}: expected auto, dynamo or torchscript")
    notes: list[str] = []
    if options.exporter == "auto" and isinstance(source, torch.jit.ScriptModule):
        notes.append("a TorchScript module goes to the TorchScript exporter (torch.export, the dynamo exporter's "
                     "first step, cannot trace a ScriptModule)")
    elif options.exporter in ("auto", "dynamo"):
        began = time.monotonic()
        try:
            _export_dynamo(source, args, names, onnx_path, large, options, torch)
            return "torch.onnx.export (dynamo)", time.monotonic() - began, notes
        except Exception as err:  # torch.export and the ONNX translation raise many types; all mean "not here"
            reason = _first_line(err)
            if options.exporter == "dynamo":
                raise InputError(f"{uri}: the dynamo exporter (conversion.exporter = dynamo) failed: {reason}; "
                                 f"try conversion.exporter: torchscript") from None
            notes.append(f"the dynamo exporter failed after {time.monotonic() - began:.2f} s "
                         f"({type(err).__name__}: {reason}); exported with the TorchScript exporter instead")
            log.info("conversion: %s", notes[-1])
    if isinstance(source, torch.export.ExportedProgram):
        source = source.module()  # the TorchScript exporter traces the program's module
    began = time.monotonic()
    try:
        _export_torchscript(source, args, names, n_outputs, onnx_path, options, torch)
    except Exception as err:
        raise InputError(f"{uri}: the TorchScript exporter failed: {_first_line(err)}") from None
    return "torch.onnx.export (torchscript)", time.monotonic() - began, notes


def _export_dynamo(source, args, names, onnx_path, large, options, torch) -> None:
    kwargs: dict = {"args": args}
    if isinstance(source, torch.export.ExportedProgram):
        kwargs["args"] = ()  # a program brings its example inputs and keeps the dynamism it was exported with
    elif options.dynamic_batch:
        batch = torch.export.Dim("batch")
        kwargs["dynamic_shapes"] = tuple({0: batch} for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(source, f=None, dynamo=True, input_names=names, opset_version=options.opset,
                                    verbose=False, **kwargs)
    program.save(str(onnx_path), external_data=large)


def _export_torchscript(source, args, names, n_outputs, onnx_path, options, torch) -> None:
    output_names = [f"output_{i}" for i in range(n_outputs)]
    dynamic_axes = ({n: {0: "batch"} for n in (*names, *output_names)} if options.dynamic_batch else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(source, args, str(onnx_path), dynamo=False, input_names=names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=options.opset)


def _weight_bytes(source, torch) -> int:
    state = source.state_dict if isinstance(source, torch.export.ExportedProgram) else source.state_dict()
    constants = getattr(source, "constants", None) or {}
    return sum(t.nbytes for t in (*state.values(), *constants.values()) if isinstance(t, torch.Tensor))


def _flatten(output) -> list[np.ndarray]:
    """A module's output as a flat list of arrays, in the order the exporters write the ONNX outputs."""
    if isinstance(output, dict):
        return [a for value in output.values() for a in _flatten(value)]
    if isinstance(output, (tuple, list)):
        return [a for value in output for a in _flatten(value)]
    if hasattr(output, "detach"):
        return [output.detach().cpu().numpy()]
    return [np.asarray(output)]


def _first_line(err: BaseException) -> str:
    """The error's first line, and its cause's (torch wraps the reason in an error naming the exporter's step)."""
    def line(e: BaseException) -> str:
        text = _ANSI.sub("", str(e)).strip().splitlines()
        return (text[0] if text else type(e).__name__)[:300]

    cause = err.__cause__
    return line(err) + (f" [{type(cause).__name__}: {line(cause)}]" if cause is not None else "")


# --------------------------------------------------------------------------------------------------
# The Python API: an nn.Module and its calibration data
# --------------------------------------------------------------------------------------------------


def module_to_onnx(module, example_inputs, items: Iterator, options: ConversionOptions
                   ) -> tuple[onnx.ModelProto, Conversion, Iterator[dict[str, np.ndarray]]]:
    """Export ``module`` and check the export on the first ``options.check_samples`` of ``items`` (the calibration
    samples: dicts by input name, tuples in input order or bare tensors/arrays). Returns the FP32 ONNX ModelProto
    (weights loaded), the Conversion, and the calibration samples again from the first, as dicts of arrays."""
    torch = _torch("torch.nn.Module")
    names = list(_named_examples(module, example_inputs, torch))
    items = iter(items)
    head = [_as_arrays(item, names, i) for i, item in enumerate(islice(items, options.check_samples))]
    samples = chain(head, (_as_arrays(item, names, i) for i, item in enumerate(items, start=len(head))))
    with scratch_dir("ptqflow-torch-") as tmp:
        conversion = convert_module(module, example_inputs, Path(tmp),
                                    dataclasses.replace(options, samples=tuple(head) or None))
        model = onnx.load(str(conversion.onnx_path))  # external data, if any, is read before tmp goes
    log.info("converted %s (%s): max relative difference %.3g on %d calibration samples", type(module).__name__,
             conversion.converter, conversion.max_rel_diff, conversion.samples_checked)
    return model, conversion, samples


def _as_arrays(item, names: list[str], index: int) -> dict[str, np.ndarray]:
    if isinstance(item, dict):
        named = item
    elif isinstance(item, (tuple, list)) and len(item) == len(names):
        named = dict(zip(names, item))
    elif len(names) == 1:
        named = {names[0]: item}
    else:
        raise InputError(f"calibration sample {index}: expected a dict by input name or a tuple of {len(names)} "
                         f"values ({', '.join(names)}), got {type(item).__name__}")
    return {name: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            for name, value in named.items()}
