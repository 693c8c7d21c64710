"""docs/configuration-reference.md is generated from the config schema (scripts/gen_config_docs.py) and current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ptqflow.config import AdvancedParameters, TargetDevice

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_committed_reference_is_current():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_stale_reference_is_reported(gen, tmp_path, monkeypatch, capsys):
    stale = tmp_path / "configuration-reference.md"
    stale.write_text(gen.render().replace("quantization.advanced.per_channel", "per_channel"), encoding="utf-8")
    monkeypatch.setattr(gen, "OUTPUT", stale)
    assert gen.main(["--check"]) == 1
    assert "run: python scripts/gen_config_docs.py" in capsys.readouterr().err


def test_reference_lists_every_advanced_field_and_target_device(gen):
    text = gen.render()
    missing = [name for name in AdvancedParameters.model_fields if f"`quantization.advanced.{name}`" not in text]
    assert not missing, f"not in the reference: {missing}"
    for device in TargetDevice:
        assert f"`{device.value}`" in text


def test_table_cells_escape_pipes_and_tags(gen):
    assert gen._cell("max |x| of\n``models:/<name>``, <TAB>") == "max \\|x\\| of `models:/<name>`, &lt;TAB>"
