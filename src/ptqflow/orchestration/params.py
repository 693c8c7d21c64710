"""Run parameters of the faces, generated from ptqflow's config schema (one definition, no drift).

Each exposed parameter maps a flat name (``preset``) to a dotted config key (``quantization.preset``); its
type, default, allowed values and description come from ``PipelineConfig``'s JSON schema.
"""

from __future__ import annotations

from typing import Any

from ptqflow.config import PipelineConfig, config_schema, parse_config

# flat parameter name -> dotted config key
EXPOSED: dict[str, str] = {
    "model": "model",
    "data": "data.source",
    "output": "output",
    "preset": "quantization.preset",
    "target_device": "quantization.target_device",
    "subset_size": "quantization.subset_size",
    "fast_bias_correction": "quantization.fast_bias_correction",
    "quant_format": "quantization.quant_format",
    "target_runtime": "quantization.target_runtime",
    "static": "quantization.static",
    "max_accuracy_drop": "validation.gate.max_accuracy_drop",
    "min_cosine": "validation.gate.min_cosine",
    "min_sqnr_db": "validation.gate.min_sqnr_db",
    "min_speedup": "validation.gate.min_speedup",
    "accuracy_control": "validation.accuracy_control.enabled",
    "accuracy_control_max_iterations": "validation.accuracy_control.max_iterations",
    "device": "device",
}


def _resolve(schema: dict, node: dict) -> dict:
    """Follow $ref / single-entry allOf / anyOf-with-null to the property's own schema; keep nullability."""
    nullable = False
    while True:
        if "$ref" in node:
            node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        elif "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            nullable = nullable or len(options) < len(node["anyOf"])
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            node = {**options[0], **rest} if len(options) == 1 else {**rest, "type": [o.get("type") for o in options]}
        else:
            return {**node, "nullable": nullable}


def _property(schema: dict, dotted: str) -> dict:
    node = schema
    for part in dotted.split("."):
        node = _resolve(schema, node)["properties"][part]
    return _resolve(schema, node)


def param_specs() -> dict[str, dict[str, Any]]:
    """{name: {"key", "default", "type" (JSON schema type list), "enum", "description"}} for every exposed
    parameter, read from the config schema; defaults are those of an empty PipelineConfig."""
    schema = config_schema()
    defaults = PipelineConfig().model_dump(mode="json")
    specs = {}
    for name, key in EXPOSED.items():
        prop = _property(schema, key)
        default = defaults
        for part in key.split("."):
            default = default[part]
        types = prop.get("type", "string")
        types = list(types) if isinstance(types, list) else [types]
        if prop["nullable"] or default is None:
            types.append("null")
        specs[name] = {"key": key, "default": default, "type": types, "enum": prop.get("enum"),
                       "description": prop.get("description") or prop.get("title", key)}
    return specs


def is_default(name: str, value: Any, specs: dict | None = None) -> bool:
    """Whether ``value`` is parameter ``name``'s schema default (also as text: "" for None, "0.98")."""
    default = (specs or param_specs())[name]["default"]
    if value == default and type(value) is type(default):
        return True
    if isinstance(value, str) and not isinstance(default, str):
        import yaml  # parameters travel as text through containers ("300", "true", "0.98", "")

        if value == "":
            return default is None
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return False
        return parsed == default and isinstance(parsed, bool) == isinstance(default, bool)
    return False


def overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key config overrides from parameter values (unknown names are ignored: they are the face's).
    A parameter left at its schema default does not override: the base config's value (or the same
    default) applies, so a base config is never silently reset by untouched parameters."""
    specs = param_specs()
    return {EXPOSED[name]: value for name, value in values.items()
            if name in EXPOSED and not is_default(name, value, specs)}


def config_from_params(values: dict[str, Any], base: dict[str, Any] | None = None) -> PipelineConfig:
    """The validated PipelineConfig for one run: ``base`` (a config dict) with the parameters applied;
    ConfigError naming the field if a value is invalid."""
    data = json_copy(base or {})
    for key, value in overrides(values).items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return parse_config(data, "run parameters")


def json_copy(data: Any) -> Any:
    """A deep copy through JSON (parameters and config dicts are JSON by construction)."""
    import json

    return json.loads(json.dumps(data))
