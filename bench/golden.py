"""Golden check for refactors that must not change numbers: sha256 of the INT8 model bytes and of the plan for the
bench models (PP-OCR cls/rec/det with FastBiasCorrection and with BiasCorrection, all-MiniLM-L6-v2 when the bench
environment has it, and the test suite's tiny encoder), each on fixed rendered data.

    python bench/golden.py > before.json            # on the old commit (PYTHONPATH=<old checkout>/src)
    python bench/golden.py --compare before.json    # on the new one: exit 1 naming each case that differs

Plans are compared as JSON with the fields that only record provenance set aside (the plan version and each float
decision's ``by``), so a plan that says more about the same decisions still matches; the INT8 bytes must be
identical. Hashes depend on the installed onnx/onnxruntime/OpenVINO versions and may differ between CPUs (the
statistics pass's float reductions): compare two commits on one machine and one environment, never across them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import onnx  # noqa: E402

import builders  # noqa: E402
import transforms  # noqa: E402
from ptqflow import demo  # noqa: E402
from ptqflow.api import collect_statistics, quantize_with_summary  # noqa: E402
from ptqflow.config import QuantizationConfig  # noqa: E402


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def plan_digest(plan) -> str:
    """The plan's hash with provenance-only fields (version, each float decision's ``by``) set aside."""
    doc = json.loads(json.dumps(plan.to_json() if hasattr(plan, "to_json") else plan))
    doc["version"] = None
    for key in ("float_layers", "float_tensors"):
        for decision in doc.get(key, []):
            decision.pop("by", None)
    if not doc.get("float_tensors"):
        doc.pop("float_tensors", None)
    return _sha(json.dumps(doc, sort_keys=True).encode())


def _case(model, samples, config) -> list[str]:
    stats = collect_statistics(model, samples, config)
    result = quantize_with_summary(model, stats, config, dataset=samples)
    return [_sha(result.model.SerializeToString()), plan_digest(stats.plan)]


def _ocr_samples(kind: str, name: str, n: int) -> list[dict]:
    rng = random.Random(0)
    if kind == "cls":
        arrays = [transforms.cls(demo.render_cls_sample(rng, [])[0]) for _ in range(n)]
    elif kind == "rec":
        arrays = [transforms.rec(demo.render_rec_line(rng, [])[0]) for _ in range(n)]
    else:
        arrays = [transforms.det(demo.render_page(rng, 640, 480, fonts=[])[0]) for _ in range(n)]
    return [{name: a if a.ndim == 4 else a[None]} for a in arrays]


def _minilm(work: Path):
    """(model, samples) for all-MiniLM-L6-v2, or None outside the bench environment (bench/setup.sh)."""
    try:
        import encoder
        bench_encoder = encoder.Encoder(work)
    except Exception as exc:  # torch/transformers/the weights package missing: not the bench environment
        print(f"golden: MiniLM skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return onnx.load(str(bench_encoder.model_path)), [transforms.encoder(s) for s in encoder.sentences(32, 0)]


def run(work: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind, n in (("cls", 24), ("rec", 24), ("det", 6)):
        model = onnx.load(str(demo.rapidocr_model(kind)))
        samples = _ocr_samples(kind, model.graph.input[0].name, n)
        for fast in (True, False):
            out[f"{kind}-{'fbc' if fast else 'bc'}"] = _case(
                model, samples, QuantizationConfig(subset_size=n, fast_bias_correction=fast))
    minilm = _minilm(work)
    if minilm is not None:
        out["minilm"] = _case(minilm[0], minilm[1], QuantizationConfig(subset_size=32, model_type="transformer"))
        out["minilm-detected"] = _case(minilm[0], minilm[1], QuantizationConfig(subset_size=32))
    out["tiny-encoder"] = _case(builders.tiny_encoder(), builders.token_inputs(16),
                                QuantizationConfig(subset_size=16, model_type="transformer"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=Path, help="a JSON file this script wrote before; exit 1 on any difference")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "golden", help="where the bench exports MiniLM (cached)")
    args = ap.parse_args()
    result = run(args.work)
    print(json.dumps(result, indent=1))
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text(encoding="utf-8"))
    differ = [k for k in sorted(set(before) | set(result)) if before.get(k) != result.get(k)]
    for k in differ:
        print(f"golden: {k}: {before.get(k)} -> {result.get(k)}", file=sys.stderr)
    print(f"golden: {len(result) - len(differ)} of {len(set(before) | set(result))} cases identical", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
