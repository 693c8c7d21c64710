"""Which activation quantizers the onnxruntime placement (target_runtime onnxruntime) adds to a classifier beyond
the OpenVINO placement, grouped by the op producing the quantized tensor, and what each group costs against FP32 on
the validation samples a bench run left in its work directory: argmax agreement and the mean total-variation
distance of the class distributions, for the OpenVINO plan, the onnxruntime plan, and the onnxruntime plan with
one group kept float (statistics collected once, default config otherwise).

Usage: placement_diff.py WORK_DIR MODEL   (e.g. placement_diff.py bench/.work cls, after a bench run on cls)
"""
import argparse
import collections
import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ptqflow  # noqa: E402
from ptqflow.config import QuantizationConfig  # noqa: E402
from ptqflow.data.shards import iter_samples  # noqa: E402
from ptqflow.quantization.graph.index import GraphIndex  # noqa: E402
from ptqflow.quantization.graph.prepare import prepare_model  # noqa: E402
from run import TASKS  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("model")
args = ap.parse_args()
work = Path(args.work) / args.model
model = onnx.load(TASKS[args.model]().model_path)
cal = list(iter_samples(work / "data", "calibration"))
val = list(iter_samples(work / "data", "validation"))
name = model.graph.input[0].name

def run(m):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {name: v[name]})[0] for v in val])

ref = run(model)
def score(out):
    agree = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    tv = float(np.mean(0.5 * np.abs(out - ref).sum(-1)))
    return {"agree": round(agree, 4), "tv": round(tv, 5)}

results = {}
plans = {}
for rt in ("openvino", "onnxruntime"):
    cfg = QuantizationConfig(subset_size=len(cal), target_runtime=rt)
    st = ptqflow.collect_statistics(model, ptqflow.Dataset(cal), cfg, keep_samples=len(cal))
    res = ptqflow.quantize_with_summary(model, st, cfg, dataset=ptqflow.Dataset(cal))
    results[rt] = score(run(res.model))
    plans[rt] = (st, cfg, res)
    print(rt, results[rt], "activation quantizers", len(res.plan.activations), "kept float by passes",
          [(f.tensor, f.by) for f in res.plan.float_tensors], flush=True)

ov_t = {a.tensor for a in plans["openvino"][2].plan.activations}
st, cfg, res = plans["onnxruntime"]
prepared = prepare_model(model, cfg.advanced)[0]
g = GraphIndex(prepared)
extra = [a for a in st.plan.activations if a.tensor not in ov_t]
groups = collections.defaultdict(list)
for a in extra:
    p = g.producer.get(a.tensor)
    groups[p.op_type if p is not None else "input"].append(a.tensor)
print("onnxruntime-only quantizers by producer:", {k: len(v) for k, v in groups.items()}, flush=True)
for op, tensors in groups.items():
    s2 = copy.deepcopy(st)
    s2.plan.activations = [a for a in s2.plan.activations if a.tensor not in set(tensors)]
    m2 = ptqflow.quantize_with_summary(model, s2, cfg, dataset=ptqflow.Dataset(cal)).model
    print(f"onnxruntime minus {op} ({len(tensors)})", score(run(m2)), flush=True)
