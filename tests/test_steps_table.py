"""ptqflow.pipeline.steps.STEPS is the one table of the step graph: the step modules, the pipeline, the command line, the
device check and the faces' tables are derived from it and agree with it."""

from __future__ import annotations

import subprocess
import sys

from ptqflow.pipeline import steps
from ptqflow.pipeline.steps import STEPS, load_step


def test_table_shape():
    names = [s.name for s in STEPS]
    assert names == ["fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir",
                     "publish"]
    assert len(set(names)) == len(names) and len({s.output for s in STEPS}) == len(STEPS)
    assert [s.name for s in STEPS if s.optional] == ["publish"]
    assert steps.ACCELERATED_STEPS == {"collect-stats", "quantize", "validate"}
    produced = set()
    for s in STEPS:  # every input is the output of an earlier, non-optional step
        assert set(s.inputs) <= produced, s.name
        if not s.optional:
            produced.add(s.output)


def test_step_modules_take_name_and_inputs_from_the_table():
    for s in STEPS:
        module = load_step(s.name)
        assert module.__name__ == s.module
        assert (module.NAME, tuple(module.INPUTS)) == (s.name, s.inputs)


def test_derived_tables_agree():
    from ptqflow import orchestration as faces
    from ptqflow.orchestration import pod_placement as placement
    from ptqflow.pipeline import runner as pipeline

    assert list(steps.STEP_MODULES) + list(steps.OPTIONAL_STEPS) == [s.name for s in STEPS]
    assert steps.CONFIG_READS == {s.name: s.config_reads for s in STEPS}
    assert faces.STEP_INPUTS == {s.name: s.inputs for s in STEPS if not s.optional}
    assert faces.OPTIONAL_STEP_INPUTS == {"publish": ("model", "quantized", "report", "ir")}
    assert faces.PRODUCERS == pipeline.PRODUCERS == {
        "model": "fetch-model", "calibration": "build-calibration", "statistics": "collect-stats",
        "quantized": "quantize", "report": "validate", "ir": "export-ir"}
    assert placement.ACCELERATED_STEPS is steps.ACCELERATED_STEPS


def test_cli_offers_each_steps_inputs_from_the_table():
    from ptqflow.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for s in STEPS:
        flags = {o for a in sub.choices[s.name]._actions for o in a.option_strings if o.startswith("--in-")}
        assert flags == {f"--in-{i}" for i in s.inputs}, s.name


def test_table_imports_no_step_module_nor_orchestrator():
    """Importing ptqflow.pipeline.steps (after the ptqflow package itself) loads nothing else: no step module, no face."""
    code = ("import sys, ptqflow; before = set(sys.modules); import ptqflow.pipeline.steps; "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['ptqflow.pipeline', 'ptqflow.pipeline.steps']"  # the package is docstring-only
