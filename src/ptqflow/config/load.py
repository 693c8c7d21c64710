"""Reading a configuration: from a dict, a YAML/JSON file and dotted overrides; its JSON schema; section dumps
for hashing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ptqflow.config.pipeline import PipelineConfig
from ptqflow.errors import ConfigError


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown field"
        lines.append(f"{origin}: field '{loc}': {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], origin: str = "config") -> PipelineConfig:
    """Validate a plain dict into a PipelineConfig; raise ConfigError naming every bad field."""
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a YAML/JSON config file (optional) and apply dotted-key overrides such as
    ``{"quantization.preset": "mixed"}``; return the validated config."""
    data: dict[str, Any] = {}
    origin = "config"
    if path is not None:
        p = Path(path)
        origin = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_config(data, origin)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted == 'a.b'``, creating intermediate dicts."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def config_schema() -> dict[str, Any]:
    """The JSON schema of PipelineConfig, generated from the code."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ptqflow pipeline configuration"
    return schema


def section_dump(model: BaseModel | Any) -> dict[str, Any]:
    """A JSON-ready dict of a config section (enums as values), stable for hashing."""
    if isinstance(model, BaseModel):
        return json.loads(model.model_dump_json())
    from pydantic import TypeAdapter

    return json.loads(TypeAdapter(type(model)).dump_json(model))
