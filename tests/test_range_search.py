"""Activation ranges chosen by measured error (passes/range_search.py, algorithms/range_search.py): the choice
and its error in the plan, the error measured as the QDQ writer quantizes, and a lower error where tails need it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

import builders
import ptqflow
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.quantization.algorithms.minmax import activation_params
from ptqflow.quantization.algorithms.range_search import Values, choose, squared_error
from ptqflow.quantization.plan import QuantizationPlan


def _heavy_tailed(n: int, seed: int) -> list[dict]:
    """Inputs whose values are mostly small with a few large ones (a Student-t with 2 degrees of freedom)."""
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_t(2, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def test_the_least_error_wins_measured_as_the_writer_quantizes():
    rng = np.random.default_rng(0)
    x = np.abs(rng.laplace(0, 1, 50_000))  # max ~12
    values = Values(0.0, float(x.max()))
    values.add(x)
    # a mean of per-sample maxima far below the global one (few large values per sample) clips too much
    chosen = choose(values, (0.0, 3.0), symmetric=False, signed=False, qtype=None)
    assert chosen["error"] == min(chosen["errors"].values())
    assert chosen["estimator"] != "mean_minmax" and chosen["errors"]["mean_minmax"] > 10 * chosen["error"]
    assert 8 < chosen["max"] <= x.max()  # for 8 bits the least squared error clips little (Banner et al. 2019)
    scale, zp, _ = activation_params(chosen["min"], chosen["max"], False, False)  # the QDQ writer's parameters
    written = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale
    assert squared_error(x, chosen["min"], chosen["max"], False, False, None) == np.mean((written - x) ** 2)


def test_plan_records_the_choice_and_quantized_outputs_are_closer():
    model = builders.conv_classifier()
    calibration, held_out = _heavy_tailed(16, 1), _heavy_tailed(8, 2)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, s)[0] for s in held_out])

    def quantize(**advanced):
        config = QuantizationConfig(subset_size=16, advanced=AdvancedParameters(
            auto_safeguards=False, disable_bias_correction=True, **advanced))
        stats = ptqflow.collect_statistics(model, ptqflow.Dataset(calibration), config)
        q = ptqflow.apply_quantization(model, stats, config, dataset=ptqflow.Dataset(calibration))
        out = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
        error = float(((np.concatenate([out.run(None, s)[0] for s in held_out]) - ref) ** 2).mean() / ref.var())
        return stats.plan, error

    plain, default_error = quantize()
    plan, measured_error = quantize(range_search=True)
    assert plain.ranges == {} and set(plan.ranges) == {p.group for p in plan.activations}
    for record in plan.ranges.values():
        assert record["error"] == min(record["errors"].values()) and record["min"] <= record["max"]
    assert QuantizationPlan.from_json(plan.to_json()).ranges == plan.ranges
    assert any(r["estimator"] != "mean_minmax" for r in plan.ranges.values())
    assert measured_error < default_error, (default_error, measured_error)
