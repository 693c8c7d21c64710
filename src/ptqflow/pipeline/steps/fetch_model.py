"""fetch-model: bring the FP32 model named by ``cfg.model`` into an artifact directory.

Sources: a path, ``file://``, ``s3://``, ``https://`` (size-limited download), or a registered model version
``models:/<name>/<version>`` / ``models:/<name>@<alias>`` (MLflow; the version's artifacts must hold exactly
one ``.onnx``, and the registry, name, version and source run are recorded). Accepted forms: a single
``.onnx``, an ``.onnx`` with external data files beside it (or a directory holding one), or a ``.zip`` /
``.tar.gz`` holding either. Archive members that would land outside the extraction directory, links and
device files are refused. The model is checked with ``onnx.checker`` (by path, so models over 2 GB work)
and its inputs, outputs, opset and sha256 are recorded in the manifest. In a local model directory,
ptqflow's own artifacts (an ``--output`` inside it) are neither searched nor part of the cache key.

A PyTorch (TorchScript ``.pt``, torch.export ``.pt2``), TensorFlow SavedModel, Keras (``.keras``/``.h5``) or
TFLite model is converted to ONNX first (ptqflow.frontends, the config's ``conversion`` section) and checked
against its framework; the manifest's ``conversion`` records the source format, converter, versions and the
largest relative difference. Pickled checkpoints (``.pth`` state dicts) are refused.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import onnx

from ptqflow import frontends
from ptqflow.frontends.base import options_from_config
from ptqflow.registry import client as registry
from ptqflow.artifacts import storage
from ptqflow.artifacts.manifest import Manifest, sha256_file, write_manifest
from ptqflow.config import PipelineConfig
from ptqflow.errors import ConfigError, InputError, StorageError
from ptqflow.quantization.graph.prepare import MAX_IR_VERSION, external_data_files, graph_inputs
from ptqflow.logs import get_logger
from ptqflow.pipeline.steps import spec
from ptqflow.runtime.model_files import save_model

_SPEC = spec("fetch-model")  # its entry in the steps table
NAME: str = _SPEC.name
INPUTS: tuple[str, ...] = _SPEC.inputs
MODEL_FILE = "model.onnx"
IR_FILE, IR_WEIGHTS = "model.xml", "model.bin"  # an OpenVINO IR is fetched as these two (issue 22)
log = get_logger(NAME)


def model_file(directory: Path) -> Path:
    """The model in a fetched model (or quantized) directory: ``model.onnx``, else the IR's ``model.xml``."""
    for name in (MODEL_FILE, IR_FILE):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise InputError(f"{directory}: neither {MODEL_FILE} nor {IR_FILE} is there")


def config_section(cfg: PipelineConfig) -> dict:
    """The model URI and expected sha256; for a local source also each file's size and sha256, so that
    replacing the file at the same path refetches it while merely touching it does not."""
    section: dict = {"model": cfg.model, "model_sha256": cfg.model_sha256}
    if cfg.conversion != type(cfg.conversion)():  # how a framework model is converted changes model.onnx
        section["conversion"] = cfg.conversion.model_dump(mode="json")
    if registry.is_registry_uri(cfg.model):
        # An alias may move: the version it names now is part of the key.
        version = registry.resolve(_client(cfg), registry.parse_registry_uri(cfg.model))
        section["registry_version"] = [version.name, str(version.version)]
    elif cfg.model and not storage.is_s3(cfg.model) and not cfg.model.startswith(("http://", "https://")):
        p = storage.parse_uri(cfg.model).path
        if p.exists():
            files = ([p] + _ir_weights(p)) if p.is_file() else _model_dir_files(p, _local_output(cfg))
            section["local_stamp"] = [[f.relative_to(p).as_posix() if p.is_dir() else f.name,
                                       f.stat().st_size, sha256_file(f)] for f in files]
    return section


def run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest:
    """Fetch, unpack, check and copy the model into ``out``; returns the manifest."""
    if not cfg.model:
        raise ConfigError("field 'model' is required by fetch-model (--model URI)")
    start = time.monotonic()
    source: dict = {}
    with storage.scratch_dir("ptqflow-fetch-") as tmp:
        tmp = Path(tmp)
        if registry.is_registry_uri(cfg.model):
            fetched, source = _download_registered(cfg, tmp / "download")
        else:
            fetched = _download(cfg.model, tmp / "download")
        if cfg.model_sha256:
            _check_sha256(fetched, cfg.model_sha256, cfg.model)
        model_path = _locate_model(fetched, tmp / "unpacked", cfg.model, _local_output(cfg))
        conversion = None
        frontend = frontends.detect(model_path, cfg.model)
        if frontend is not None:  # PyTorch, TensorFlow, Keras, TFLite: converted to ONNX and checked first
            conversion = frontend.convert(model_path, tmp / "converted", options_from_config(cfg.conversion))
            log.info("fetch-model: %s converted from %s by %s; max relative difference %.3g on %d samples",
                     cfg.model, conversion.source_format, conversion.converter, conversion.max_rel_diff,
                     conversion.samples_checked)
            model_path = conversion.onnx_path
        copy = _copy_ir if model_path.suffix.lower() == ".xml" else _copy_model
        info = copy(model_path, Path(out), cfg.model)
        if conversion is not None:
            info["conversion"] = conversion.record()
    extra = {**info, "source": cfg.model, "sha256": sha256_file(model_file(Path(out)))}
    if source:
        extra["registry"] = source
    return write_manifest(
        out, step=NAME, config=config_section(cfg), inputs={},
        metrics={"size_bytes": sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())},
        timings={"total_s": round(time.monotonic() - start, 3)}, extra=extra,
    )


# --------------------------------------------------------------------------------------------------
# Getting the bytes
# --------------------------------------------------------------------------------------------------


def _download(uri: str, dest: Path) -> Path:
    """Local path of the fetched file or directory (local sources are used in place); an IR's ``.xml`` object
    brings the ``.bin`` beside it."""
    if uri.startswith(("http://", "https://")):
        return _http_download(uri, dest)
    fetched = storage.stage_in(uri, dest)
    if storage.is_s3(uri) and uri.lower().endswith(".xml"):
        storage.stage_in(uri[:-4] + ".bin", dest)
    return fetched


def _ir_weights(path: Path) -> list[Path]:
    """The ``.bin`` beside an IR's ``.xml`` (none for other files, or when it is missing)."""
    weights = path.with_suffix(".bin")
    return [weights] if path.suffix.lower() == ".xml" and weights.is_file() else []


def _client(cfg: PipelineConfig):
    return registry.client(cfg.registry.tracking_uri if cfg.registry else None)


def _download_registered(cfg: PipelineConfig, dest: Path) -> tuple[Path, dict]:
    """Download the artifacts of the registered version ``cfg.model`` names; (local dir, manifest record)."""
    client = _client(cfg)
    version = registry.resolve(client, registry.parse_registry_uri(cfg.model))
    if not registry.onnx_artifacts(client, version, (".onnx", ".xml")):
        raise InputError(f"{cfg.model}: model version {version.name}/{version.version} has no .onnx artifact "
                         f"(nor an OpenVINO IR .xml; source {version.source})")
    local = registry.download(client, version, dest)
    record = registry.version_record(version, client.tracking_uri)
    log.info("fetch-model: %s is %s version %s (run %s)", cfg.model, version.name, version.version, version.run_id)
    return local, record


def _http_download(url: str, dest: Path) -> Path:
    """Stream ``url`` to a file, refusing more than PTQFLOW_MAX_DOWNLOAD_MB (default 8192) MiB."""
    limit = int(os.environ.get("PTQFLOW_MAX_DOWNLOAD_MB", "8192")) << 20
    dest.mkdir(parents=True, exist_ok=True)
    name = Path(url.split("?", 1)[0].rstrip("/")).name or MODEL_FILE
    target = dest / name
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(target, "wb") as f:
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > limit:
                raise InputError(f"{url}: {declared} bytes exceeds the download limit of {limit} bytes")
            done = 0
            for block in iter(lambda: resp.read(1 << 20), b""):
                done += len(block)
                if done > limit:
                    raise InputError(f"{url}: download exceeds the limit of {limit} bytes (PTQFLOW_MAX_DOWNLOAD_MB)")
                f.write(block)
    except urllib.error.HTTPError as err:
        if 400 <= err.code < 500 and err.code not in (408, 429):
            raise InputError(f"{url}: HTTP {err.code} {err.reason}") from None
        raise StorageError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise StorageError(f"{url}: download failed: {getattr(err, 'reason', err)}") from None
    return target


def _check_sha256(path: Path, expected: str, uri: str) -> None:
    """InputError when the fetched file's sha256 differs from ``model_sha256``."""
    if path.is_dir():
        raise ConfigError(f"model_sha256 is given but {uri} is a directory; give the sha256 of a single file")
    actual = sha256_file(path)
    if actual.lower() != expected.lower().strip():
        raise InputError(f"{uri}: sha256 mismatch: expected {expected}, got {actual}")


# --------------------------------------------------------------------------------------------------
# Archives and directories
# --------------------------------------------------------------------------------------------------


def _local_output(cfg: PipelineConfig) -> Path | None:
    """The pipeline's local output directory, if any (it may lie inside a model directory)."""
    if not cfg.output or storage.is_s3(cfg.output):
        return None
    return storage.parse_uri(cfg.output).path


def _model_dir_files(root: Path, output: Path | None = None) -> list[Path]:
    """The files of a local model directory (sorted), without ptqflow's own outputs when ``--output`` lies
    inside it: otherwise a rerun would see the first run's model copies and a changed cache key."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not (output is not None and (here / d).resolve() == output.resolve())
                       and not storage.is_ptqflow_dir(here / d)]
        found += [here / f for f in filenames if (here / f).is_file()]
    return sorted(found)


def _locate_model(path: Path, scratch: Path, uri: str, output: Path | None = None) -> Path:
    """The .onnx file inside ``path`` (a file, a directory, or an archive unpacked into ``scratch``); in a
    directory, ptqflow's own outputs (``output`` and step artifacts) are not searched."""
    name = path.name.lower()
    if path.is_file() and name.endswith(".zip"):
        _extract_zip(path, scratch, uri)
        path = scratch
    elif path.is_file() and name.endswith((".tar.gz", ".tgz", ".tar")):
        _extract_tar(path, scratch, uri)
        path = scratch
    if path.is_dir():
        if frontends.is_source_model(path):  # a TensorFlow SavedModel directory
            return path
        files = [p for p in _model_dir_files(path, output) if not p.is_symlink()]
        candidates = ([p for p in files if p.suffix == ".onnx"] or [p for p in files if p.suffix == ".xml"]
                      or _source_models(path, files))
        if len(candidates) != 1:
            found = ", ".join(str(c.relative_to(path)) for c in candidates) or "none"
            raise InputError(f"{uri}: expected exactly one .onnx file (or one OpenVINO IR .xml, or one PyTorch, "
                             f"TensorFlow, Keras or TFLite model), found {found}")
        return candidates[0]
    return path


def _source_models(root: Path, files: list[Path]) -> list[Path]:
    """Framework models in a directory: SavedModel directories and model files a frontend converts (a pickled
    checkpoint among them is refused by name)."""
    dirs = sorted({f.parent for f in files if f.name in ("saved_model.pb", "saved_model.pbtxt")})
    found = [d for d in dirs if frontends.is_source_model(d)]
    for f in files:
        if any(f.is_relative_to(d) for d in dirs):
            continue
        if frontends.is_source_model(f) or frontends.sniff.is_pickle(f):
            found.append(f)
    return found


def _member_target(root: Path, name: str, uri: str) -> Path:
    target = (root / name).resolve()
    if os.path.isabs(name) or not target.is_relative_to(root.resolve()):
        raise InputError(f"{uri}: archive member {name!r} escapes the extraction directory; refusing the archive")
    return target


def _extract_zip(path: Path, root: Path, uri: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                target = _member_target(root, info.filename, uri)
                mode = info.external_attr >> 16
                if (mode & 0o170000) == 0o120000:
                    raise InputError(f"{uri}: archive member {info.filename!r} is a symlink; refusing the archive")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as err:
        raise InputError(f"{uri}: not a valid zip archive ({err})") from None


def _extract_tar(path: Path, root: Path, uri: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path) as tf:
            members = tf.getmembers()
            for m in members:
                _member_target(root, m.name, uri)
                if not (m.isfile() or m.isdir()):
                    raise InputError(f"{uri}: archive member {m.name!r} is a link or special file; refusing the archive")
            tf.extractall(root, members=members, filter="data")
    except (tarfile.TarError, EOFError) as err:
        raise InputError(f"{uri}: not a valid tar archive ({err})") from None


# --------------------------------------------------------------------------------------------------
# Checking and copying the model
# --------------------------------------------------------------------------------------------------


def _copy_model(model_path: Path, out: Path, uri: str) -> dict:
    """Check the model, copy it (and its external data files) into ``out``; return the manifest extra."""
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: truncated or not ONNX at all
        raise InputError(f"{uri}: not a readable ONNX model ({type(err).__name__}: {err})") from None
    if not proto.graph.node:
        raise InputError(f"{uri}: the ONNX graph has no nodes (truncated or not a model)")
    externals = external_data_files(proto, model_path.parent, uri)
    # Only the .onnx file is rewritten: tensors with external data keep their references to the files copied below.
    rewrite = proto.ir_version > MAX_IR_VERSION
    original_ir = proto.ir_version
    try:
        onnx.checker.check_model(str(model_path))
    except Exception as err:
        raise InputError(f"{uri}: ONNX checker rejects the model: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    if rewrite:
        proto.ir_version = MAX_IR_VERSION
        save_model(proto, out / MODEL_FILE)
    else:
        shutil.copyfile(model_path, out / MODEL_FILE)
    for rel in externals:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path.parent / rel, out / rel)
    info = {
        "inputs": _io(graph_inputs(proto)),  # weights listed as inputs (IR 3 style) are not inputs
        "outputs": _io(proto.graph.output),
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "ir_version": proto.ir_version,
        "external_data": sorted(externals),
    }
    if rewrite:
        info["ir_version_original"] = original_ir
    log.info("fetch-model: %s (opset %s, %d inputs, %d external data files)", uri, info["opset"],
             len(info["inputs"]), len(externals))
    return info


def _copy_ir(xml: Path, out: Path, uri: str) -> dict:
    """Check an OpenVINO IR (read whole by OpenVINO: a missing or truncated .bin, an xml that is not IR are
    InputErrors naming the file), copy it into ``out`` as model.xml + model.bin; return the manifest extra."""
    from ptqflow.runtime.openvino import ir_io, read_ir

    inputs, outputs = ir_io(read_ir(xml))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(xml, out / IR_FILE)
    shutil.copyfile(xml.with_suffix(".bin"), out / IR_WEIGHTS)
    log.info("fetch-model: %s (OpenVINO IR, %d inputs)", uri, len(inputs))
    return {"format": "openvino-ir", "inputs": inputs, "outputs": outputs}


def _io(values) -> list[dict]:
    """[{name, shape, dtype}] for graph inputs/outputs (symbolic dims as strings, unknown as None)."""
    result = []
    for v in values:
        tt = v.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else None
        result.append({"name": v.name, "shape": shape, "dtype": dtype})
    return result

