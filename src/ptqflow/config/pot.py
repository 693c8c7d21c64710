"""POT's algorithm configuration read as overrides of ptqflow's config (``ptqflow run --pot-config FILE``).

A POT user has ``{"name": "DefaultQuantization", "params": {"target_device": "ANY", "stat_subset_size": 300}}``
(JSON or YAML; also a one-element list of it, or a POT config's ``compression.algorithms``). Each parameter
ptqflow has an equivalent for maps to one typed config field through ``POT_PARAMS``; every other key, and any
algorithm but DefaultQuantization, is refused by name (ConfigError), never dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ptqflow.errors import ConfigError

ALGORITHM = "DefaultQuantization"
# POT DefaultQuantization parameter -> the ptqflow config field it sets (the values mean the same there).
POT_PARAMS = {
    "target_device": "quantization.target_device",
    "stat_subset_size": "quantization.subset_size",
    "preset": "quantization.preset",
    "model_type": "quantization.model_type",
    "use_fast_bias": "quantization.fast_bias_correction",
}


def _algorithm(doc: Any, origin: str) -> dict:
    """The one algorithm entry of ``doc`` (the entry, a list of one, or a POT config with compression.algorithms)."""
    if isinstance(doc, dict) and "compression" in doc:
        doc = (doc["compression"] or {}).get("algorithms") if isinstance(doc["compression"], dict) else None
    if isinstance(doc, list):
        if len(doc) != 1:
            raise ConfigError(f"{origin}: expected one algorithm ({ALGORITHM}), got {len(doc)}")
        doc = doc[0]
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin}: expected {{'name': '{ALGORITHM}', 'params': {{...}}}}, got {type(doc).__name__}")
    return doc


def pot_overrides(path: str | Path) -> dict[str, Any]:
    """The dotted-key overrides (load.load_config's) that the POT algorithm config at ``path`` means; ConfigError
    naming the file and the key ptqflow does not map."""
    origin = f"--pot-config {path}"
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # JSON is YAML
    except OSError as err:
        raise ConfigError(f"{origin}: cannot read it: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid JSON/YAML: {err}") from None
    algo = _algorithm(doc, origin)
    unknown = sorted(set(algo) - {"name", "params"})
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {', '.join(unknown)}; an algorithm has 'name' and 'params'")
    if algo.get("name") != ALGORITHM:
        raise ConfigError(f"{origin}: algorithm {algo.get('name')!r} is not supported; ptqflow maps {ALGORITHM}")
    params = algo.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{origin}: 'params' must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(POT_PARAMS))
    if unknown:
        raise ConfigError(f"{origin}: params {', '.join(unknown)} not supported; ptqflow maps "
                          f"{', '.join(sorted(POT_PARAMS))}")
    return {POT_PARAMS[k]: v for k, v in params.items()}
