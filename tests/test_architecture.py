"""The architecture of docs/architecture.md, checked.

Inside the package, import-linter's contracts in pyproject.toml (``[tool.importlinter]``) say which part may import
which; ``lint-imports`` checks them and these tests fail when it finds a broken one. dags/ and components/ sit
outside the package, so a small ast walk checks that they only wire: they import the faces, their orchestrator's
SDK and the standard library, and nothing that quantizes.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

AIRFLOW_FACE = ("ptqflow.orchestration.airflow_face", "ptqflow.orchestration.airflow_k8s")
KFP_FACE = ("ptqflow.orchestration.kfp_face", "ptqflow.orchestration.kfp_local", "ptqflow.orchestration.kfp_runtime",
            "ptqflow.orchestration.kfp_submit")


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` run in ``cwd`` (it reads cwd's pyproject.toml); --no-cache leaves no cache directory."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]'), which brings "
                    f"import-linter")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, f"lint-imports found a broken contract:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    """The check is live: a copy of the package with an algorithm importing a step fails lint-imports."""
    shutil.copytree(ROOT / "src" / "ptqflow", tmp_path / "src" / "ptqflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src" / "ptqflow" / "quantization" / "algorithms" / "_forbidden.py").write_text(
        "from ptqflow.pipeline.steps import load_step  # an algorithm reaching into the steps\n")
    # The copy comes first on the path, ahead of the installed (editable) ptqflow.
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    result = _lint_imports(tmp_path, env)
    assert result.returncode != 0, result.stdout
    assert "ptqflow.quantization.algorithms._forbidden -> ptqflow.pipeline.steps" in result.stdout, result.stdout


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (relative imports would be a bug here)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import of {node.module!r}"
            found.add(node.module)
    return found


def _allowed(module: str, sdk: str, face: tuple[str, ...]) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__" or top == sdk:
        return True
    if module == "ptqflow.orchestration":
        return True
    if module.startswith("ptqflow.orchestration."):
        other = KFP_FACE if face == AIRFLOW_FACE else AIRFLOW_FACE
        return not any(module == m or module.startswith(m + ".") for m in other)
    return False


@pytest.mark.parametrize(("folder", "sdk", "face"), [("dags", "airflow", AIRFLOW_FACE),
                                                     ("components", "kfp", KFP_FACE)])
def test_orchestrator_files_only_wire(folder, sdk, face):
    """dags/ and components/ import only ptqflow.orchestration (their own orchestrator's modules and the shared ones),
    their orchestrator's SDK and the standard library: the quantization logic stays in the package."""
    files = sorted((ROOT / folder).glob("*.py"))
    assert files, f"no Python files in {folder}/"
    wrong = {f"{path.relative_to(ROOT)}: {module}" for path in files for module in _imports(path)
             if not _allowed(module, sdk, face)}
    assert not wrong, (f"{folder}/ may import only ptqflow.orchestration.*, {sdk} and the standard library "
                       f"(docs/architecture.md); found: {sorted(wrong)}")
