"""OpenVINO helpers: device checks, in-memory conversion of ONNX models, compilation with precision hints."""

from __future__ import annotations

from pathlib import Path

from ptqflow.errors import DeviceUnavailableError


def core():
    """A fresh openvino.Core."""
    import openvino as ov

    return ov.Core()


def check_device(c, device: str) -> None:
    """DeviceUnavailableError naming the available devices when ``device`` (e.g. "GPU", "GPU.1") is absent."""
    available = list(c.available_devices)
    base = device.split(".")[0].split(":")[0]
    if device in ("AUTO",) or any(d == device or d.split(".")[0] == base for d in available):
        return
    raise DeviceUnavailableError(f"OpenVINO device {device!r} is not present; available: {', '.join(available)}")


def is_ir(model_path) -> bool:
    """True for the path of an OpenVINO IR (``.xml``)."""
    return str(model_path).lower().endswith(".xml")


def convert(model_path: Path):
    """openvino.Model converted in memory from an ONNX file, or read from an IR (``.xml``, see read_ir)."""
    import openvino as ov

    return read_ir(model_path) if is_ir(model_path) else ov.convert_model(str(model_path))


def compress_weights(model) -> None:
    """Store ``model``'s FakeQuantize-on-constant weights as int8 constants with their scales (Convert, Multiply),
    in place: POT's compress_model_weights, OpenVINO's own transformation. The values computed do not change."""
    from openvino._offline_transformations import compress_quantize_weights_transformation

    compress_quantize_weights_transformation(model)


def ir_io(model) -> tuple[list[dict], list[dict]]:
    """([{name, shape, dtype}] of the inputs, the same of the outputs) of an ov.Model: dynamic dims None, the
    name the port's first tensor name (its node's friendly name when it has none)."""
    def describe(port) -> dict:
        shape = port.get_partial_shape()
        dims = None if shape.rank.is_dynamic else [d.get_length() if d.is_static else None for d in shape]
        try:
            dtype = port.get_element_type().to_dtype().name
        except Exception:  # dynamic element type
            dtype = None
        names = sorted(port.get_names())
        return {"name": names[0] if names else port.get_node().get_friendly_name(), "shape": dims, "dtype": dtype}

    return [describe(p) for p in model.inputs], [describe(p) for p in model.outputs]


def for_compile(c, model_path: Path):
    """The ov.Model of an ONNX file that is only to be compiled (timed, run), never saved.

    A model with external data (every model over 2 GB) is read by OpenVINO's ONNX frontend, which maps the
    weights from the data file: a 2.25 GiB model holds 2.6 GiB once compiled, against 4.8 GiB through
    convert_model, which keeps a converted copy besides the mapping. Other models go through ``convert``
    as before, so their timings and figures do not move (convert_model also folds what read_model leaves).
    """
    from ptqflow.runtime.model_files import has_external_data

    if is_ir(model_path):
        return read_ir(model_path)
    return c.read_model(str(model_path)) if has_external_data(model_path) else convert(model_path)


def compile_model(c, model, device: str, precision: str | None = None):
    """Compiled model on ``device``; ``precision`` sets INFERENCE_PRECISION_HINT (e.g. "f32") when given."""
    check_device(c, device)
    cfg = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    return c.compile_model(model, device, cfg)


def default_precision(c, device: str) -> str | None:
    """The precision ``device`` runs FP32 models at without a hint ("f32", "bf16", "f16"), or None when the
    device does not say."""
    try:
        value = c.get_property(device, "INFERENCE_PRECISION_HINT")
    except Exception:  # a plugin without the property: nothing to compare against
        return None
    return value.to_string() if hasattr(value, "to_string") else str(value)


def read_ir(xml, weights=None):
    """The ov.Model of the IR ``xml`` with its weights ``weights`` (default: the ``.bin`` beside it).

    InputError naming the file when the xml or the bin is missing, the xml is not an IR or the bin does not hold
    what the xml says (a truncated file)."""
    from ptqflow.errors import InputError

    xml = Path(xml)
    bin_path = Path(weights) if weights is not None else xml.with_suffix(".bin")
    if not xml.is_file():
        raise InputError(f"OpenVINO IR {str(xml)!r} not found")
    if not bin_path.is_file():
        raise InputError(f"OpenVINO IR {str(xml)!r}: its weights file {str(bin_path)!r} is not found; put the .bin "
                         "beside the .xml or give its path")
    try:
        return core().read_model(str(xml), str(bin_path))
    except Exception as err:  # OpenVINO raises a bare RuntimeError for every parse failure
        detail = str(err).strip().splitlines()
        raise InputError(f"OpenVINO IR {str(xml)!r} (weights {str(bin_path)!r}) cannot be read: "
                         f"{(detail[0] if detail else type(err).__name__)[:300]}") from None
