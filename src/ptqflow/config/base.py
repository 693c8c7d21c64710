"""What the configuration models share: the strict base model and the validators of values that have a shape."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ptqflow.errors import ConfigError


class _Strict(BaseModel):
    # allow_inf_nan=False: a NaN threshold compares false with everything, an infinite one can never be met.
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=True, allow_inf_nan=False)


# Field types whose values have a shape: the JSON schema carries the constraint, the before-validator gives one
# readable message instead of pydantic's per-branch ones.
_CALLABLE_SPEC = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"  # as importlib.import_module + getattr take it
_SHA256 = r"^\s*[0-9a-fA-F]{64}\s*$"


def _matching(pattern: str, expected: str):
    def check(value: Any) -> Any:
        if isinstance(value, str) and not re.match(pattern, value):
            raise ValueError(f"expected {expected}")
        return value
    return BeforeValidator(check)


def _size(value: Any) -> Any:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
        isinstance(value, list) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if value is not None and not ok:
        raise ValueError("expected a positive int or [height, width] of positive ints")
    return value


_Positive = Annotated[int, Field(gt=0)]
_HeightWidth = Annotated[list[_Positive], Field(min_length=2, max_length=2)]
_Callable = Annotated[str, Field(pattern=_CALLABLE_SPEC), _matching(_CALLABLE_SPEC, "'module:function'")]


def _str_list(value: Any, where: str) -> list:
    """``value`` as a list: one string is one entry (NNCF's docs pass ``patterns=regex``), None is empty."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise ConfigError(f"{where}: expected a list of strings, got {type(value).__name__}")
