"""The graph of an OpenVINO model (``ov.Model``) in the form placement reads: a backend-neutral view.

There is no IR-to-ONNX converter, and none is needed: placement (quantizer_placement), the plan passes and the
per-layer summary read nodes, op types, inputs, outputs, initializers and tensor types, nothing that executes.
``OVView`` lays the ov.Model's graph out as an ONNX GraphProto that is never run, only read: each OpenVINO op
becomes one node whose op type is mapped through ``OP_TYPES`` (a plain dict; a few ops whose ONNX counterpart
depends on attributes through ``_REFINE``), each output port one tensor, each Constant (and each Convert of one,
the decompression of an f16-compressed IR) one initializer with its value in ONNX's layout. The same placement
code then decides the same quantizers for an IR as for the ONNX model it came from; the plan's tensor and node
names are the view's, and ``ports`` / ``nodes`` tie them back to the ov.Model (``bind`` finds them in a clone).

Ops outside ``OP_TYPES`` keep their OpenVINO name: placement knows nothing of them, so they stay float and block
quantizer moves, the conservative choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptqflow.quantization.graph.index import unique_name

VIEW_OPSET = 17  # placement reads the opset for per-channel weights (>= 13); the view is never run

# OpenVINO op type -> the ONNX op type quantizer_placement's tables (ops.py) know it by.
OP_TYPES = {
    "Convolution": "Conv", "GroupConvolution": "Conv", "ConvolutionBackpropData": "ConvTranspose",
    "GroupConvolutionBackpropData": "ConvTranspose", "MatMul": "MatMul", "Add": "Add", "Subtract": "Sub",
    "Multiply": "Mul", "Divide": "Div", "AvgPool": "AveragePool", "ReduceMean": "ReduceMean",
    "Interpolate": "Resize", "MaxPool": "MaxPool", "Reshape": "Reshape", "Transpose": "Transpose",
    "Squeeze": "Squeeze", "Unsqueeze": "Unsqueeze", "StridedSlice": "Slice", "Slice": "Slice", "Split": "Split",
    "VariadicSplit": "Split", "Pad": "Pad", "Gather": "Gather", "Broadcast": "Expand", "Tile": "Tile",
    "DepthToSpace": "DepthToSpace", "SpaceToDepth": "SpaceToDepth", "Concat": "Concat", "Softmax": "Softmax",
    "LogSoftmax": "LogSoftmax", "MVN": "LayerNormalization", "Gelu": "Gelu", "Erf": "Erf", "Power": "Pow",
    "Sqrt": "Sqrt", "ReduceSum": "ReduceSum", "ReduceMax": "ReduceMax", "Tanh": "Tanh", "Sigmoid": "Sigmoid",
    "Clamp": "Clip", "Relu": "Relu", "HSigmoid": "HardSigmoid", "HardSigmoid": "HardSigmoid",
    "HSwish": "HardSwish", "Swish": "Swish", "Minimum": "Min", "Maximum": "Max", "Negative": "Neg",
    "SoftPlus": "Softplus", "TopK": "TopK", "NonMaxSuppression": "NonMaxSuppression", "ShapeOf": "Shape",
    "Convert": "Cast", "Abs": "Abs", "Exp": "Exp", "Log": "Log", "Floor": "Floor", "Equal": "Equal",
    "Select": "Where", "Range": "Range", "NonZero": "NonZero", "PRelu": "PRelu", "Elu": "Elu",
    # convert_model fuses attention (MatMul(q, k) -> Softmax -> MatMul(., v)) into one op; its first MatMul is
    # the one whose inputs (q, k) a quantizer can reach, as NNCF quantizes ports 0 and 1 of it
    "ScaledDotProductAttention": "MatMul",
}
def is_openvino(model) -> bool:
    """True for an ov.Model or the path of an IR (``.xml``): what the OpenVINO backend quantizes."""
    if type(model).__module__.split(".")[0] == "openvino":
        return True
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".xml")


_GROUPED = {"GroupConvolution", "GroupConvolutionBackpropData"}  # weights [G, C/G, ...]; ONNX's are [C, ...]
_CONSTANT, _PARAMETER, _RESULT, _CONVERT = "Constant", "Parameter", "Result", "Convert"


def _refine_matmul(node, inputs_const: list[bool]) -> tuple[str, dict]:
    """MatMul with a transposed constant 2-D weight is ONNX's Gemm(transB=1): its output channels are axis 0."""
    a = node.get_attributes()
    b = node.input(1).get_partial_shape()
    if a.get("transpose_b") and inputs_const[1] and b.rank.is_static and b.rank.get_length() == 2:
        return "Gemm", {"transB": 1}
    return "MatMul", {}


def _refine_reduce_mean(node, inputs_const: list[bool]) -> tuple[str, dict]:
    """ReduceMean keeping dims over every spatial axis is ONNX's GlobalAveragePool (what convert_model made of
    it); only other reductions count as the ReduceMean of a decomposed layer norm."""
    shape = node.input(0).get_partial_shape()
    axes = node.input_value(1).get_node()
    if (node.get_attributes().get("keep_dims") and shape.rank.is_static and shape.rank.get_length() >= 3
            and axes.get_type_name() == _CONSTANT):
        rank = shape.rank.get_length()
        if sorted(int(x) % rank for x in np.ravel(axes.get_data())) == list(range(2, rank)):
            return "GlobalAveragePool", {}
    return "ReduceMean", {}


_REFINE = {"MatMul": _refine_matmul, "ReduceMean": _refine_reduce_mean}


def _onnx_type(ov_type) -> int:
    """The onnx TensorProto element type of an OpenVINO element type (0: unknown or dynamic)."""
    try:
        return helper.np_dtype_to_tensor_dtype(np.dtype(ov_type.to_dtype()))
    except Exception:  # dynamic or types numpy lacks
        return 0


BATCH = "batch"  # the view's dim_param of a dim 0 that carries the batch symbol (see mark_batch)


def mark_batch(model) -> object | None:
    """Give the dynamic dim 0 of ``model``'s only input a symbol and propagate it (OpenVINO's symbolic shape
    inference), so the view knows which tensors keep the batch in axis 0 and calibration samples can be stacked;
    returns the symbol, or None (several inputs, a static batch, or a symbol already there that is kept)."""
    import openvino as ov

    params = model.get_parameters()
    if len(params) != 1:
        return None
    shape = params[0].get_partial_shape()
    if shape.rank.is_dynamic or shape.rank.get_length() < 2 or shape[0].is_static:
        return None
    if shape[0].get_symbol() is not None:
        return shape[0].get_symbol()
    dims = [shape[i] for i in range(shape.rank.get_length())]
    dims[0].set_symbol(ov.Symbol())
    params[0].set_partial_shape(ov.PartialShape(dims))
    model.validate_nodes_and_infer_types()
    return dims[0].get_symbol()


def _value_info(name: str, port, batch=None) -> onnx.ValueInfoProto:
    shape = port.get_partial_shape()
    dims = None if shape.rank.is_dynamic else [d.get_length() if d.is_static else None for d in shape]
    if dims and dims[0] is None and batch is not None and shape[0].get_symbol() == batch:
        dims[0] = BATCH
    return helper.make_tensor_value_info(name, _onnx_type(port.get_element_type()), dims)


@dataclass
class OVView:
    """``view``: the ONNX-form graph of ``model`` (see the module docstring). ``ports``: view tensor -> (index of
    the op in ``model.get_ordered_ops()``, output index); ``nodes``: view node -> op index; ``ov_shapes``: the
    OpenVINO shape of initializers whose layout differs from ONNX's (grouped convolution weights)."""

    view: onnx.ModelProto
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    ov_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    op_types: tuple[str, ...] = ()  # the ordered ops' types, to check a clone matches

    def bind(self, model) -> "BoundView":
        """This view's tensors and nodes in ``model``, a clone of the model it was built from."""
        ops = model.get_ordered_ops()
        if tuple(op.get_type_name() for op in ops) != self.op_types:
            raise ValueError("the OpenVINO model is not the one this view was built from")
        return BoundView(self, ops)


@dataclass
class BoundView:
    """An OVView with the ops of the ov.Model it is bound to (OVView.bind): view names -> that model's ports and
    nodes. The ops list is taken when binding, so a writer that changes the model still finds its original nodes."""

    view: OVView
    ops: list

    def port(self, tensor: str):
        """The ov.Output of view tensor ``tensor``."""
        index, out = self.view.ports[tensor]
        return self.ops[index].output(out)

    def node(self, name: str):
        """The ov.Node of view node ``name``."""
        return self.ops[self.view.nodes[name]]


def _constant_value(op) -> np.ndarray | None:
    """The value of a Constant, or of a float Convert of one (an f16-compressed weight); None otherwise."""
    if op.get_type_name() == _CONSTANT:
        return op.get_data()
    if op.get_type_name() == _CONVERT:
        src = op.input_value(0).get_node()
        if src.get_type_name() == _CONSTANT and op.get_output_element_type(0).is_real():
            return src.get_data().astype(op.get_output_element_type(0).to_dtype())
    return None


def _is_constant(op) -> bool:
    return op.get_type_name() == _CONSTANT or (op.get_type_name() == _CONVERT
                                               and op.input_value(0).get_node().get_type_name() == _CONSTANT)


def build_view(model, batch=None) -> OVView:
    """The OVView of ``model`` (an ov.Model; read only); dim 0 of tensors carrying the symbol ``batch``
    (mark_batch) is the dim_param BATCH."""
    ops = model.get_ordered_ops()
    index = {op.get_name(): i for i, op in enumerate(ops)}  # get_name: unique per node, unlike friendly names
    names: dict[tuple[int, int], str] = {}
    used: set[str] = set()  # tensor names
    used_nodes: set[str] = set()
    result = OVView(onnx.ModelProto(), op_types=tuple(op.get_type_name() for op in ops))
    grouped = {op.input_value(1).get_node().get_name() for op in ops if op.get_type_name() in _GROUPED}
    inits: dict[str, onnx.TensorProto] = {}

    def unique(name: str, used: set[str] = used) -> str:
        return unique_name(name, used)

    def tensor(op_i: int, out: int) -> str:
        key = (op_i, out)
        if key not in names:
            port = ops[op_i].output(out)
            found = sorted(port.get_names())
            names[key] = unique(found[0] if found else f"{ops[op_i].get_friendly_name()}:{out}")
            result.ports[names[key]] = key
        return names[key]

    def source(inp) -> str:
        """The view tensor an input reads; a constant becomes an initializer when first read."""
        src = inp.get_source_output()
        op = src.get_node()
        name = tensor(index[op.get_name()], src.get_index())
        if name not in inits and _is_constant(op):
            value = _constant_value(op)
            if value is not None:
                if op.get_name() in grouped and value.ndim >= 3:  # [G, C/G, ...] -> ONNX's [C, ...]
                    result.ov_shapes[name] = tuple(value.shape)
                    value = value.reshape((-1,) + value.shape[2:])
                inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    nodes, inputs, outputs, infos = [], [], [], []
    for i, op in enumerate(ops):
        kind = op.get_type_name()
        if kind == _PARAMETER:
            inputs.append(_value_info(tensor(i, 0), op.output(0), batch))
            continue
        if kind == _RESULT:
            outputs.append(_value_info(source(op.input(0)), op.input_value(0), batch))
            continue
        if _is_constant(op) and _constant_value(op) is not None:
            continue
        const_in = [_is_constant(op.input_value(k).get_node()) for k in range(op.get_input_size())]
        op_type, attrs = _REFINE[kind](op, const_in) if kind in _REFINE else (OP_TYPES.get(kind, kind), {})
        if kind in _GROUPED:
            attrs["group"] = int(op.input(1).get_partial_shape()[0].get_length())
        outs = [tensor(i, k) if op.output(k).get_target_inputs() else "" for k in range(op.get_output_size())]
        name = unique(op.get_friendly_name(), used_nodes)
        result.nodes[name] = i
        nodes.append(helper.make_node(op_type, [source(inp) for inp in op.inputs()], outs, name=name, **attrs))
        infos += [_value_info(t, op.output(k), batch) for k, t in enumerate(outs) if t]
    graph = helper.make_graph(nodes, model.get_friendly_name() or "ov_model", inputs, outputs,
                              initializer=list(inits.values()), value_info=infos)
    result.view = helper.make_model(graph, opset_imports=[helper.make_opsetid("", VIEW_OPSET)],
                                    producer_name="ptqflow-openvino-view")
    return result
