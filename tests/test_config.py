import json

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
