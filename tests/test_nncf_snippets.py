"""NNCF users paste NNCF's snippets: with ``import ptqflow as nncf`` they run as written.

The code blocks below are copied verbatim from NNCF's and OpenVINO's documentation (Apache-2.0; Copyright
Intel Corporation), the parts that apply to ONNX models:

- ``USAGE_*``: openvinotoolkit/nncf, docs/usage/post_training_compression/post_training_quantization/Usage.md;
- ``PTQ_ONNX_*``: openvinotoolkit/openvino, docs/optimization_guide/nncf/ptq/code/ptq_onnx.py (the ONNX tab of
  OpenVINO's "Basic Quantization Flow" page);
- ``TUNE_*``: the "Tune quantization parameters" section of that page
  (docs/articles_en/openvino-workflow/model-optimization-guide/quantizing-models-post-training/
  basic-quantization-flow.rst);
- ``SCOPE_*``: the examples in the docstring of NNCF's ``nncf.IgnoredScope`` (src/nncf/scopes.py), its ONNX ones;
- ``AA_ONNX_*``: openvinotoolkit/openvino, docs/optimization_guide/nncf/ptq/code/ptq_aa_onnx.py (the ONNX tab of
  OpenVINO's "Quantizing with Accuracy Control" page).

They run on tiny models built in code (``builders.nncf_doc_names`` has the node names the examples use) with
real data through ``nncf.Dataset``. Three things are filled in by the test, never edited into the text:
placeholder lines a reader completes (``name = ...`` and ``name = Something(...)``) keep the test's value of
``name``; ``import torch`` is dropped and annotations are not evaluated (torch is not a ptqflow dependency; the
test's loader yields numpy batches with torch's ``.numpy()``, and ``def validate(..., validation_loader:
torch.utils.data.DataLoader)`` names a torch type); and where scikit-learn is not installed, the test supplies
``sklearn.metrics.accuracy_score`` (the share of equal labels). A snippet's last expression is its result, as in a
notebook cell.
"""

from __future__ import annotations

import __future__
import ast
import importlib
import re
import sys

import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import builders
import ptqflow
from ptqflow.errors import ConfigError, InputError

# --- openvinotoolkit/nncf: docs/usage/post_training_compression/post_training_quantization/Usage.md ---------

USAGE_TRANSFORM_FN = """\
def transform_fn(data_item):
    images, _ = data_item
    return images
"""

USAGE_DATASET = """\
calibration_dataset = nncf.Dataset(val_dataset, transform_fn)
"""

USAGE_QUANTIZE = """\
quantized_model = nncf.quantize(model, calibration_dataset)
"""

USAGE_ONNX_CHECK = """\
import onnxruntime

model_path = ...  # Path to Model
val_loader = ...  # Original Dataset
transform_fn = ...  # Data transformation function
sess = onnxruntime.InferenceSession(model_path)
output_names = [output.name for output in sess.get_outputs()]
for data_item in val_loader:
    sess.run(output_names, input_feed=transform_fn(data_item))
"""

# --- openvinotoolkit/openvino: docs/optimization_guide/nncf/ptq/code/ptq_onnx.py -------------------------

PTQ_ONNX_DATASET = """\
import nncf
import torch

calibration_loader = torch.utils.data.DataLoader(...)

def transform_fn(data_item):
    images, _ = data_item
    return {input_name: images.numpy()} # input_name should be taken from the model, 
                                        # e.g. model.graph.input[0].name

calibration_dataset = nncf.Dataset(calibration_loader, transform_fn)
"""

PTQ_ONNX_QUANTIZATION = """\
import onnx
model = onnx.load("model_path")

quantized_model = nncf.quantize(model, calibration_dataset)
"""

PTQ_ONNX_INFERENCE = """\
import openvino as ov

# use a temporary file to convert ONNX model to OpenVINO model
quantized_model_path = "quantized_model.onnx"
onnx.save(quantized_model, quantized_model_path)

ov_quantized_model = ov.convert_model(quantized_model_path)

# compile the model to transform quantized operations to int8
model_int8 = ov.compile_model(ov_quantized_model)

input_fp32 = ... # FP32 model input
res = model_int8(input_fp32)

# save the model
ov.save_model(ov_quantized_model, "quantized_model.xml")
"""

# --- OpenVINO "Basic Quantization Flow", "Tune quantization parameters" -----------------------------------

TUNE_MODEL_TYPE = "nncf.quantize(model, dataset, model_type=nncf.ModelType.Transformer)"
TUNE_PRESET = "nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.MIXED)"
TUNE_FAST_BIAS_CORRECTION = "nncf.quantize(model, dataset, fast_bias_correction=False)"
TUNE_SUBSET_SIZE = "nncf.quantize(model, dataset, subset_size=1000)"
TUNE_TARGET_DEVICE = "nncf.quantize(model, dataset, target_device=nncf.TargetDevice.CPU)"

TUNE_IGNORED_NAMES = """\
names = ['layer_1', 'layer_2', 'layer_3']
nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(names=names))
"""

TUNE_IGNORED_TYPES = """\
types = ['Conv2d', 'Linear']
nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(types=types))
"""

TUNE_IGNORED_REGEX = """\
regex = '.*layer_.*'
nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(patterns=regex))
"""

TUNE_IGNORED_SUBGRAPH = """\
subgraph = nncf.Subgraph(inputs=['layer_1', 'layer_2'], outputs=['layer_3'])
nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(subgraphs=[subgraph]))
"""

# --- openvinotoolkit/nncf: the nncf.IgnoredScope docstring (src/nncf/scopes.py), ONNX examples ----------------

SCOPE_NAMES = """\
import nncf

# Exclude by node name:
node_names = ['node_1', 'node_2', 'node_3']
ignored_scope = nncf.IgnoredScope(names=node_names)
"""

SCOPE_PATTERNS = """\
# Exclude using regular expressions:
patterns = ['node_\\\\d']
ignored_scope = nncf.IgnoredScope(patterns=patterns)
"""

SCOPE_ONNX_TYPES = """\
# ONNX opset https://github.com/onnx/onnx/blob/main/docs/Operators.md
operation_types = ['Mul', 'Conv', 'Resize']
ignored_scope = nncf.IgnoredScope(types=operation_types)
"""

# --- openvinotoolkit/openvino: docs/optimization_guide/nncf/ptq/code/ptq_aa_onnx.py ----------------------

AA_ONNX_DATASET = """\
import nncf
import torch

calibration_loader = torch.utils.data.DataLoader(...)

def transform_fn(data_item):
    images, _ = data_item
    return {input_name: images.numpy()} # input_name should be taken from the model, 
                                        # e.g. model.graph.input[0].name

calibration_dataset = nncf.Dataset(calibration_loader, transform_fn)
validation_dataset = nncf.Dataset(calibration_loader, transform_fn)
"""

AA_ONNX_VALIDATION = """\
import numpy as np
import torch
from sklearn.metrics import accuracy_score

import onnx
import onnxruntime


def validate(model: onnx.ModelProto,
             validation_loader: torch.utils.data.DataLoader) -> float:
    predictions = []
    references = []

    input_name = model.graph.input[0].name
    serialized_model = model.SerializeToString()
    session = onnxruntime.InferenceSession(serialized_model, providers=["CPUExecutionProvider"])
    output_names = [output.name for output in session.get_outputs()]

    for images, target in validation_loader:
        pred = session.run(output_names, input_feed={input_name: images.numpy()})[0]
        predictions.append(np.argmax(pred, axis=1))
        references.append(target)

    predictions = np.concatenate(predictions, axis=0)
    references = np.concatenate(references, axis=0)
    return accuracy_score(predictions, references)
"""

AA_ONNX_QUANTIZATION = """\
import onnx

model = onnx.load("model_path")

quantized_model = nncf.quantize_with_accuracy_control(
    model,
    calibration_dataset=calibration_dataset,
    validation_dataset=validation_dataset,
    validation_fn=validate,
    max_drop=0.01,
    drop_type=nncf.DropType.ABSOLUTE,
)
"""

# ---------------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(?:\.\.\.|[\w.]+\(\.\.\.\))\s*(#.*)?$")


def run_snippet(code: str, namespace: dict):
    """Run ``code`` in ``namespace`` as written, except for the two fill-ins the module docstring names;
    return the value of its last line when that is an expression."""
    lines = []
    for line in code.splitlines():
        m = _PLACEHOLDER.match(line)
        if m:
            assert m.group(1) in namespace, f"the test must supply {m.group(1)!r} for: {line.strip()}"
            continue
        if line.strip() == "import torch":
            continue
        lines.append(line)
    tree = ast.parse("\n".join(lines))
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<nncf snippet>", "exec", flags=__future__.annotations.compiler_flag), namespace)
    if last is not None:
        return eval(compile(ast.Expression(last.value), "<nncf snippet>", "eval"), namespace)
    return None


class _Batch(np.ndarray):
    """A numpy batch that also answers torch's ``.numpy()``, as the batches of a torch DataLoader do."""

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


@pytest.fixture
def nncf(monkeypatch):
    """ptqflow standing in for nncf, also for ``import nncf`` and NNCF's submodule paths inside snippets."""
    for name in ("", ".quantization", ".quantization.advanced_parameters", ".parameters", ".scopes"):
        try:
            monkeypatch.setitem(sys.modules, f"nncf{name}", importlib.import_module(f"ptqflow{name}"))
        except ModuleNotFoundError:  # the tests that use the path then fail on it, naming it
            pass
    return ptqflow


def _images(n: int = 12, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """(image batch [1,3,8,8], label) pairs, as a PyTorch-style validation loader yields them."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32).view(_Batch), i % 5) for i in range(n)]


def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the non-QDQ nodes that read at least one dequantized input."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(producer.get(i) == "DequantizeLinear" for i in n.input)}


@pytest.fixture
def doc_model(nncf):
    """Namespace of the examples: the model with the examples' node names, ``dataset`` over real images."""
    return {"nncf": nncf, "model": builders.nncf_doc_names(),
            "dataset": nncf.Dataset(_images(), lambda item: item[0])}


# --- the snippets ---------------------------------------------------------------------------------------


def test_usage_md_workflow(nncf):
    ns = {"nncf": nncf, "model": builders.nncf_doc_names(), "val_dataset": _images()}
    for code in (USAGE_TRANSFORM_FN, USAGE_DATASET, USAGE_QUANTIZE):
        run_snippet(code, ns)
    assert {"layer_1", "conv_out"} <= quantized_nodes(ns["quantized_model"])


def test_usage_md_onnx_transform_check_then_quantize(nncf, tmp_path):
    model = builders.nncf_doc_names()
    path = builders.save(model, tmp_path / "model.onnx")
    ns = {"nncf": nncf, "model_path": str(path), "val_loader": _images(),
          "transform_fn": lambda item: {"input": item[0].numpy()}}
    run_snippet(USAGE_ONNX_CHECK, ns)
    # A transform that passes NNCF's ONNX check serves ptqflow unchanged.
    quantized = nncf.quantize(model, nncf.Dataset(ns["val_loader"], ns["transform_fn"]))
    assert "layer_1" in quantized_nodes(quantized)


def test_ptq_onnx_dataset_quantization_inference(nncf, tmp_path, monkeypatch):
    model = builders.nncf_doc_names()
    monkeypatch.chdir(tmp_path)
    onnx.save(model, "model_path")
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    ns = {"calibration_loader": _images(), "input_name": model.graph.input[0].name, "input_fp32": x}
    for code in (PTQ_ONNX_DATASET, PTQ_ONNX_QUANTIZATION, PTQ_ONNX_INFERENCE):
        run_snippet(code, ns)
    assert ns["nncf"] is nncf
    assert "conv_out" in quantized_nodes(ns["quantized_model"])
    out = ns["res"][0]
    assert out.shape == (1, 5) and np.isfinite(out).all()
    assert (tmp_path / "quantized_model.xml").exists()


@pytest.mark.parametrize("code", [TUNE_PRESET, TUNE_FAST_BIAS_CORRECTION, TUNE_SUBSET_SIZE, TUNE_TARGET_DEVICE],
                         ids=["preset", "fast_bias_correction", "subset_size", "target_device"])
def test_tune_parameters(doc_model, code):
    quantized = run_snippet(code, doc_model)
    assert {"layer_1", "layer_3", "conv_out"} <= quantized_nodes(quantized)


def test_tune_model_type_transformer(nncf):
    ns = {"nncf": nncf, "model": builders.tiny_encoder(), "dataset": nncf.Dataset(builders.token_inputs(8))}
    quantized = run_snippet(TUNE_MODEL_TYPE, ns)
    assert {"q_proj", "ffn1"} <= quantized_nodes(quantized)


@pytest.mark.parametrize("code", [TUNE_IGNORED_NAMES, TUNE_IGNORED_REGEX, TUNE_IGNORED_SUBGRAPH],
                         ids=["names", "regex", "subgraph"])
def test_tune_ignored_scope_layers(doc_model, code):
    quantized = quantized_nodes(run_snippet(code, doc_model))
    assert not quantized & {"layer_1", "layer_2", "layer_3"}
    assert {"node_3", "conv_out"} <= quantized


def test_tune_ignored_pytorch_types_name_what_matched_nothing(doc_model):
    # 'Conv2d' and 'Linear' are PyTorch's types; on an ONNX model NNCF refuses them too (validate=True).
    with pytest.raises(InputError, match=r"type 'Conv2d'.*type 'Linear'.*matched no node"):
        run_snippet(TUNE_IGNORED_TYPES, doc_model)


@pytest.mark.parametrize("code, kept_float", [
    (SCOPE_NAMES, {"node_2", "node_3"}),
    (SCOPE_PATTERNS, {"node_2", "node_3"}),
    (SCOPE_ONNX_TYPES, {"layer_1", "layer_2", "node_2", "node_3", "conv_out"}),
], ids=["names", "patterns", "onnx_types"])
def test_ignored_scope_docstring_examples(doc_model, code, kept_float):
    run_snippet(code, doc_model)
    quantized = quantized_nodes(ptqflow.quantize(doc_model["model"], doc_model["dataset"],
                                                 ignored_scope=doc_model["ignored_scope"]))
    assert quantized and not quantized & kept_float


@pytest.fixture
def sklearn_metrics(monkeypatch):
    """``sklearn.metrics.accuracy_score`` for the snippets: scikit-learn's when installed, else the share of equal
    labels (what it computes for label vectors)."""
    try:
        importlib.import_module("sklearn.metrics")
    except ModuleNotFoundError:
        sklearn, metrics = types.ModuleType("sklearn"), types.ModuleType("sklearn.metrics")
        metrics.accuracy_score = lambda y_true, y_pred: float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
        sklearn.metrics = metrics
        monkeypatch.setitem(sys.modules, "sklearn", sklearn)
        monkeypatch.setitem(sys.modules, "sklearn.metrics", metrics)


def test_accuracy_control_onnx_dataset_validation_quantization(nncf, sklearn_metrics, tmp_path, monkeypatch):
    model = builders.nncf_doc_names()
    monkeypatch.chdir(tmp_path)
    onnx.save(model, "model_path")
    # Labels: the FP32 model's own top-1 class, so that it scores 1.0 and the INT8 model's drop is what it loses.
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    loader = [(images, fp32.run(None, {"input": np.asarray(images)})[0].argmax(1)) for images, _ in _images(16)]
    ns = {"calibration_loader": loader, "input_name": model.graph.input[0].name}
    for code in (AA_ONNX_DATASET, AA_ONNX_VALIDATION, AA_ONNX_QUANTIZATION):
        run_snippet(code, ns)
    assert ns["nncf"] is nncf and ns["validate"](model, loader) == 1.0
    quantized = ns["quantized_model"]
    assert isinstance(quantized, onnx.ModelProto) and quantized_nodes(quantized)
    assert ns["validate"](quantized, loader) >= 0.99  # max_drop=0.01, absolute
    from nncf.quantization import quantize_with_accuracy_control  # NNCF's other import path, same function

    again = quantize_with_accuracy_control(model, ns["calibration_dataset"], ns["validation_dataset"],
                                           validation_fn=ns["validate"], max_drop=0.01)
    assert again.SerializeToString() == quantized.SerializeToString()


# --- NNCF's names and spellings beyond the snippets ------------------------------------------------------


@pytest.mark.parametrize("field", ["names", "patterns", "types"])
def test_one_string_is_one_entry(doc_model, field):
    value = {"names": "layer_1", "patterns": "layer_1", "types": "Gemm"}[field]
    scope = ptqflow.IgnoredScope(**{field: value})
    assert getattr(scope, field) == [value]
    quantized = quantized_nodes(ptqflow.quantize(doc_model["model"], doc_model["dataset"], ignored_scope=scope))
    ignored = "fc" if field == "types" else "layer_1"
    assert ignored not in quantized and "conv_out" in quantized


@pytest.mark.parametrize("pattern", ["zzz_nomatch", "zzz_matches_nothing_.*"])
def test_string_pattern_that_matches_nothing(doc_model, pattern):
    with pytest.raises(InputError, match=re.escape(f"pattern {pattern!r}") + ".*matched no node"):
        ptqflow.quantize(doc_model["model"], doc_model["dataset"], ignored_scope=ptqflow.IgnoredScope(patterns=pattern))
    scope = ptqflow.IgnoredScope(patterns=pattern, validate=False)
    quantized = quantized_nodes(ptqflow.quantize(doc_model["model"], doc_model["dataset"], ignored_scope=scope))
    assert {"layer_1", "conv_out"} <= quantized


def test_subgraph_takes_one_string_and_bad_regex_is_config_error():
    assert ptqflow.Subgraph(inputs="layer_1", outputs="layer_3") == ptqflow.Subgraph(["layer_1"], ["layer_3"])
    assert ptqflow.IgnoredScope(names=None).names == []
    with pytest.raises(ConfigError, match=r"ignored_scope\.patterns: 'conv\(' is not a regular expression"):
        ptqflow.IgnoredScope(patterns=["conv("])


def test_enum_aliases_keep_config_strings(nncf):
    from ptqflow.config import parse_config

    assert nncf.ModelType.Transformer is nncf.ModelType.TRANSFORMER
    assert nncf.parameters.ModelType.TRANSFORMER is nncf.ModelType.TRANSFORMER
    assert nncf.TargetDevice.VPU is nncf.TargetDevice.NPU
    assert [m.value for m in nncf.ModelType] == ["transformer"]  # the schema and --model-type choices stay
    assert nncf.QuantizationPreset.PERFORMANCE.value == "performance" and nncf.QuantizationPreset.MIXED
    q = parse_config({"quantization": {"model_type": "transformer", "preset": "mixed", "target_device": "NPU"}})
    assert q.quantization.model_type is nncf.ModelType.Transformer
    assert q.quantization.target_device is nncf.TargetDevice.VPU
    assert nncf.scopes.IgnoredScope is nncf.IgnoredScope and nncf.scopes.Subgraph is nncf.Subgraph
    assert nncf.parameters.DropType is nncf.DropType and [d.value for d in nncf.DropType] == ["absolute", "relative"]


def test_accuracy_restorer_parameters_nncf_names(nncf):
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, RestoreMode

    assert AdvancedAccuracyRestorerParameters is nncf.AdvancedAccuracyRestorerParameters
    p = AdvancedAccuracyRestorerParameters(max_num_iterations=3, ranking_subset_size=10, num_ranking_workers=2,
                                           restore_mode=RestoreMode.ONLY_ACTIVATIONS)
    assert (p.max_num_iterations, p.tune_hyperparams, p.intermediate_model_dir) == (3, False, None)
    assert AdvancedAccuracyRestorerParameters().restore_mode is RestoreMode.ACTIVATIONS_AND_WEIGHTS


def test_advanced_quantization_parameters_nncf_names(nncf):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    assert AdvancedQuantizationParameters is nncf.AdvancedQuantizationParameters
    assert nncf.quantization.advanced_parameters.AdvancedQuantizationParameters is AdvancedQuantizationParameters
    assert issubclass(AdvancedQuantizationParameters, nncf.AdvancedParameters)
    p = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1))
    assert p.smooth_quant_alpha is None
    assert nncf.AdvancedQuantizationParameters(smooth_quant_alpha=0.6).smooth_quant_alpha == 0.6
    assert nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1).smooth_quant_alpha is None
    p = nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=0.85), overflow_fix=None,
        bias_correction_params=nncf.AdvancedBiasCorrectionParameters(threshold=1.5), inplace_statistics=True)
    assert (p.smooth_quant_alpha, p.bias_correction_threshold, p.overflow_fix) == (
        0.85, 1.5, nncf.AdvancedParameters().overflow_fix)
    assert nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.FIRST_LAYER).overflow_fix == (
        nncf.OverflowFix.FIRST_LAYER)
    with pytest.raises(ValueError, match="backend_params"):
        nncf.AdvancedQuantizationParameters(backend_params={"use_pot": True})
    with pytest.raises(ValueError, match="convolution"):
        nncf.AdvancedQuantizationParameters(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(convolution=0.5))
    with pytest.raises(ValueError, match="activations_range_estimator_params"):
        nncf.AdvancedQuantizationParameters(activations_range_estimator_params=object())


def test_quantize_with_nncf_keywords(doc_model, nncf):
    quantized = nncf.quantize(
        model=doc_model["model"], calibration_dataset=doc_model["dataset"], preset=nncf.QuantizationPreset.MIXED,
        target_device=nncf.TargetDevice.CPU, subset_size=8, fast_bias_correction=True, model_type=None,
        ignored_scope=nncf.IgnoredScope(names=["fc"]),
        advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True))
    assert "fc" not in quantized_nodes(quantized) and "conv_out" in quantized_nodes(quantized)
    from nncf.quantization import quantize

    assert "conv_out" in quantized_nodes(quantize(doc_model["model"], doc_model["dataset"], subset_size=4))
