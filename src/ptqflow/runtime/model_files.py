"""Model files for models of any size: the one place ptqflow serializes a ModelProto to disk.

A ModelProto over protobuf's 2 GB limit cannot be serialized as one message (``SerializeToString`` raises
``EncodeError``), so such a model is written with its weights in an external data file beside the ``.onnx``
file. Unlike ``onnx.save(..., save_as_external_data=True)``, which moves the weights out of the ModelProto it is
given (the caller's model loses them), the writer here leaves the model untouched and holds at most one tensor's
bytes at a time besides it.

``save_model`` writes a model file (the pipeline's steps and the API); ``model_file`` hands a temporary file to
a runtime that reads files (onnxruntime and OpenVINO sessions, onnxruntime's offline optimizer); ``skeleton``
is the model without the bytes of its large weights, for what reads only the graph and the shapes (shape
inference).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto

from ptqflow.scratch import scratch_dir

PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom for the graph structure
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside the .onnx file (onnx.save's default threshold)
# External data offsets on allocation-granularity boundaries (onnx's align_offset): runtimes can then map the
# file instead of copying it.
_ALIGN = 65536
_SUBBYTE = {TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)}  # two elements a byte


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """The bytes of ``t``'s data held in the ModelProto (0 when it lies in an external file), from its dims and
    type: counting a tensor's bytes this way reads no data (``ByteSize()`` encodes the whole tensor)."""
    if t.data_location == TensorProto.EXTERNAL:
        return 0
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    if t.data_type in _SUBBYTE:
        return (count + 1) // 2
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # an unknown type: count the stored fields instead
        return t.ByteSize()


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of ``graph``: initializers, sparse initializers' values and node attributes, subgraphs
    included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from all_tensors(attr.g)
            for sub in attr.graphs:
                yield from all_tensors(sub)


def model_nbytes(model: onnx.ModelProto) -> int:
    """The bytes of tensor data ``model`` holds in memory (external data not counted)."""
    return sum(tensor_nbytes(t) for t in all_tensors(model.graph))


def is_large(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot be serialized as one protobuf (its tensors hold more than PROTO_LIMIT bytes)."""
    return model_nbytes(model) > PROTO_LIMIT


def _repeated(field) -> bool:
    # protobuf 7 has only is_repeated; before 5.28 there was only label
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def has_external_data(path: Path) -> bool:
    """True when the model file at ``path`` keeps tensor data in external files (reads the .onnx file only)."""
    header = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == TensorProto.EXTERNAL for t in all_tensors(header.graph))


def stored_bytes(path: Path) -> int:
    """The bytes of the model file at ``path`` and of the external data files it names (reads the .onnx file
    only)."""
    path = Path(path)
    header = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in all_tensors(header.graph) if t.data_location == TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations
                                     if (path.parent / loc).is_file())


def _copy_except(message, skip: set[str]):
    """A new message of ``message``'s type with every set field but those named in ``skip`` (copied). Fields
    are visited by descriptor, so a skipped field's value is never read (reading ``raw_data`` copies it)."""
    out = type(message)()
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if name in skip:
            continue
        if _repeated(field):
            if len(getattr(message, name)):
                getattr(out, name).extend(getattr(message, name))
        elif message.HasField(name):
            if field.message_type is not None:
                getattr(out, name).CopyFrom(getattr(message, name))
            else:
                setattr(out, name, getattr(message, name))
    return out


_DATA_FIELDS = {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                "data_location", "external_data"}


def _externalizable(t: onnx.TensorProto) -> bool:
    return (t.data_location != TensorProto.EXTERNAL and t.HasField("raw_data")
            and tensor_nbytes(t) >= EXTERNAL_MIN_BYTES)


def _external_ref(t: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    """``t``'s metadata (name, type, dims) with its data at ``offset``/``length`` of ``location``."""
    ref = _copy_except(t, _DATA_FIELDS)
    ref.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        ref.external_data.add(key=key, value=value)
    return ref


def _split(model: onnx.ModelProto, write=None, location: str = "") -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers (raw data of EXTERNAL_MIN_BYTES or more) are references to
    ``location``; ``write(bytes) -> offset`` stores each one's data (None: the data is dropped, the references
    name no real file). ``model`` is left as it is."""
    out = _copy_except(model, {"graph"})
    graph = _copy_except(model.graph, {"initializer"})
    for t in model.graph.initializer:
        if not _externalizable(t):
            graph.initializer.add().CopyFrom(t)
            continue
        if write is None:
            graph.initializer.append(_external_ref(t, location, 0, tensor_nbytes(t)))
            continue
        data = t.raw_data  # one tensor's bytes at a time
        graph.initializer.append(_external_ref(t, location, write(data), len(data)))
        del data
    out.graph.CopyFrom(graph)
    return out


def copy_without(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` in which the initializers named in ``names`` keep their place, name, type and dims but
    no data (``data_location`` EXTERNAL, no reference): for a caller that replaces those tensors and fills back
    in (``CopyFrom``) any it keeps, without ever holding a second copy of their bytes."""
    out = _copy_except(model, {"graph"})
    out.graph.CopyFrom(_copy_except(model.graph, {"initializer"}))  # small: the weights are added one by one
    for t in model.graph.initializer:
        if t.name in names:
            stub = out.graph.initializer.add()
            stub.CopyFrom(_copy_except(t, _DATA_FIELDS))
            stub.data_location = TensorProto.EXTERNAL
        else:
            out.graph.initializer.add().CopyFrom(t)
    return out


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the bytes of its large initializers (references to a file that does not
    exist stand in for them): the graph, types and dims, for shape inference and other readers of the graph
    alone. Small whatever ``model``'s size."""
    return _split(model, None, "ptqflow-skeleton-no-data")


def save_model(model: onnx.ModelProto, path: Path, external: bool | None = None) -> Path:
    """Write ``model`` to ``path``; returns ``path``. A model over protobuf's 2 GB limit (``is_large``), or any
    model when ``external`` is True, keeps its large initializers in ``<file name>.data`` beside it (page-aligned,
    one file); a smaller model is one file, as ``onnx.save`` writes it. ``model`` itself is not changed."""
    path = Path(path)
    if not (is_large(model) if external is None else external):
        onnx.save(model, str(path))
        return path
    with DataFile(path.parent / f"{path.name}.data") as data:
        header = _split(model, data.write, data.path.name)
    onnx.save(header, str(path))
    return path


class DataFile:
    """An external data file being written: each chunk at the next page-aligned offset (runtimes can then map the
    file instead of copying it). A context manager that closes the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "wb")

    def write(self, chunk: bytes) -> int:
        """Append ``chunk``; returns its offset."""
        end = self._file.tell()
        offset = end + (-end % _ALIGN)
        self._file.write(b"\0" * (offset - end))
        self._file.write(chunk)
        return offset

    def tensor(self, value: np.ndarray, name: str) -> onnx.TensorProto:
        """``value`` written here, as the initializer ``name`` referring to it (a model file beside this one
        reads it): for a caller that makes a large model one tensor at a time without holding their bytes."""
        data = np.ascontiguousarray(value).tobytes()
        t = TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype), dims=value.shape)
        return _external_ref(t, self.path.name, self.write(data), len(data))

    def __enter__(self) -> "DataFile":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


@contextmanager
def model_file(model, prefix: str = "ptqflow-model-", file_from: int | None = None) -> Iterator[Path | bytes]:
    """``model`` in the form a runtime loads, for the duration of the block: a ModelProto under the 2 GB limit as
    its serialized bytes, a larger one (or one holding ``file_from`` bytes of tensor data or more) as a temporary
    ``model.onnx`` with external data (in the running step's scratch directory, see ptqflow.scratch; removed
    after the block), a path as itself (a Path), bytes as themselves."""
    if isinstance(model, onnx.ModelProto):
        nbytes = model_nbytes(model)
        if nbytes <= PROTO_LIMIT and (file_from is None or nbytes < file_from):
            yield model.SerializeToString()
            return
        with scratch_dir(prefix) as tmp:
            yield save_model(model, Path(tmp) / "model.onnx", external=True)
        return
    if isinstance(model, (bytes, bytearray)):
        yield bytes(model)
        return
    yield Path(model)



class SetAside:
    """``model`` held in a file (``to_file``; else in memory, as it is) until ``back()`` returns it, equal field for
    field (its bytes serialize identically): once the caller drops its own reference, the model's memory is free
    meanwhile (protobuf frees a message's memory only as a whole). A context manager: the file (external data, in
    the running step's scratch directory) goes at the end of the block. Nothing here keeps a reference to a model
    set aside in a file."""

    def __init__(self, model: onnx.ModelProto, to_file: bool = True):
        self._model, self._scratch = (None, scratch_dir("ptqflow-aside-")) if to_file else (model, None)
        if to_file:
            inits = model.graph.initializer
            self._moved = [_externalizable(t) for t in inits]  # what save_model moves to the data file
            self._located = [t.HasField("data_location") for t in inits]
            self._path = save_model(model, Path(self._scratch.name) / "model.onnx", external=True)

    def back(self) -> onnx.ModelProto:
        """The model."""
        if self._scratch is None:
            return self._model
        out = onnx.load(str(self._path), load_external_data=False)
        with open(self._path.parent / f"{self._path.name}.data", "rb") as data:
            for t, moved, located in zip(out.graph.initializer, self._moved, self._located):
                if not moved:
                    continue
                ref = {e.key: e.value for e in t.external_data}
                data.seek(int(ref["offset"]))
                t.raw_data = data.read(int(ref["length"]))
                del t.external_data[:]
                t.ClearField("data_location")
                if located:
                    t.data_location = TensorProto.DEFAULT
        return out

    def __enter__(self) -> "SetAside":
        return self

    def __exit__(self, *exc) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
