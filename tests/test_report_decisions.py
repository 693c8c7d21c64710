"""report.html's quantization decisions: the per-layer table, the bias-correction verdicts, the charts and the
ignored_scope snippet, from real quantizations of tiny models and from rows carrying the engine's measured keys
(the err20 contract: ``measured``, ``output_error``, held-out bias-correction errors)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

import builders as B
import ptqflow
from ptqflow.api import quantize_with_config
from ptqflow.config import AdvancedParameters, PipelineConfig, QuantizationConfig
from ptqflow.errors import InputError
from ptqflow.pipeline.report import write_report
from ptqflow.pipeline.steps.quantize import with_readers
from test_report import sample_report

jsonschema = pytest.importorskip("jsonschema")
SHAPE = (3, 8, 8)
# Names a model may carry that are markup, template syntax, TeX (matplotlib's mathtext), quotes and line breaks.
# the Softmax-head rule asked for by name (by default mixed precision measures the head instead): a decision
# made by a rule, with no measurement, for the report to show
RULED_HEAD = AdvancedParameters(safeguard_softmax_heads=True)
HOSTILE = {"conv": "<script>alert('conv')</script>", "fc": "fc\" onmouseover=\"x\"\n{{ 7*7 }} $\\frac{1}{0}$ & <b>"}


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, and every <pre> by id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables, self.pre, self._cell, self._pre_id = [], {}, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "pre":
            self._pre_id = dict(attrs).get("id") or ""
            self.pre[self._pre_id] = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "pre":
            self._pre_id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._pre_id is not None:
            self.pre[self._pre_id] += data


def _page(tmp_path: Path, decisions: list[dict] | None, **extra) -> tuple[str, _Tables]:
    report = sample_report()
    report["config"] = {}
    if decisions is not None:
        report["decisions"] = decisions
    report.update(extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_report(tmp_path, report)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    parsed = _Tables()
    parsed.feed(page)
    return page, parsed


def _table(parsed: _Tables, first_header: str, second: str) -> dict[str, dict[str, str]]:
    """The table whose headers begin (first_header, second), as {first cell: {header: cell}}."""
    table = next(t for t in parsed.tables if t and t[0][:2] == [first_header, second])
    return {row[0]: dict(zip(table[0], row)) for row in table[1:]}


def _renamed(model, names: dict[str, str]):
    for node in model.graph.node:
        node.name = names.get(node.name, node.name)
    return model


def _samples(n: int = 10) -> list[dict]:
    samples = B.random_inputs(n, SHAPE, seed=2)
    samples[3]["input"] = samples[3]["input"] * 1e5  # beyond outlier_abs_max: the outlier safeguard keeps it float
    return samples


def _float_nodes(int8) -> set[str]:
    """Nodes of a QDQ model none of whose inputs comes from a DequantizeLinear."""
    dq = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in int8.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and not any(i in dq for i in n.input)}


def test_a_real_run_with_hostile_names_shows_its_decisions_and_a_scope_that_reproduces_them(tmp_path):
    model, samples = _renamed(B.mask_and_class_heads(), HOSTILE), _samples()
    result = quantize_with_config(model, samples, QuantizationConfig(advanced=RULED_HEAD))
    rows = with_readers(list(result.layers), result.model)
    page, parsed = _page(tmp_path, rows)

    # Names are text: escaped in the table, the snippets and the charts, never markup; no script, no address.
    assert "<script" not in page and HOSTILE["fc"] not in page and "<b>" not in page
    assert "&lt;script&gt;alert(" in page and "{{ 7*7 }}" in page  # template syntax in a name stays text
    assert not re.search(r"https?://|www\.", page) and not re.search(r"url\((?!#)", page)
    jsonschema.validate(json.loads((tmp_path / "report.json").read_text()),
                        json.loads((Path(ptqflow.__file__).parent / "pipeline/report/schema.json").read_text()))

    table = _table(parsed, "layer", "op")
    fc, conv = table[HOSTILE["fc"]], table[HOSTILE["conv"]]
    assert (fc["precision"], fc["decided by"], fc["weight"]) == ("float", "safeguard_softmax_heads", "float")
    assert (conv["precision"], conv["weight"], conv["quantized inputs"]) == ("int8 weights, float input",
                                                                               "int8 per-channel", "0")
    assert table["input"]["precision"] == "float" and table["input"]["decided by"] == "safeguard_outliers"
    assert f"read by {HOSTILE['conv']}" in table["input"]["why"]
    # The outlier propagates through the ReLU: r is float too, read by mask_up (and gap, float as a consequence).
    assert table["r"]["decided by"] == "safeguard_outliers" and "read by mask_up, gap" in table["r"]["why"]
    assert table["gap"]["decided by"] == "placement"
    assert (table["mask_up"]["precision"], table["mask_up"]["decided by"]) == ("int8 weights, float input",
                                                                             "placement")
    assert "gain" not in fc and "output error" not in fc  # nothing measured: no empty columns

    # The snippets (the parser has unescaped them as a browser shows them) parse back to the same names in both
    # forms: every float layer and every layer reading a float activation, each once.
    namespace: dict = {}
    exec(compile(parsed.pre["ignored-scope-python"], "snippet", "exec"), namespace)  # noqa: S102 (the test's point)
    scope = namespace["ignored_scope"]
    expected = {HOSTILE["fc"], HOSTILE["conv"], "mask_up", "gap"}
    assert sorted(scope.names) == sorted(expected)
    loaded = PipelineConfig.model_validate(yaml.safe_load(parsed.pre["ignored-scope-yaml"]))
    assert loaded.quantization.ignored_scope.names == scope.names


@pytest.mark.parametrize("form", ["python", "yaml"])
def test_the_scope_passed_back_keeps_the_float_layers_float(tmp_path, form):
    """On clean data only the Softmax head's layer stays float (the rule, asked for); its scope, passed back with that safeguard
    switched off, still keeps it float (without the scope it becomes int8), and the rest stays int8."""
    clean = B.random_inputs(10, SHAPE, seed=2)
    result = quantize_with_config(_renamed(B.mask_and_class_heads(), HOSTILE), clean, QuantizationConfig(
        advanced=RULED_HEAD))
    _, parsed = _page(tmp_path, with_readers(list(result.layers), result.model))
    if form == "python":
        namespace: dict = {}
        exec(compile(parsed.pre["ignored-scope-python"], "snippet", "exec"), namespace)  # noqa: S102
        scope = namespace["ignored_scope"]
    else:
        scope = PipelineConfig.model_validate(yaml.safe_load(parsed.pre["ignored-scope-yaml"])).quantization.ignored_scope
    assert scope.names == [HOSTILE["fc"]]
    off = AdvancedParameters(safeguard_softmax_heads=False)
    assert HOSTILE["fc"] not in _float_nodes(ptqflow.quantize(_renamed(B.mask_and_class_heads(), HOSTILE), clean,
                                                              advanced_parameters=off))
    again = _float_nodes(ptqflow.quantize(_renamed(B.mask_and_class_heads(), HOSTILE), clean, ignored_scope=scope,
                                          advanced_parameters=off))
    assert HOSTILE["fc"] in again and not {HOSTILE["conv"], "mask_up"} & again


def test_bias_correction_verdicts_from_a_real_run(tmp_path):
    model, samples = B.conv_zero_bias(), B.random_inputs(12, (4, 8, 8), seed=4)
    result = quantize_with_config(model, samples, QuantizationConfig())
    corrected = [r for r in result.layers if r.get("bias_correction")]
    assert corrected, "the builder's conv layers get bias correction"
    page, parsed = _page(tmp_path, list(result.layers))
    verdicts = _table(parsed, "layer", "op")  # the decisions table comes first
    bias = next(t for t in parsed.tables if t and "max |shift|" in t[0])
    shown = {row[0]: dict(zip(bias[0], row)) for row in bias[1:]}
    for r in corrected:
        bc = r["bias_correction"]
        assert shown[r["name"]]["applied"] == ("yes" if bc["applied"] else "no") + f" ({bc['method']})"
        assert shown[r["name"]]["why not"] == "; ".join(filter(None, [bc["reason"], bc.get("fallback")]))
        assert verdicts[r["name"]]["bias correction"] == ("applied" if bc["applied"] else "not applied")
        if bc["max_abs_shift"] is not None:
            assert float(shown[r["name"]]["max |shift|"]) == pytest.approx(bc["max_abs_shift"], rel=1e-3)
    assert "Bias correction: max |shift| per layer" in page
    measured = any(r.get("output_error") is not None or r.get("measured") for r in result.layers)
    assert ("Measured output error" in page) == measured  # charted exactly when the engine measured something


def _contract_rows() -> list[dict]:
    """Rows as the engine writes them once it measures its decisions (keys fixed with the err20 work)."""
    measured = {"error_int8": 0.25, "error_float": 0.05, "gain": 0.2, "output": "probs", "samples": 8}
    return [
        {"name": "conv", "op_type": "Conv", "status": "quantized", "quantized_inputs": ["input"], "output_error": 0.01,
         "weight": {"tensor": "cw", "per_channel": True, "bits": 8},
         "bias_correction": {"layer": "conv", "applied": False, "reason": "held-out error rose", "shift_norm": 0.3,
                             "max_abs_shift": 0.125, "bias_norm": 1.0, "error_before": 0.5, "error_after": 0.75,
                             "held_out": 16}},
        {"name": "fc", "op_type": "Gemm", "status": "float", "reason": "measured: keeps 80% of the error",
         "decided_by": "error_driven", "measured": measured, "output_error": 0.2},
        {"name": "r", "op_type": "tensor", "status": "float", "reason": "measured", "decided_by": "error_driven",
         "measured": {**measured, "gain": 0.0625, "output": "mask"}, "consumers": ["mask_up", "gap"]},
    ]


def test_measured_keys_render_in_the_table_the_chart_and_the_bias_verdicts(tmp_path):
    page, parsed = _page(tmp_path, _contract_rows())
    table = _table(parsed, "layer", "op")
    assert table["fc"]["gain"] == "0.2" and table["fc"]["output that decided"] == "probs"
    assert table["fc"]["measured error: int8 \u2192 float"] == "0.25 \u2192 0.05 (8 samples)"
    assert table["r"]["gain"] == "0.0625" and table["r"]["output that decided"] == "mask"
    assert table["conv"]["output error"] == "0.01" and table["conv"]["gain"] == ""
    bias = next(t for t in parsed.tables if t and "model error without" in t[0])
    row = dict(zip(bias[0], bias[1]))
    assert (row["model error without"], row["model error with"], row["held-out samples"]) == ("0.5", "0.75", "16")
    assert "Measured output error per layer in int8" in page
    assert page.count("<svg") == 4  # latency, measured error, bias shifts, validation SQNR
    names = yaml.safe_load(parsed.pre["ignored-scope-yaml"])["quantization"]["ignored_scope"]["names"]
    assert names == ["fc", "mask_up", "gap"]


def test_older_rows_and_reports_degrade(tmp_path):
    old = [{k: v for k, v in r.items() if k not in ("measured", "output_error", "consumers")} for r in _contract_rows()]
    for r in old:
        if "bias_correction" in r:
            r["bias_correction"] = {k: v for k, v in r["bias_correction"].items()
                                    if k not in ("error_before", "error_after", "held_out")}
    page, parsed = _page(tmp_path / "old", old)
    assert "Measured output error" not in page and "max |shift| per layer" in page
    assert "gain" not in _table(parsed, "layer", "op")["fc"]  # nothing measured: the column is left out
    assert "whose readers this summary does not record" in page and ">r<" not in page.split("id=\"ignored-scope")[1]
    page, _ = _page(tmp_path / "none", None)
    assert "Quantization decisions" not in page and page.count("<svg") == 2
    page, parsed = _page(tmp_path / "all-int8", [_contract_rows()[0]])
    assert yaml.safe_load(parsed.pre["ignored-scope-yaml"])["quantization"]["ignored_scope"]["names"] == []


def test_charts_keep_to_the_worst_layers(tmp_path):
    rows = [{"name": f"l{i}", "op_type": "Conv", "status": "quantized", "output_error": float(i)} for i in range(60)]
    page, parsed = _page(tmp_path, rows)
    assert "the 40 highest of 60" in page
    assert len(_table(parsed, "layer", "op")) == 60  # the table keeps every layer


def test_validate_and_merge_validation_carry_the_decisions(tmp_path):
    from ptqflow.cli import main
    from test_validate import make_artifacts

    dirs = make_artifacts(tmp_path, n=6)
    rows = _contract_rows()
    (dirs["quantized"] / "summary.json").write_text(json.dumps({"layers": rows}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("validation:\n  latency_iterations: 1\n  gate:\n    min_speedup: null\n")
    common = ["--in-model", str(dirs["model"]), "--in-quantized", str(dirs["quantized"]), "--in-calibration",
              str(dirs["calibration"]), "--config", str(cfg)]
    assert main(["validate", *common, "--out", str(tmp_path / "whole")]) == 0
    parts = [tmp_path / f"part-{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert main(["validate", *common, "--out", str(part), "--shard", f"{i}/2"]) == 0
    assert main(["merge-validation", "--in-partials", *map(str, parts), "--out", str(tmp_path / "merged"),
                 "--config", str(cfg)]) == 0
    for out in ("whole", "merged"):
        assert json.loads((tmp_path / out / "report.json").read_text())["decisions"] == rows
        assert "ignored-scope-yaml" in (tmp_path / out / "report.html").read_text()


def test_a_damaged_summary_is_an_input_error_naming_it(tmp_path):
    from ptqflow.pipeline.steps import validate
    from test_validate import make_artifacts

    dirs = make_artifacts(tmp_path, n=4)
    (dirs["quantized"] / "summary.json").write_text('{"layers": 3}')
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"summary\.json: per-layer summary damaged"):
        validate.run(dirs, out, PipelineConfig())
    assert not any(out.iterdir())  # nothing half-written


def test_with_readers_names_the_layers_reading_a_float_activation():
    model = B.mask_and_class_heads()
    rows = [{"name": n, "op_type": t, "status": "quantized"} for n, t in
            (("conv", "Conv"), ("mask_up", "ConvTranspose"), ("fc", "Gemm"))]
    rows.append({"name": "r", "op_type": "tensor", "status": "float", "decided_by": "x", "reason": "y"})
    assert with_readers(rows, model)[-1]["consumers"] == ["mask_up"]  # gap reads r too, but is no layer row
    assert np.all([("consumers" in r) == (r["op_type"] == "tensor") for r in rows])


@pytest.mark.slow
def test_chromium_shows_the_decisions(tmp_path):
    from ptqflow.pipeline.report.plots import FLOAT_COLOUR
    from test_report import _chromium_or_skip, _has_colour, _screenshot

    _chromium_or_skip()
    out = tmp_path / "page"
    _page(out, _contract_rows())
    img = _screenshot(out / "report.html", tmp_path)
    assert _has_colour(img, FLOAT_COLOUR) > 500  # the measured-error chart's bar of the layer kept in float
    assert _has_colour(img, "#fff8c5") > 2000  # the table's float rows


def test_snippets_survive_any_name():
    from ptqflow.config import IgnoredScope
    from ptqflow.pipeline.report.decisions import ignored_scope_python, ignored_scope_yaml

    names = ["a\x00b", "x\ny: 1 # z", "\u2028\x85\ufeff\U0001F600", "'\"\\", "- [x]", "&amp;", "  lead"]
    pairs = [(n, f"pass {n}") for n in names]  # the deciding pass text goes into comments: as hostile
    namespace: dict = {}
    exec(compile(ignored_scope_python(pairs), "snippet", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["ignored_scope"], IgnoredScope) and namespace["ignored_scope"].names == names
    loaded = yaml.safe_load(ignored_scope_yaml(pairs))
    assert PipelineConfig.model_validate(loaded).quantization.ignored_scope.names == names


def test_non_finite_and_null_measurements_render(tmp_path):
    rows = _contract_rows()
    rows[0]["output_error"] = float("inf")
    rows[1]["measured"] = {**rows[1]["measured"], "error_int8": float("nan"), "gain": None}
    rows[2]["output_error"] = None
    page, parsed = _page(tmp_path, rows)  # report.json writes inf/nan as strings; the schema takes them
    table = _table(parsed, "layer", "op")
    assert table["conv"]["output error"] == "inf" and table["fc"]["gain"] == ""
    assert table["fc"]["measured error: int8 \u2192 float"].startswith("nan \u2192 0.05")
    assert "Measured output error per layer in int8" in page  # fc's output_error is finite: still charted
