"""Which nodes stay in float: IgnoredScope and its Subgraph (NNCF's names; ``ptqflow.scopes`` aliases them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from typing import Annotated

from pydantic import ConfigDict, Field

from ptqflow.config.base import _str_list
from ptqflow.errors import ConfigError


@dataclass
class Subgraph:
    """A region of the graph bounded by node or tensor names: every node on a path from ``inputs`` to ``outputs``.

    A single string is one name, as in NNCF."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    inputs: Annotated[list[str], Field(description="Node or tensor names where the region starts (included).")] = \
        field(default_factory=list)
    outputs: Annotated[list[str], Field(description="Node or tensor names where the region ends (included).")] = \
        field(default_factory=list)

    def __post_init__(self) -> None:
        self.inputs = _str_list(self.inputs, "Subgraph.inputs")
        self.outputs = _str_list(self.outputs, "Subgraph.outputs")


@dataclass
class IgnoredScope:
    """Nodes to keep in float: by exact name, by regex pattern on names, by op type, or by subgraph.

    ``names``, ``patterns`` and ``types`` take a list, or one string as one entry (``patterns=".*head.*"``).
    A pattern that is not a valid regular expression is a ConfigError naming it. With ``validate=True`` a
    name, pattern, type or subgraph that matches nothing is an error naming it.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")
    names: Annotated[list[str], Field(description="Exact node names kept in float.")] = field(default_factory=list)
    patterns: Annotated[list[str], Field(description="Regular expressions; a node whose name matches one (search or "
                                                     "full match) is kept in float.")] = field(default_factory=list)
    types: Annotated[list[str], Field(description="ONNX op types kept in float, e.g. Softmax.")] = \
        field(default_factory=list)
    subgraphs: Annotated[list[Subgraph], Field(description="Regions between input and output names kept in "
                                                           "float.")] = field(default_factory=list)
    validate: Annotated[bool, Field(description="An entry that matches no node of the model is an error naming it "
                                                "(false: it is ignored).")] = True

    def __post_init__(self) -> None:
        self.names = _str_list(self.names, "ignored_scope.names")
        self.patterns = _str_list(self.patterns, "ignored_scope.patterns")
        self.types = _str_list(self.types, "ignored_scope.types")
        subgraphs = self.subgraphs
        self.subgraphs = ([subgraphs] if isinstance(subgraphs, Subgraph)
                          else _str_list(subgraphs, "ignored_scope.subgraphs"))
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ConfigError(f"ignored_scope.patterns: {pattern!r} is not a regular expression ({err})") from None

    def is_empty(self) -> bool:
        """True when the scope ignores nothing."""
        return not (self.names or self.patterns or self.types or self.subgraphs)
