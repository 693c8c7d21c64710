"""Resemblyzer's LSTMs under dynamic quantization (issue 23's bench, after ``bench/fam_torch.py --models resemblyzer``).

Static quantization keeps the speaker encoder's three LSTM nodes float (no quantizer is placed on an LSTM). This
script measures what quantizing them would cost, on the run's 32 validation inputs (mel spectrograms):

- the embedding's cosine to FP32 for ptqflow's static model (the run's), ``ptqflow.quantize_dynamic``
  (LSTM -> com.microsoft DynamicQuantizeLSTM, MatMul -> MatMulInteger) and onnxruntime's ``quantize_dynamic``;
- the first LSTM alone on the FP32 model's own input to it: float weights vs the int8 codes' dequantized weights
  (the weight error alone, the recurrence in float) vs DynamicQuantizeLSTM.

    PYTHONPATH=src .venv/bin/python bench/lstm_dynamic.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RUN = Path(__file__).resolve().parent / ".work" / "torch" / "resemblyzer" / "run"


def session(model) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def cosines(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    c = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(ref, got)]
    return float(np.mean(c)), float(np.min(c))


def single_node(node: onnx.NodeProto, values: dict) -> ort.InferenceSession:
    inits = [numpy_helper.from_array(values[i], i) for i in node.input[1:] if i]
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return session(model)


def main() -> int:
    import ptqflow
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from ptqflow.data import iter_samples

    fp32_path = RUN / "fetch-model" / "model.onnx"
    if not fp32_path.exists():
        print(f"{fp32_path} missing: run bench/fam_torch.py --models resemblyzer first", file=sys.stderr)
        return 2
    fp32 = onnx.load(str(fp32_path))
    samples = list(iter_samples(RUN / "build-calibration", "validation"))
    dyn = ptqflow.quantize_dynamic(fp32)  # the INT8 ModelProto
    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(str(fp32_path), f"{tmp}/ort.onnx", weight_type=QuantType.QInt8)
        ort_dyn = onnx.load(f"{tmp}/ort.onnx")
    ref = [session(fp32).run(None, s)[0].ravel() for s in samples]
    for name, model in (("ptqflow static (the run's)", RUN / "quantize" / "model.onnx"),
                        ("ptqflow quantize_dynamic", dyn), ("onnxruntime quantize_dynamic", ort_dyn)):
        m = onnx.load(str(model)) if isinstance(model, Path) else model
        lstm_ops = sorted({n.op_type for n in m.graph.node if "LSTM" in n.op_type})
        s = session(m)
        mean, low = cosines(ref, [s.run(None, x)[0].ravel() for x in samples])
        print(f"{name}: embedding cosine to FP32 mean {mean:.4f}, min {low:.4f} ({len(samples)} inputs); {lstm_ops}")

    # the first LSTM alone, on the FP32 model's own input to it (first validation sample)
    lstm = next(n for n in fp32.graph.node if n.op_type == "LSTM")
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    for name in [i for i in lstm.input if i] + [lstm.output[0]]:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    s = session(probe)
    values = dict(zip([o.name for o in s.get_outputs()], s.run(None, samples[0])))
    x = values[lstm.input[0]]
    qnode = next(n for n in dyn.graph.node if n.op_type == "DynamicQuantizeLSTM" and n.name == lstm.name)
    qvalues = {t.name: numpy_helper.to_array(t) for t in dyn.graph.initializer} | {
        i: values[i] for i in lstm.input[3:] if i}
    codes = {k: qvalues[qnode.input[i]].astype(np.float32).transpose(0, 2, 1) * qvalues[qnode.input[j]][..., None]
             for k, i, j in (("W", 1, 8), ("R", 2, 10))}
    exact = single_node(lstm, values).run(None, {lstm.input[0]: x})[0]
    int8_weights = single_node(lstm, values | {lstm.input[1]: codes["W"], lstm.input[2]: codes["R"]}).run(
        None, {lstm.input[0]: x})[0]
    dynamic = single_node(qnode, qvalues).run(None, {lstm.input[0]: x})[0]

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    print(f"first LSTM ({lstm.name}, input {list(x.shape)}): weight error (relative L2) W {rel(values[lstm.input[1]], codes['W']):.4f}, "
          f"R {rel(values[lstm.input[2]], codes['R']):.4f}; hidden states' relative L2 to float: int8 weights in a "
          f"float recurrence {rel(exact, int8_weights):.3f}, DynamicQuantizeLSTM {rel(exact, dynamic):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
