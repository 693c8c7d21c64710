"""Regenerate the parts of the Helm chart (helm/ptqflow) that come from the code, or check they are current:

    python scripts/gen_helm_schema.py [--check]

- values.schema.json: ``properties.pipelineConfig`` is ptqflow's config schema (``ptqflow config-schema``),
  ``properties.hook.properties.config`` the hook service's (``ptqflow.registry.hooks.config.HookConfig``), the root
  ``$defs`` what both refer to; every other key of the file is written by hand and kept as it is.
- files/ptqflow_quantize.py (the DAG file of the Airflow ConfigMap) is a copy of dags/ptqflow_quantize.py;
  files/ptqflow_pipeline.yaml (the pipeline the KFP upload Job uses by default) of
  components/ptqflow_pipeline.yaml.

``--check`` writes nothing and exits 1 naming each stale file (tests/helm runs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "ptqflow"
SCHEMA = CHART / "values.schema.json"
COPIES = {CHART / "files" / "ptqflow_quantize.py": ROOT / "dags" / "ptqflow_quantize.py",
          CHART / "files" / "ptqflow_pipeline.yaml": ROOT / "components" / "ptqflow_pipeline.yaml"}
PIPELINE_CONFIG_DESCRIPTION = ("The default ptqflow pipeline config (the YAML file `ptqflow <step> --config` reads), "
                               "rendered into the ConfigMap <fullname>-pipeline-config, key config.yaml; "
                               "generated from `ptqflow config-schema`.")
HOOK_CONFIG_DESCRIPTION = ("The non-secret hook configuration, rendered as /etc/ptqflow/hook.yaml (ConfigMap "
                           "<fullname>-hook); {} when the hook is not used. pipeline.config defaults to "
                           "pipelineConfig. Generated from ptqflow's hook config.")


def _describe_refs(node: dict, defs: dict) -> None:
    """Give each property that is a bare ``$ref`` to a section a default ({}: all defaults) and the
    section's description, so every key of the values file is typed, defaulted and described."""
    for prop in node.get("properties", {}).values():
        ref = prop.get("$ref", "")
        if ref.startswith("#/$defs/"):
            target = defs[ref.split("/")[-1]]
            prop.setdefault("default", {} if target.get("type") == "object" else None)
            prop.setdefault("description", target.get("description", ""))


def _split(schema: dict) -> tuple[dict, dict]:
    """(the schema without $defs/$schema/title, its $defs), each property of a section described."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})
    for key in ("$schema", "title"):
        schema.pop(key, None)
    _describe_refs(schema, defs)
    for section in defs.values():
        _describe_refs(section, defs)
    return schema, defs


def pipeline_config_schema() -> tuple[dict, dict]:
    """(the pipelineConfig property, the $defs it refers to) from ptqflow's config schema."""
    from ptqflow.config import config_schema

    schema, defs = _split(config_schema())
    schema["description"] = PIPELINE_CONFIG_DESCRIPTION
    schema["default"] = {}
    return schema, defs


def hook_config_schema() -> tuple[dict, dict]:
    """(the hook.config property, the $defs it refers to): {} (no hook) or a valid hook.yaml."""
    from ptqflow.registry.hooks.config import HookConfig

    schema, defs = _split(HookConfig.model_json_schema())
    defs["HookConfig"] = schema
    prop = {"description": HOOK_CONFIG_DESCRIPTION, "default": {},
            "anyOf": [{"type": "object", "maxProperties": 0}, {"$ref": "#/$defs/HookConfig"}]}
    return prop, defs


def _merge_defs(*parts: dict) -> dict:
    """One sorted $defs from several; the same name must mean the same schema."""
    merged: dict = {}
    for defs in parts:
        for name, schema in defs.items():
            if merged.get(name, schema) != schema:
                raise SystemExit(f"$defs name clash: {name} differs between the pipeline and hook config schemas")
            merged[name] = schema
    return dict(sorted(merged.items()))


def expected_files() -> dict[Path, str]:
    """{path: the content it should have}."""
    current = json.loads(SCHEMA.read_text(encoding="utf-8"))
    pipeline, pipeline_defs = pipeline_config_schema()
    hook, hook_defs = hook_config_schema()
    current["properties"]["pipelineConfig"] = pipeline
    current["properties"]["hook"]["properties"]["config"] = hook
    current["$defs"] = _merge_defs(pipeline_defs, hook_defs)
    out = {SCHEMA: json.dumps(current, indent=2) + "\n"}
    for copy_path, source in COPIES.items():
        out[copy_path] = source.read_text(encoding="utf-8")
    return out


def stale_files() -> list[Path]:
    """Files whose content differs from what the generator would write."""
    return [p for p, text in expected_files().items()
            if not p.exists() or p.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    """Write the stale files (or, with --check, name them); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    a = ap.parse_args(argv)
    if a.check:
        stale = stale_files()
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run: python scripts/gen_helm_schema.py)", file=sys.stderr)
        return 1 if stale else 0
    for p, text in expected_files().items():
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")
            print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
