"""Statistics collected in shards and merged are exactly what one collection gives: the same values (bytes), the
same plan, the same INT8 model; uneven shards, one shard, and more shards than blocks of samples included."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import builders as B
import ptqflow
from ptqflow.api import collect_partial_statistics, merge_statistics
from ptqflow.config import AdvancedParameters, QuantizationConfig
from ptqflow.errors import ConfigError, InputError
from ptqflow.quantization.statistics.accumulate import MAX_BATCH
from ptqflow.quantization.statistics.partial import PartialStatistics, shard_range

N_SAMPLES = 37  # 5 blocks of MAX_BATCH (the last one short): shards are uneven

CASES = {
    "stacked conv (dynamic batch)": (lambda: B.conv_classifier(), lambda: B.random_inputs(N_SAMPLES, (3, 16, 16), 4)),
    "one sample per run (static batch)": (lambda: B.conv_classifier(dynamic_batch=False),
                                          lambda: B.random_inputs(N_SAMPLES, (3, 16, 16), 5)),
    "rank lost to shape inference": (lambda: B.mlp_rank_lost(seed=3), lambda: B.random_inputs(N_SAMPLES, (5, 16), 6)),
    "transformer": (lambda: B.tiny_encoder(), lambda: B.token_inputs(N_SAMPLES)),
    "depthwise input (a scale per channel: channel maxima)": (lambda: B.separable_block(spread=20.0, size=16),
                                                              lambda: B.random_inputs(N_SAMPLES, (3, 16, 16), 7)),
}


def _sharded(model, samples, config, shards, tmp_path):
    partials = []
    for i in range(shards):
        part = collect_partial_statistics(model, samples, config, shard=i, shards=shards, num_samples=len(samples))
        partials.append(PartialStatistics.load(part.save(tmp_path / f"shard-{shards}-{i}")))  # through the files
    return merge_statistics(reversed(partials), config)  # any order: the shard numbers say where each goes


def _assert_same(a, b):
    assert list(a.values) == list(b.values)
    for oid in a.values:
        assert a.values[oid].dtype == b.values[oid].dtype and a.values[oid].tobytes() == b.values[oid].tobytes(), oid
    assert a.plan.to_json() == b.plan.to_json()
    assert a.points == b.points and a.num_samples == b.num_samples


@pytest.mark.parametrize("case", list(CASES))
def test_merged_shards_equal_one_collection(case, tmp_path):
    model, samples = CASES[case][0](), CASES[case][1]()
    # A transformer shards with SmoothQuant off (its default passes over a sharded collection)
    config = QuantizationConfig(subset_size=300, model_type="transformer" if case == "transformer" else None,
                                advanced=AdvancedParameters(smooth_quant_alpha=None,
                                                            per_channel_depthwise_inputs="depthwise" in case))
    whole = ptqflow.collect_statistics(model, samples, config)
    assert any(p.reducer.value == "mean" for p in whole.points), "FastBiasCorrection's means are part of the check"
    if "depthwise" in case:  # each channel's largest |x|, merged by maximum
        assert any(p.reducer.value == "peak" for p in whole.points)
        assert any(a.axis == 1 and a.channel_absmax for a in whole.plan.activations)
    for shards in (1, 2, 3, 7):  # 7 > 5 blocks: some shards are empty
        merged = _sharded(model, samples, config, shards, tmp_path)
        _assert_same(whole, merged)
    a, b = tmp_path / "whole", tmp_path / "merged"
    whole.save(a), merged.save(b)
    assert (a / "plan.json").read_bytes() == (b / "plan.json").read_bytes()
    one = ptqflow.apply_quantization(model, whole, config, dataset=samples)
    two = ptqflow.apply_quantization(model, merged, config, dataset=samples)
    assert one.SerializeToString() == two.SerializeToString()


def test_safeguard_decisions_are_made_once_on_the_merged_statistics(tmp_path):
    """The outlier safeguard sees every shard's samples: the rare outlier sample is in the last shard only."""
    model = B.conv_classifier()
    samples = B.random_inputs(24, (3, 16, 16), 9)
    samples[-1]["input"] = samples[-1]["input"] * 1e5
    config = QuantizationConfig()
    whole = ptqflow.collect_statistics(model, samples, config)
    assert whole.plan.float_tensors, "the outlier sample triggers the safeguard"
    merged = _sharded(model, samples, config, 3, tmp_path)
    assert [f.tensor for f in merged.plan.float_tensors] == [f.tensor for f in whole.plan.float_tensors]
    _assert_same(whole, merged)


def test_shard_ranges_are_whole_blocks_covering_every_sample_once():
    for n in (0, 1, 7, 8, 9, 37, 300):
        for shards in (1, 2, 3, 7, 40):
            ranges = [shard_range(n, i, shards) for i in range(shards)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert all(start % MAX_BATCH == 0 for start, _ in ranges)
    with pytest.raises(ValueError, match="shard 3 of 3"):
        shard_range(10, 3, 3)


def test_what_cannot_be_sharded_is_refused_by_name(caplog):
    model, samples = B.tiny_encoder(), B.token_inputs(8)
    smooth = QuantizationConfig(model_type="transformer", advanced=AdvancedParameters(smooth_quant_alpha=0.8))
    with pytest.raises(ConfigError, match=r"smooth_quant_alpha \(0.8\).*cannot be collected in shards"):
        collect_partial_statistics(model, samples, smooth, shard=0, shards=2, num_samples=8)
    # SmoothQuant's default (auto) passes over a sharded collection, with a warning
    with caplog.at_level(logging.WARNING, logger="ptqflow"):
        partial = collect_partial_statistics(model, samples, QuantizationConfig(model_type="transformer"), shard=0,
                                             shards=2, num_samples=8)
    assert partial.plan.smooth_quant is None and "SmoothQuant not applied: statistics collected in shards" in caplog.text
    search = QuantizationConfig(advanced=AdvancedParameters(sensitivity_search=True))
    with pytest.raises(ConfigError, match="sensitivity_search"):
        collect_partial_statistics(B.conv_classifier(), B.random_inputs(8, (3, 16, 16)), search, shard=0, shards=2,
                                   num_samples=8)


def test_merging_partials_that_do_not_belong_together_is_an_input_error(tmp_path):
    model, samples = B.conv_classifier(), B.random_inputs(20, (3, 16, 16))
    config = QuantizationConfig()
    parts = [collect_partial_statistics(model, samples, config, shard=i, shards=3, num_samples=20) for i in range(3)]
    with pytest.raises(InputError, match="shards 0..2 of 3 once each"):
        merge_statistics(parts[:2], config)
    with pytest.raises(InputError, match="once each"):
        merge_statistics([parts[0], parts[0], parts[2]], config)
    other = collect_partial_statistics(model, samples, QuantizationConfig(preset="mixed"), shard=1, shards=3,
                                       num_samples=20)
    with pytest.raises(InputError, match="another model or config"):
        merge_statistics([parts[0], other, parts[2]], config)
    shorter = collect_partial_statistics(model, samples, config, shard=1, shards=3, num_samples=12)
    with pytest.raises(InputError, match="starts at sample"):
        merge_statistics([parts[0], shorter, parts[2]], config)
    with pytest.raises(ConfigError, match="expected samples"):
        collect_partial_statistics(model, samples[:10], config, shard=2, shards=3, num_samples=20)
    damaged = parts[0].save(tmp_path / "p0")
    (damaged / "partial.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(InputError, match="format 99"):
        PartialStatistics.load(damaged)


def test_exact_sums_do_not_depend_on_how_samples_are_grouped():
    from ptqflow.quantization.statistics import exact

    rows = np.random.default_rng(1).normal(size=(50, 7)) * 10.0 ** np.random.default_rng(2).integers(-9, 9, (50, 7))
    forward = sum(exact.to_exact(r) for r in rows)
    grouped = exact.to_exact(rows[:13]).sum(axis=0) + exact.to_exact(rows[13:]).sum(axis=0)
    assert exact.mean(forward, 50).tobytes() == exact.mean(grouped, 50).tobytes()
    assert (exact.decode(exact.encode(forward)) == forward).all()
