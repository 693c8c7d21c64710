"""Bad input and unwritable output end in ptqflow's errors (exit 2, 3 or 5 naming the file), never in an
internal error: pickled arrays, weights listed as graph inputs, external data leading out of an artifact,
damaged input artifacts, an output that is a file or read-only, an output inside the model directory,
symbolic links out of the data directory, and the scratch files of a killed run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from ptqflow.artifacts import storage
from ptqflow.artifacts.manifest import read_manifest, write_manifest
from ptqflow.cli import main
from ptqflow.config import PipelineConfig
from ptqflow.data.build import build, model_inputs
from ptqflow.errors import InputError, OutputError, StorageError
from ptqflow.pipeline.runner import run_step

CONFIG = {"quantization": {"subset_size": 8}, "data": {"validation_size": 4}}


def _cfg(**fields) -> PipelineConfig:
    return PipelineConfig.model_validate({**CONFIG, **fields})


def _npy_dir(directory: Path, n: int = 12, shape=(16,)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(directory / f"s{i:02d}.npy", rng.normal(size=shape).astype(np.float32))
    return directory


# ------------------------------------------------------------------------------------------------------
# Pickled (object) arrays
# ------------------------------------------------------------------------------------------------------


def test_pickled_npy_and_object_npz_are_refused_as_input_errors(tmp_path, capsys):
    model = builders.save(builders.mlp(), tmp_path / "m" / "model.onnx")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    obj = tmp_path / "obj.npz"
    np.savez(obj, input=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    notnpy = tmp_path / "notes.npy"
    notnpy.write_text("not numpy at all")
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(InputError, match=r"pickled\.npy: holds a pickled \(object dtype\) array"):
        build(pickled, model, out, _cfg())
    with pytest.raises(InputError, match=r"obj\.npz: array 'input' holds a pickled \(object dtype\) array"):
        build(obj, model, out, _cfg())
    with pytest.raises(InputError, match=r"notes\.npy: not a \.npy file"):
        build(notnpy, model, out, _cfg())
    # Through the CLI: exit 3 naming the file (was exit 1, "Array can't be memory-mapped").
    assert main(["run", "--model", str(model), "--data", str(pickled), "--output", str(tmp_path / "run")]) == 3
    assert "pickled.npy" in capsys.readouterr().err


def test_badly_named_zoo_inputs_and_non_utf8_text_are_input_errors(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m" / "model.onnx")
    zoo = tmp_path / "zoo" / "test_data_set_0"
    zoo.mkdir(parents=True)
    (zoo / "input_a.pb").write_bytes(onnx.numpy_helper.from_array(np.zeros((1, 16), np.float32)).SerializeToString())
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(InputError, match=r"test_data_set_0: has input files \['input_a.pb'\].*expected input_0.pb"):
        build(tmp_path / "zoo", model, out, _cfg())
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: not UTF-8 text"):
        build(tmp_path / "latin1.txt", model, out, _cfg())


def test_a_model_onnxruntime_cannot_load_is_an_input_error(tmp_path):
    from onnx import TensorProto, helper

    from ptqflow.quantization.graph.prepare import prepare_model

    custom = builders.mlp()
    custom.graph.node.append(helper.make_node("Foo", ["output"], ["y"], domain="custom.dom", name="foo"))
    del custom.graph.output[:]
    custom.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]))
    custom.opset_import.append(helper.make_opsetid("custom.dom", 1))
    wrong = builders.mlp()
    next(t for t in wrong.graph.initializer if t.name == "w2").CopyFrom(
        onnx.numpy_helper.from_array(np.zeros((5, 4), np.float32), "w2"))  # 32 rows expected
    for model, why in ((custom, "custom.dom:Foo"), (wrong, "Incompatible dimensions")):
        with pytest.raises(InputError, match=f"onnxruntime cannot load the model: .*{why}"):
            prepare_model(model)
    new_ir = builders.mlp()
    new_ir.ir_version = 12  # newer than onnxruntime reads: lowered, not refused
    assert prepare_model(new_ir)[0].ir_version == 10


def test_damaged_calibration_shard_is_an_input_error(tmp_path):
    from ptqflow.data.shards import iter_samples

    (tmp_path / "calibration").mkdir()
    np.save(tmp_path / "calibration" / "shard-00000.npz", np.array([object()], dtype=object), allow_pickle=True)
    os.replace(tmp_path / "calibration" / "shard-00000.npz.npy", tmp_path / "calibration" / "shard-00000.npz")
    with pytest.raises(InputError, match=r"shard-00000\.npz: damaged calibration shard"):
        list(iter_samples(tmp_path))


# ------------------------------------------------------------------------------------------------------
# Weights listed as graph inputs (IR 3 style exports)
# ------------------------------------------------------------------------------------------------------


def test_initializers_listed_as_inputs_are_weights(tmp_path):
    import ptqflow
    from ptqflow.quantization.graph.prepare import graph_inputs, prepare_model
    from ptqflow.quantization.statistics.collector import input_specs

    old = builders.initializers_as_inputs(builders.conv_classifier(), ir_version=3)
    assert [vi.name for vi in graph_inputs(old)] == ["input"] and len(old.graph.input) > 1
    prepared, _ = prepare_model(old)
    assert [vi.name for vi in prepared.graph.input] == ["input"] and prepared.ir_version >= 4
    assert list(input_specs(old)) == ["input"]
    path = builders.save(old, tmp_path / "old" / "model.onnx")
    assert [i["name"] for i in model_inputs(path)] == ["input"]
    samples = builders.random_inputs(16, (3, 16, 16))
    for fast in (True, False):  # the bias-correction guard ran the weights-as-inputs model without them
        q = ptqflow.quantize(old, ptqflow.Dataset(samples), subset_size=16, fast_bias_correction=fast)
        assert [vi.name for vi in q.graph.input] == ["input"]
        assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    mlp4 = builders.initializers_as_inputs(builders.mlp(), ir_version=4)  # IR 4: overridable weights
    q = ptqflow.quantize(mlp4, ptqflow.Dataset(builders.random_inputs(16, (16,))), subset_size=16)
    assert [vi.name for vi in q.graph.input] == ["input"]


def test_fetch_model_and_calibration_ignore_weight_inputs(tmp_path):
    src = builders.save(builders.initializers_as_inputs(builders.mlp()), tmp_path / "src" / "model.onnx")
    cfg = _cfg(model=str(src), data={"source": str(_npy_dir(tmp_path / "data")), "validation_size": 4})
    fetched = run_step("fetch-model", {}, str(tmp_path / "fm"), cfg)
    assert [i["name"] for i in fetched.extra["inputs"]] == ["input"]
    cal = run_step("build-calibration", {"model": str(tmp_path / "fm")}, str(tmp_path / "cal"), cfg)
    assert cal.metrics["calibration"] == 8
    assert json.loads((tmp_path / "cal" / "index.json").read_text())["inputs"] == ["input"]


# ------------------------------------------------------------------------------------------------------
# Damaged input artifacts
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def artifacts(tmp_path):
    """A fetch-model and a build-calibration artifact of the mlp."""
    src = builders.save(builders.mlp(), tmp_path / "src" / "model.onnx")
    cfg = _cfg(model=str(src), data={"source": str(_npy_dir(tmp_path / "data")), "validation_size": 4})
    run_step("fetch-model", {}, str(tmp_path / "fm"), cfg)
    run_step("build-calibration", {"model": str(tmp_path / "fm")}, str(tmp_path / "cal"), cfg)
    return {"model": tmp_path / "fm", "calibration": tmp_path / "cal", "cfg": cfg}


def _rewrite_manifest(artifact: Path) -> None:
    """Re-sign a tampered artifact, as someone who meant it would."""
    old = read_manifest(artifact)
    (artifact / "manifest.json").unlink()
    write_manifest(artifact, step=old.step, config=old.config, inputs=old.inputs, extra=old.extra)


def test_external_data_outside_the_artifact_is_an_input_error(tmp_path, artifacts):
    model = artifacts["model"]
    proto = onnx.load(str(model / "model.onnx"))
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    del t.float_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    onnx.save(proto, str(model / "model.onnx"))
    _rewrite_manifest(model)
    inputs = {"model": str(model), "calibration": str(artifacts["calibration"])}
    with pytest.raises(InputError, match=r"input 'model' at .*fm: model\.onnx: tensor 'w1' has external data "
                                         r"location '\.\./\.\./etc/passwd' outside the model directory"):
        run_step("collect-stats", inputs, str(tmp_path / "stats"), artifacts["cfg"])
    from ptqflow.quantization.graph.prepare import load_model

    with pytest.raises(InputError, match="outside the model directory"):  # the Python API as well
        load_model(model / "model.onnx")


def test_damaged_input_artifacts_are_input_errors(tmp_path, artifacts):
    inputs = {"model": str(artifacts["model"]), "calibration": str(artifacts["calibration"])}
    (artifacts["calibration"] / "calibration" / "shard-00000.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"input 'calibration' at .*cal is damaged: calibration/shard-00000\.npz"):
        run_step("collect-stats", inputs, str(tmp_path / "stats"), artifacts["cfg"])
    (artifacts["model"] / "model.onnx").unlink()
    with pytest.raises(InputError, match=r"input 'model' at .*fm is damaged: model\.onnx missing"):
        run_step("collect-stats", inputs, str(tmp_path / "stats"), artifacts["cfg"])
    (artifacts["model"] / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match=r"fm/manifest\.json: damaged or not a ptqflow manifest"):
        run_step("collect-stats", inputs, str(tmp_path / "stats"), artifacts["cfg"])


# ------------------------------------------------------------------------------------------------------
# Outputs that cannot be written
# ------------------------------------------------------------------------------------------------------


def test_output_that_is_a_file_is_an_output_error(tmp_path, capsys):
    src = builders.save(builders.mlp(), tmp_path / "src" / "model.onnx")
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("mine")
    cfg = _cfg(model=str(src))
    for out in (in_the_way, in_the_way / "sub"):
        with pytest.raises(OutputError, match=f"output {out}: .*a file of that name is in the way") as err:
            run_step("fetch-model", {}, str(out), cfg)
        assert err.value.exit_code == 2 and not err.value.retryable
    assert in_the_way.read_text() == "mine"
    data = str(_npy_dir(tmp_path / "data"))
    assert main(["run", "--model", str(src), "--data", data, "--output", str(in_the_way)]) == 2
    assert f"output {in_the_way}" in capsys.readouterr().err


def test_a_directory_of_other_files_is_never_replaced(tmp_path):
    src = builders.save(builders.mlp(), tmp_path / "src" / "model.onnx")
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(OutputError, match="not a ptqflow artifact; refusing to replace it"):
        run_step("fetch-model", {}, str(precious), _cfg(model=str(src)))
    assert (precious / "thesis.txt").read_text() == "years of work"
    (precious / "thesis.txt").unlink()  # an empty directory, or an earlier artifact, is replaced
    run_step("fetch-model", {}, str(precious), _cfg(model=str(src)))
    run_step("fetch-model", {}, str(precious), _cfg(model=str(src)), force=True)


def test_read_only_output_is_an_output_error_and_a_full_disk_a_storage_error(tmp_path, monkeypatch):
    src = builders.save(builders.mlp(), tmp_path / "src" / "model.onnx")
    cfg = _cfg(model=str(src), data={"source": str(_npy_dir(tmp_path / "data")), "validation_size": 4})
    real_mkdtemp = storage.tempfile.mkdtemp

    def read_only(suffix=None, prefix=None, dir=None):
        if dir is not None and Path(dir).is_relative_to(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / "x"))
        return real_mkdtemp(suffix, prefix, dir)

    monkeypatch.setattr(storage.tempfile, "mkdtemp", read_only)
    (tmp_path / "ro").mkdir()
    with pytest.raises(OutputError, match=r"output .*ro/fm: cannot write there: the file system is read-only"):
        run_step("fetch-model", {}, str(tmp_path / "ro" / "fm"), cfg)
    run_step("fetch-model", {}, str(tmp_path / "fm"), cfg)

    from ptqflow.data import shards

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # np.savez names no file

    monkeypatch.setattr(shards.np, "savez", full)
    with pytest.raises(StorageError, match=r"output .*cal: writing failed: No space left on device") as err:
        run_step("build-calibration", {"model": str(tmp_path / "fm")}, str(tmp_path / "cal"), cfg)
    assert err.value.exit_code == 5 and not (tmp_path / "cal").exists()
    assert not [p for p in tmp_path.iterdir() if storage.PARTIAL_MARK in p.name]


# ------------------------------------------------------------------------------------------------------
# An output inside the model directory
# ------------------------------------------------------------------------------------------------------


def test_output_inside_the_model_directory_reruns_as_a_cache_hit(tmp_path, caplog):
    model_dir = tmp_path / "model"
    builders.save(builders.mlp(), model_dir / "model.onnx")
    out = model_dir / "out"
    cfg = _cfg(model=str(model_dir), output=str(out))
    first = run_step("fetch-model", {}, str(out / "fetch-model"), cfg)
    # Later steps put more model.onnx files there (quantize), and a single-step run may use another prefix.
    other = run_step("fetch-model", {}, str(model_dir / "elsewhere" / "fetch-model"), _cfg(model=str(model_dir)))
    assert other.cache_key == first.cache_key  # the first run's artifact is not part of the model
    (model_dir / "out" / ".quantize.partial-1-x").mkdir()  # a publish in progress
    caplog.set_level("INFO", logger="ptqflow")
    again = run_step("fetch-model", {}, str(out / "fetch-model"), cfg)
    assert again.digest == first.digest and "fetch-model: skipped" in caplog.text


# ------------------------------------------------------------------------------------------------------
# Symbolic links out of the data directory
# ------------------------------------------------------------------------------------------------------


def test_links_out_of_the_data_directory_are_skipped_and_counted(tmp_path, caplog):
    src = builders.save(builders.mlp(), tmp_path / "src" / "model.onnx")
    data = _npy_dir(tmp_path / "data", n=10)
    outside = _npy_dir(tmp_path / "private", n=3)
    (data / "sub").mkdir()
    os.symlink(outside / "s00.npy", data / "sub" / "secret.npy")
    os.symlink(outside, data / "more")
    os.symlink(data / "s00.npy", data / "sub" / "again.npy")  # a link inside the directory is read
    cfg = _cfg(model=str(src), data={"source": str(data), "validation_size": 3})
    run_step("fetch-model", {}, str(tmp_path / "fm"), cfg)
    caplog.set_level("WARNING", logger="ptqflow")
    m = run_step("build-calibration", {"model": str(tmp_path / "fm")}, str(tmp_path / "cal"), cfg)
    index = json.loads((tmp_path / "cal" / "index.json").read_text())
    assert index["skipped_links"] == ["more", "sub/secret.npy"] and m.metrics["skipped_links"] == 2
    assert index["total_items"] == 11
    assert not any("secret" in s for split in index["sources"].values() for s in split)
    assert "2 symbolic link(s) pointing outside it left out" in caplog.text


# ------------------------------------------------------------------------------------------------------
# Scratch files of a killed run
# ------------------------------------------------------------------------------------------------------

KILLED_RUN = """
import os, signal, sys
from ptqflow.config import PipelineConfig
from ptqflow.pipeline.runner import run_pipeline
from ptqflow.pipeline.steps import fetch_model

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs

fetch_model._copy_model = killed
model, data, out = sys.argv[1:4]
run_pipeline(PipelineConfig.model_validate({"model": model, "output": out, "data": {"source": data}}))
"""


def test_a_killed_run_leaves_nothing_in_the_temp_dir_and_the_rerun_cleans_up(tmp_path):
    src = builders.save(builders.mlp(), tmp_path / "src" / "model.onnx")
    data = _npy_dir(tmp_path / "data")
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "runs" / "out"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(src), str(data), str(out)], timeout=120,
                          env={**os.environ, "TMPDIR": str(temp)}, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not [p.name for p in temp.iterdir() if p.name.startswith("ptqflow-")]
    leftovers = [p for p in [*out.parent.iterdir(), *out.iterdir()] if storage.PARTIAL_MARK in p.name]
    assert len(leftovers) == 2  # the run's and fetch-model's scratch, beside their outputs
    cfg = _cfg(model=str(src))
    run_step("fetch-model", {}, str(out / "fetch-model"), cfg)
    storage.make_partial_dir(out).rmdir()  # what the next run_pipeline does first
    assert not [p for p in [*out.parent.iterdir(), *out.iterdir()] if storage.PARTIAL_MARK in p.name]
