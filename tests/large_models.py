"""A model over protobuf's 2 GB limit, built in code: a chain of MatMul+Add layers whose weights are written
straight into one external data file, so that building it never holds the weights in memory (the test that
runs the pipeline on it measures the pipeline's memory, not the builder's).

Used by tests/test_large_model.py and bench/large_model.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DATA_FILE = "model.onnx.data"


def _external(name: str, dims: list[int], offset: int, length: int) -> onnx.TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=key, value=value)
    return t


def large_mlp(directory: Path, layers: int = 9, width: int = 8192, seed: int = 0) -> Path:
    """``directory/model.onnx`` with ``layers`` MatMul+Add layers of ``width`` x ``width`` float32 weights (9 x
    8192 = 2.25 GiB) in ``directory/model.onnx.data``, input ``x`` [N, width], ReLU between layers. Weights
    are uniform with variance 1/width, so activations keep their magnitude through the chain. Returns the model
    path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    inits, nodes, offset = [], [], 0
    x = "x"
    with open(directory / DATA_FILE, "wb") as data:
        for i in range(layers):
            for name, shape in ((f"w{i}", [width, width]), (f"b{i}", [width])):
                # row by row: a few MB in memory at a time
                rows = shape[0] if len(shape) == 2 else 1
                length = 0
                for start in range(0, rows, 512):
                    n = min(512, rows - start)
                    # uniform in [-a, a): 7x faster to draw than normal; a = sqrt(3 / width) for weights
                    # (unit variance out for unit variance in), 0.1 for biases
                    block = rng.random((n, width) if len(shape) == 2 else (width,), dtype=np.float32)
                    block -= np.float32(0.5)
                    block *= np.float32(2 * np.sqrt(3 / width)) if len(shape) == 2 else np.float32(0.2)
                    data.write(block.tobytes())
                    length += block.nbytes
                inits.append(_external(name, shape, offset, length))
                offset += length
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
            last = i == layers - 1
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], ["y" if last else f"add{i}"], name=f"add{i}"))
            if not last:
                nodes.append(helper.make_node("Relu", [f"add{i}"], [f"relu{i}"], name=f"relu{i}"))
                x = f"relu{i}"
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path


def calibration_data(directory: Path, samples: int, width: int = 8192, seed: int = 1) -> Path:
    """``directory/x.npy``: ``samples`` inputs stacked as one [samples, width] array (the model's rank, so the
    data source splits it into samples of [1, width]). Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "x.npy", np.random.default_rng(seed).standard_normal((samples, width), dtype=np.float32))
    return directory
