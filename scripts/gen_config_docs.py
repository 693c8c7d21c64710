"""Regenerate docs/configuration-reference.md from ptqflow's config schema, or check it is current:

    python scripts/gen_config_docs.py [--check]

The reference has one section per config section (the top-level keys, quantization, quantization.advanced,
data.preprocess, ...), found by following the schema's ``$ref``s into ``$defs``, each a table of dotted key,
type (enum values, bounds, nullability), default and description. Everything comes from
``ptqflow.config.config_schema()`` (``ptqflow config-schema``), except the defaults the schema leaves out
(pydantic omits ``default_factory`` values such as ``ignored_scope.names``), which come from
``PipelineConfig()``.

The template is a few f-strings: a Markdown table needs no template engine (and a new dev dependency would make
the committed constraints stale until `make locks`).

``--check`` writes nothing and exits 1 when the committed file differs (tests/test_config_docs.py runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration-reference.md"
COMMAND = "python scripts/gen_config_docs.py"
NO_DEFAULT = object()


@dataclass
class Section:
    """One table of the reference: the section's dotted key ('' for the top level), its intro and its rows."""

    key: str
    intro: list[str]
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


def _markdown(text: str) -> str:
    """Description text as Markdown: RST literals as Markdown code, ``<`` outside code escaped (so that
    models:/<name> is not read as an HTML tag)."""
    parts = text.replace("``", "`").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    """``text`` fit for a Markdown table cell: on one line, ``|`` escaped."""
    return _markdown(" ".join(text.split())).replace("|", "\\|")


def _code(value: str) -> str:
    return f"`{value}`"


def _def(node: dict, defs: dict) -> dict:
    """The schema ``node`` stands for: its ``$defs`` target when it is a ``$ref``, else itself."""
    ref = node.get("$ref", "")
    return defs[ref.split("/")[-1]] if ref.startswith("#/$defs/") else node


def _section_def(node: dict, defs: dict) -> tuple[dict | None, bool]:
    """(the object schema with properties that ``node`` is, directly or as the one non-null choice of an
    ``anyOf``, or None; whether ``null`` is allowed)."""
    choices = node.get("anyOf", [node])
    nullable = any(c.get("type") == "null" for c in choices)
    others = [_def(c, defs) for c in choices if c.get("type") != "null"]
    if len(others) == 1 and "properties" in others[0]:
        return others[0], nullable
    return None, nullable


def _bounds(node: dict) -> str:
    """'in [0, 1]', '> 0', '>= 1', ... from the schema's minimum/maximum keywords, or ''."""
    low = [(f"[{node['minimum']}", f">= {node['minimum']}")] if "minimum" in node else []
    low += [(f"({node['exclusiveMinimum']}", f"> {node['exclusiveMinimum']}")] if "exclusiveMinimum" in node else []
    high = [(f"{node['maximum']}]", f"<= {node['maximum']}")] if "maximum" in node else []
    high += [(f"{node['exclusiveMaximum']})", f"< {node['exclusiveMaximum']}")] if "exclusiveMaximum" in node else []
    if low and high:
        return f"in {low[0][0]}, {high[0][0]}"
    return (low or high or [("", "")])[0][1]


def _enum(values: list) -> str:
    """'one of `a`, `b`', each value once (an enum alias repeats its value in the schema)."""
    return "one of " + ", ".join(_code(str(v)) for v in dict.fromkeys(values))


def _type(node: dict, defs: dict, key: str) -> str:
    """The type of the schema ``node`` at dotted ``key`` in words: enum values, bounds, item counts, null."""
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        text = " or ".join(_type(c, defs, key) for c in choices)
        return text + " or `null`" if len(choices) < len(node["anyOf"]) else text
    target = _def(node, defs)
    if "properties" in target:
        return f"object (section `{key}`)"
    if "enum" in target:
        return _enum(target["enum"])
    if "const" in target:
        return _code(target["const"])
    kind = target.get("type", "any")
    if kind == "array":
        items = target.get("items", {})
        item_def, _ = _section_def(items, defs)
        item = f"object (section `{key}[]`)" if item_def else _type(items, defs, key + "[]")
        item = f"({item})" if " " in item and not item_def else item
        low, high = target.get("minItems"), target.get("maxItems")
        count = (f"{low} " if low is not None and low == high
                 else f"{low} or more " if low else f"at most {high} " if high is not None else "")
        return f"list of {count}{item}"
    text = " ".join(p for p in (kind, _bounds(target)) if p)
    if "pattern" in target:
        text += f" matching {_code(target['pattern'])}"
    return text


def _default(value: Any) -> str:
    if value is NO_DEFAULT:
        return "—"
    return _code(value if isinstance(value, str) else json.dumps(value, separators=(", ", ": ")))


def _dumped_default(defaults: dict, key: str) -> Any:
    """The value of dotted ``key`` in ``PipelineConfig()``'s dump, or NO_DEFAULT (a key below a list)."""
    value: Any = defaults
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return NO_DEFAULT
        value = value[part]
    return value


def _intro(prop: dict, target: dict, nullable: bool) -> list[str]:
    """The paragraphs above a section's table: the key's own description, the section model's, and null."""
    texts = [prop.get("description", ""), target.get("description", "")]
    paragraphs = [_markdown(p) for p in dict.fromkeys(t.strip() for t in texts if t.strip())]
    if nullable:
        shown = f" (the default: {_default(prop['default'])})" if "default" in prop else ""
        paragraphs.append(f"The whole section may be `null`{shown}.")
    return paragraphs


def collect_sections(schema: dict, defaults: dict) -> list[Section]:
    """The reference's sections in the schema's order, depth first: a section's table, then its subsections."""
    defs = schema.get("$defs", {})
    sections: list[Section] = []

    def visit(key: str, target: dict, intro: list[str]) -> None:
        section = Section(key, intro)
        sections.append(section)
        below: list[tuple[str, dict, list[str]]] = []
        for name, prop in target.get("properties", {}).items():
            dotted = f"{key}.{name}" if key else name
            sub, nullable = _section_def(prop, defs)
            items = _section_def(prop.get("items", {}), defs)[0] if prop.get("type") == "array" else None
            description = prop.get("description", "") or (sub or {}).get("description", "")
            if sub is not None:
                default = _default(prop["default"]) if "default" in prop else "see the section"
                below.append((dotted, sub, _intro(prop, sub, nullable)))
            else:
                default = _default(prop["default"] if "default" in prop else _dumped_default(defaults, dotted))
                if items is not None:
                    below.append((f"{dotted}[]", items, _intro({}, items, False)))
            section.rows.append((_code(dotted), _cell(_type(prop, defs, dotted)), _cell(default),
                                 _cell(description) or "—"))
        for sub_key, sub_target, sub_intro in below:
            visit(sub_key, sub_target, sub_intro)

    visit("", schema, [_markdown(schema.get("description", ""))])
    return sections


def render(schema: dict | None = None, defaults: dict | None = None) -> str:
    """The Markdown reference for ``schema`` (default: ptqflow's config schema) and ``defaults`` (default:
    ``PipelineConfig()`` dumped as JSON)."""
    if schema is None or defaults is None:
        from ptqflow.config import PipelineConfig, config_schema

        schema = config_schema() if schema is None else schema
        defaults = PipelineConfig().model_dump(mode="json") if defaults is None else defaults
    lines = [
        "# Configuration reference",
        "",
        f"*Generated from the config schema (`ptqflow config-schema`) by `{COMMAND}`; do not edit by hand.*",
        "",
        "Every key of the pipeline config, section by section; [configuration.md](configuration.md) explains how",
        "the config is read and the precedence of files, flags and `--set dotted.key=value`.",
    ]
    for section in collect_sections(schema, defaults):
        lines += ["", f"## {_code(section.key) if section.key else 'Top level'}", ""]
        for paragraph in section.intro:
            lines += [paragraph, ""]
        lines += ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
        lines += [f"| {' | '.join(row)} |" for row in section.rows]
    return "\n".join(lines) + "\n"


def is_current(path: Path = OUTPUT) -> bool:
    """Whether ``path`` holds exactly what the generator would write."""
    return path.exists() and path.read_text(encoding="utf-8") == render()


def main(argv: list[str] | None = None) -> int:
    """Write the reference (or, with --check, say whether it is stale); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check the committed file (exit 1 if stale)")
    a = ap.parse_args(argv)
    where = OUTPUT.relative_to(ROOT) if OUTPUT.is_relative_to(ROOT) else OUTPUT
    if a.check:
        if is_current(OUTPUT):
            return 0
        print(f"stale: {where} differs from the config schema (run: {COMMAND})", file=sys.stderr)
        return 1
    text = render()
    if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
