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


def convert(model_path: Path):
    """openvino.Model converted in memory from an ONNX file."""
    import openvino as ov

    return ov.convert_model(str(model_path))


def for_compile(c, model_path: Path):
    """The ov.Model of an ONNX file that is only to be compiled (timed, run), never saved.

    A model with external data (every model over 2 GB) is read by OpenVINO's ONNX frontend, which maps the
    weights from the data file: a 2.25 GiB model holds 2.6 GiB once compiled, against 4.8 GiB through
    convert_model, which keeps a converted copy besides the mapping. Other models go through ``convert``
    as before, so their timings and figures do not move (convert_model also folds what read_model leaves).
    """
    from ptqflow.runtime.model_files import has_external_data

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
