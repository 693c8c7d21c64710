import json
import re

import pytest

from ptqflow.config import QuantizationPreset, config_schema, load_config, parse_config
from ptqflow.errors import ConfigError


def test_defaults_match_nncf():
    cfg = parse_config({})
    assert cfg.quantization.subset_size == 300
    assert cfg.quantization.fast_bias_correction is True
    assert cfg.quantization.effective_preset() == QuantizationPreset.PERFORMANCE
    assert parse_config({"quantization": {"model_type": "transformer"}}).quantization.effective_preset() == (
        QuantizationPreset.MIXED
    )


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"quantization\.presett.*unknown field"):
        parse_config({"quantization": {"presett": "mixed"}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"quantization\.subset_size"):
        parse_config({"quantization": {"subset_size": "many"}})
    with pytest.raises(ConfigError, match=r"quantization\.ignored_scope\.bogus"):
        parse_config({"quantization": {"ignored_scope": {"bogus": 1}}})


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("quantization:\n  preset: mixed\n  subset_size: 10\n")
    cfg = load_config(p, {"quantization.subset_size": 20, "quantization.ignored_scope.types": ["Softmax"]})
    assert cfg.quantization.preset == QuantizationPreset.MIXED
    assert cfg.quantization.subset_size == 20
    assert cfg.quantization.ignored_scope.types == ["Softmax"]


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_schema_is_generated():
    schema = config_schema()
    json.dumps(schema)
    assert "quantization" in schema["properties"]
    assert schema["$defs"]["QuantizationConfig"]["properties"]["subset_size"]["default"] == 300


@pytest.mark.parametrize("data, field", [
    ({"validation": {"gate": {"min_cosine": 1.5}}}, "validation.gate.min_cosine"),
    ({"validation": {"gate": {"min_cosine": -1.01}}}, "validation.gate.min_cosine"),
    ({"validation": {"gate": {"min_top1_agreement": 1.2}}}, "validation.gate.min_top1_agreement"),
    ({"validation": {"gate": {"min_speedup": 0}}}, "validation.gate.min_speedup"),
    ({"validation": {"gate": {"min_sqnr_db": float("nan")}}}, "validation.gate.min_sqnr_db"),
    ({"validation": {"gate": {"max_accuracy_drop": -0.1}}}, "validation.gate.max_accuracy_drop"),
    ({"validation": {"gate": {"max_accuracy_drop": 1.5, "accuracy_drop_mode": "relative"}}}, "validation.gate"),
    ({"validation": {"metric": "my_metrics.top1"}}, "validation.metric"),
    ({"validation": {"latency_iterations": 0}}, "validation.latency_iterations"),
    ({"data": {"max_bad_fraction": 1.5}}, "data.max_bad_fraction"),
    ({"data": {"seed": -1}}, "data.seed"),
    ({"data": {"transform": "tokenize"}}, "data.transform"),
    ({"data": {"preprocess": {"resize": [224]}}}, "data.preprocess.resize"),
    ({"data": {"preprocess": {"resize": 0}}}, "data.preprocess.resize"),
    ({"data": {"preprocess": {"center_crop": [224, -1]}}}, "data.preprocess.center_crop"),
    ({"data": {"preprocess": {"std": [0.2, 0.0, 0.2]}}}, "data.preprocess.std.1"),
    ({"data": {"preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.2]}}}, "data.preprocess"),
    ({"data": {"preprocess": {"scale": 0}}}, "data.preprocess.scale"),
    ({"export": {"parity_tolerance": float("inf")}}, "export.parity_tolerance"),
    ({"quantization": {"advanced": {"smooth_quant_alpha": 1.5}}}, "quantization.advanced.smooth_quant_alpha"),
    ({"model_sha256": "abc123"}, "model_sha256"),
])
def test_values_that_cannot_hold_are_named(data, field):
    with pytest.raises(ConfigError, match=rf"field '{re.escape(field)}'"):
        parse_config(data)


def test_values_at_their_bounds_are_accepted():
    cfg = parse_config({
        "validation": {"gate": {"min_cosine": -1.0, "min_top1_agreement": 1.0, "max_accuracy_drop": 2.5,
                                "min_sqnr_db": -20.0}, "metric": "my_pkg.metrics:top1"},
        "data": {"max_bad_fraction": 0.0, "seed": 0, "transform": "tok:tok",
                 "preprocess": {"resize": 256, "center_crop": [224, 224], "mean": [0.5], "std": [0.25]}},
        "model_sha256": "A" * 64,
    })
    assert cfg.validation.gate.max_accuracy_drop == 2.5  # absolute drops are in the metric's own unit
    assert parse_config({"validation": {"gate": {"max_accuracy_drop": 1.0, "accuracy_drop_mode": "relative"}}})
