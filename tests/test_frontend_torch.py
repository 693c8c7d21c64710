"""PyTorch models in (ptqflow.frontends.torch): TorchScript and torch.export programs through fetch-model and
`ptqflow run`, nn.Modules through ptqflow.quantize, and the refusals (pickled checkpoints, missing shapes, a
conversion above tolerance, torch not installed). The modules are built here in code; torch's import and the
saved models are shared by the module-scoped fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import ptqflow  # noqa: E402
from ptqflow import frontends  # noqa: E402
from ptqflow.cli import main  # noqa: E402
from ptqflow.frontends.base import ConversionOptions  # noqa: E402
from ptqflow.frontends.torch import module_to_onnx  # noqa: E402

SHAPE = (3, 8, 8)  # one sample; the models take [batch, 3, 8, 8]
SHAPES_CONFIG = "conversion:\n  input_shapes:\n    x: [1, 3, 8, 8]\n"
RUN_CONFIG = ("quantization:\n  subset_size: 16\ndata:\n  validation_size: 8\n  preprocess:\n    method: none\n"
              "validation:\n  latency_iterations: 2\n  gate:\n    min_speedup: null\n    min_cosine: 0.5\n"
              "    max_accuracy_drop: null\n")


class TinyConvNet(torch.nn.Module):
    """Conv -> ReLU -> global mean -> Linear: two outputs (logits and the pooled features)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        pooled = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(pooled), pooled


class DataDependent(TinyConvNet):
    """A branch on the input's values: torch.export cannot capture it, the TorchScript exporter traces one side."""

    def forward(self, x):
        features = torch.relu(self.conv(x))
        pooled = features.mean((2, 3)) if x.sum() > 0 else features.amax((2, 3))
        return self.head(pooled)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """TorchScript, torch.export (dynamic batch) and a pickled state dict of TinyConvNet, and a calibration set."""
    root = tmp_path_factory.mktemp("torch_models")
    module = TinyConvNet().eval()
    example = torch.randn(2, *SHAPE)
    torch.jit.save(torch.jit.trace(module, (example,)), root / "model.pt")
    program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "model.pt2")
    torch.save(module.state_dict(), root / "weights.pth")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        np.save(data / f"sample_{i:03d}.npy", rng.normal(0, 1, SHAPE).astype(np.float32))
    (root / "shapes.yaml").write_text(SHAPES_CONFIG)
    (root / "run.yaml").write_text(RUN_CONFIG)
    return {"root": root, "module": module, "pt": root / "model.pt", "pt2": root / "model.pt2",
            "pth": root / "weights.pth", "data": data, "shapes": root / "shapes.yaml", "run": root / "run.yaml"}


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _at_batches(onnx_path: Path, module) -> None:
    """The converted model runs at batch 1 and 3 and agrees with the module there."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(0, 1, (batch, *SHAPE)).astype(np.float32)
        got = session.run(None, {"x": x})[0]
        with torch.no_grad():
            want = module(torch.from_numpy(x))[0].numpy()
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torchscript_through_fetch_model(saved, tmp_path):
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(saved["pt"]), "--config", str(saved["shapes"]),
                 "--output", str(out)]) == 0
    conversion = _manifest(out)["extra"]["conversion"]
    assert conversion["source_format"] == "torchscript"
    assert conversion["converter"] == "torch.onnx.export (torchscript)"
    assert conversion["versions"]["torch"].startswith("2.13") and "onnxruntime" in conversion["versions"]
    assert 0 <= conversion["max_rel_diff"] <= 1e-3 and conversion["samples_checked"] == 4
    assert set(conversion["per_output"]) == {"output_0", "output_1"}
    assert conversion["export_s"] <= conversion["total_s"]
    assert any("ScriptModule" in note for note in conversion["notes"])
    _at_batches(out / "model.onnx", saved["module"])


def test_exported_program_through_ptqflow_run(saved, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--model", str(saved["pt2"]), "--data", str(saved["data"]), "--config", str(saved["run"]),
                 "--output", str(out)]) == 0
    conversion = _manifest(out / "fetch-model")["extra"]["conversion"]
    assert conversion["source_format"] == "torch_export"
    assert conversion["converter"] == "torch.onnx.export (dynamo)" and not conversion["notes"]
    assert conversion["max_rel_diff"] <= 1e-3 and "onnxscript" in conversion["versions"]
    _at_batches(out / "fetch-model" / "model.onnx", saved["module"])
    int8 = out / "quantize" / "model.onnx"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in __import__("onnx").load(int8).graph.node}


def test_weights_over_the_limit_go_to_external_data(saved, tmp_path, monkeypatch):
    """The path a model over protobuf's 2 GB takes, with the limit lowered to this model's few hundred bytes."""
    import ptqflow.frontends.torch as torch_frontend

    monkeypatch.setattr(torch_frontend, "PROTO_LIMIT", 64)
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(saved["pt2"]), "--output", str(out)]) == 0
    manifest = _manifest(out)["extra"]
    assert manifest["external_data"] and (out / manifest["external_data"][0]).is_file()
    assert manifest["conversion"]["max_rel_diff"] <= 1e-3
    _at_batches(out / "model.onnx", saved["module"])


def test_torchscript_in_a_tar_archive(saved, tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(saved["pt"], arcname="exported/model.pt")
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(archive), "--config", str(saved["shapes"]),
                 "--output", str(out)]) == 0
    assert _manifest(out)["extra"]["conversion"]["source_format"] == "torchscript"


def test_pickled_state_dict_is_refused_leaving_nothing(saved, tmp_path, capsys):
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(saved["pth"]), "--output", str(out)]) == 3
    err = capsys.readouterr().err
    assert "pickled checkpoint" in err and "ptqflow never unpickles" in err and "torch.export.save" in err
    assert not out.exists()


def test_torchscript_without_input_shapes_names_the_field(saved, tmp_path, capsys):
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(saved["pt"]), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "conversion.input_shapes" in err and "missing: x" in err
    assert not out.exists()


def test_conversion_above_tolerance_is_refused_naming_it(tmp_path, capsys):
    # Outputs in the thousands: the float32 rounding differences between torch and onnxruntime are then far above
    # the check's rounding floor (differences within float32's resolution at 1 count as none).
    module = TinyConvNet().eval()
    with torch.no_grad():
        module.head.weight.mul_(1e4)
    scripted = tmp_path / "large.pt"
    torch.jit.save(torch.jit.trace(module, (torch.randn(2, *SHAPE),)), scripted)
    config = tmp_path / "strict.yaml"
    config.write_text(SHAPES_CONFIG + "  tolerance: 1.0e-12\n")
    out = tmp_path / "fetched"
    assert main(["fetch-model", "--model", str(scripted), "--config", str(config), "--output", str(out)]) == 3
    err = capsys.readouterr().err
    assert "conversion.tolerance = 1e-12" in err and "refusing the conversion" in err
    assert not out.exists()


def test_without_torch_the_error_names_the_extra(saved, tmp_path):
    out = tmp_path / "fetched"
    script = ("import sys; sys.modules['torch'] = None\n"  # import torch now raises ImportError
              "from ptqflow.cli import main\n"
              f"sys.exit(main(['fetch-model', '--model', {str(saved['pt'])!r}, '--config', {str(saved['shapes'])!r}, "
              f"'--output', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 2, r.stderr
    assert "pip install 'ptqflow[torch]'" in r.stderr and "torchscript" in r.stderr
    assert not out.exists()


def test_python_api_quantizes_a_module(saved):
    rng = np.random.default_rng(1)
    calibration = [rng.normal(0, 1, (1, *SHAPE)).astype(np.float32) for _ in range(16)]
    int8 = ptqflow.quantize(saved["module"], calibration, example_inputs=(torch.from_numpy(calibration[0]),),
                            subset_size=16)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    session = ort.InferenceSession(int8.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(0, 1, (3, *SHAPE)).astype(np.float32)  # batch 3: the export's batch axis is dynamic
    got = session.run(None, {"x": x})[0]
    with torch.no_grad():
        want = saved["module"](torch.from_numpy(x))[0].numpy()
    cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.99


def test_a_static_program_keeps_its_batch_and_says_so(saved, tmp_path):
    program = torch.export.export(saved["module"], (torch.randn(2, *SHAPE),))
    torch.export.save(program, tmp_path / "static.pt2")
    conversion = frontends.convert(tmp_path / "static.pt2", tmp_path / "out", ConversionOptions(check_samples=2))
    assert conversion.converter == "torch.onnx.export (dynamo)" and conversion.max_rel_diff <= 1e-3
    assert len(conversion.notes) == 1 and "batch dimension is static for x" in conversion.notes[0]
    session = ort.InferenceSession(str(conversion.onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, *SHAPE]


def test_dynamo_failure_falls_back_to_the_torchscript_exporter():
    module = DataDependent().eval()
    rng = np.random.default_rng(2)
    calibration = [{"x": np.abs(rng.normal(0, 1, (1, *SHAPE))).astype(np.float32)} for _ in range(6)]
    model, conversion, samples = module_to_onnx(module, torch.from_numpy(calibration[0]["x"]), iter(calibration),
                                                ConversionOptions(check_samples=3))
    assert conversion.converter == "torch.onnx.export (torchscript)"
    assert conversion.sample_source == "given" and conversion.samples_checked == 3
    assert len(conversion.notes) == 1 and "dynamo exporter failed" in conversion.notes[0]
    assert [s["x"].tobytes() for s in samples] == [c["x"].tobytes() for c in calibration]  # none lost to the check
    assert model.graph.node


@pytest.mark.slow
def test_a_real_model_from_a_wheel_through_ptqflow_run(tmp_path):
    """facenet-pytorch's MTCNN ONet (weights bundled in the wheel) as TorchScript through `ptqflow run`."""
    import wheel_models

    try:
        onet = wheel_models.mtcnn_onet()
    except ModuleNotFoundError as err:
        pytest.skip(f"facenet-pytorch is not installed (scripts/test.sh installs it): {err}")
    torch.jit.save(torch.jit.trace(onet, (torch.zeros(2, 3, 48, 48),)), tmp_path / "onet.pt")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):  # smooth images: coarse noise upsampled, normalised as MTCNN does
        coarse = rng.uniform(0, 255, (3, 6, 6))
        image = np.kron(coarse, np.ones((8, 8))) + rng.normal(0, 8, (3, 48, 48))
        np.save(data / f"crop_{i:03d}.npy", ((image - 127.5) / 128).astype(np.float32))
    config = tmp_path / "cfg.yaml"
    config.write_text("conversion:\n  input_shapes:\n    x: [1, 3, 48, 48]\n" + RUN_CONFIG.replace("0.5", "0.9"))
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "onet.pt"), "--data", str(data), "--config", str(config),
                 "--output", str(out)]) == 0
    conversion = _manifest(out / "fetch-model")["extra"]["conversion"]
    assert conversion["max_rel_diff"] <= 1e-3 and len(conversion["per_output"]) == 3
    assert _manifest(out / "validate")["metrics"]["verdict"] == "pass"
