"""One index of a graph: producers, consumers, initializers, nodes by name, constant-ness, attributes.

Built once per graph and read by the passes (placement, bias-layer search, bias correction, sensitivity, the
bias-correction guard, BatchNormalization folding) instead of each walking the graph its own way.

The index is a snapshot: maps are built when it is constructed and do not follow later edits of the graph
(the passes that edit a graph rely on that, e.g. BatchNormalization folding reads the maps of the unfolded
graph while it removes nodes).

Two constant-ness predicates exist because two passes have always judged it differently, and they are kept
so that quantized models do not change:

- ``is_constant`` (bias correction): an initializer, or a tensor a deterministic node without subgraphs
  computes only from constants. Such a tensor can be recomputed on its own from ``constant_closure``.
- ``is_const_input`` (quantizer placement): an initializer, or a tensor any node but RandomNormal /
  RandomUniform computes only from such tensors. It does not exclude RandomNormalLike, RandomUniformLike,
  Multinomial, nor If / Loop / Scan (nodes with a graph attribute): fed constants, placement counts their
  outputs as constant (no activation quantizer; never an activation input of a weighted layer).

The two agree on every tensor of the rapidocr cls/rec/det models and of the tests' builder models, raw and
prepared; they differ only downstream of those ops.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# Ops whose output is not a function of their inputs: never constant for bias correction.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial"})
# The random ops placement has always treated as non-constant (see is_const_input).
_PLACEMENT_RANDOM = frozenset({"RandomNormal", "RandomUniform"})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


def unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``name_<k>`` with the first k that is not in ``used``; the result is added to ``used``."""
    base, k = name, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def attr(node: onnx.NodeProto, name: str, default):
    """The value of ``node``'s attribute ``name`` (onnx.helper.get_attribute_value), ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def float_constant(init: onnx.TensorProto | None, node: onnx.NodeProto | None) -> np.ndarray | None:
    """A float initializer or the float tensor of a Constant node as an array; None otherwise."""
    if init is not None:
        return numpy_helper.to_array(init) if init.data_type in FLOAT_TYPES else None
    if node is not None and node.op_type == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None and value.data_type in FLOAT_TYPES:
            return numpy_helper.to_array(value)
    return None


class GraphIndex:
    """Producer / consumer / initializer lookups over one graph (built once, read many times).

    ``nodes``: the nodes in graph order. ``by_name``: node by name (the last one of a repeated name; prepared
    models name every node). ``inits``: initializer by name. ``producer``: tensor -> node writing it.
    ``consumers``: tensor -> [(node, input index)] per reading edge, in graph order (a node reading a tensor
    twice appears twice). ``outputs``: the graph output names. Empty tensor names (omitted optional inputs
    and outputs) are in neither map.
    """

    def __init__(self, model: onnx.ModelProto | onnx.GraphProto):
        graph = model.graph if isinstance(model, onnx.ModelProto) else model
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.by_name: dict[str, onnx.NodeProto] = {n.name: n for n in self.nodes}
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.outputs: set[str] = {o.name for o in graph.output}
        self._constant: dict[str, bool] = {}
        self._const_input: dict[str, bool] = {}

    def consumer_nodes(self, name: str) -> list[onnx.NodeProto]:
        """The nodes reading ``name``, once per reading edge, in graph order."""
        return [n for n, _ in self.consumers.get(name, [])]

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is an initializer or computed only from initializers (e.g. DequantizeLinear(int8))
        by deterministic nodes without subgraphs: a value ``constant_closure`` can recompute on its own.

        The bias-layer search and bias correction use this one (see the module docstring)."""
        if name in self._constant:
            return self._constant[name]
        self._constant[name] = False  # guards against cycles in malformed graphs
        if name in self.inits:
            result = True
        else:
            node = self.producer.get(name)
            result = node is not None and node.op_type not in NONDETERMINISTIC and all(
                self.is_constant(i) for i in node.input if i
            ) and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        self._constant[name] = result
        return result

    def is_const_input(self, name: str) -> bool:
        """True for initializers and tensors computed only from them by any node but RandomNormal/RandomUniform.

        Quantizer placement uses this one: broader than ``is_constant`` (it accepts the *Like random ops,
        Multinomial and nodes with subgraphs fed constants), kept as placement has always had it so plans do
        not change (see the module docstring)."""
        if name not in self._const_input:
            self._const_input[name] = False  # guards against cycles in malformed graphs
            node = self.producer.get(name)
            self._const_input[name] = name in self.inits or (
                node is not None and node.op_type not in _PLACEMENT_RANDOM
                and all(self.is_const_input(i) for i in node.input if i))
        return self._const_input[name]

    def constant_closure(self, name: str) -> list[onnx.NodeProto]:
        """The nodes (topological order) computing constant ``name`` from initializers; [] for an initializer."""
        seen: set[int] = set()
        order: list[onnx.NodeProto] = []

        def visit(tensor: str) -> None:
            node = self.producer.get(tensor)
            if tensor in self.inits or node is None or id(node) in seen:
                return
            seen.add(id(node))
            for inp in node.input:
                if inp:
                    visit(inp)
            order.append(node)

        visit(name)
        return order

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape of a constant tensor when cheap to know (initializer, or DequantizeLinear of one)."""
        if name in self.inits:
            return tuple(self.inits[name].dims)
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            return self.const_shape(node.input[0])
        if node is not None and node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return tuple(value.dims) if value is not None else None
        return None

    def float_init(self, name: str) -> np.ndarray | None:
        """The float constant ``name`` (an initializer or a Constant node's tensor) as an array, else None."""
        return float_constant(self.inits.get(name), self.producer.get(name))
