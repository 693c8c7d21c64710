"""The copies the pipeline no longer makes (issue 24, memory): each replacement must give exactly what the copy
gave. The statistics pass augments the model in place and restores it; quantize's INT8 model starts without the
float weights' bytes; a kept calibration sample does not pin its shard; sessions of models with many weights are
made from a file with external data and compute what sessions from bytes compute."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders
from ptqflow.data.shards import ShardWriter, iter_labeled
from ptqflow.quantization.statistics.collector import augment, augmented
from ptqflow.quantization.statistics.points import Reducer, observation_id
from ptqflow.runtime import sessions
from ptqflow.runtime.model_files import copy_without, model_nbytes


def _observations(model: onnx.ModelProto) -> list[str]:
    tensors = [n.output[0] for n in model.graph.node]
    return ([observation_id(t, r, None) for t in tensors for r in (Reducer.MIN, Reducer.MAX)]
            + [observation_id(tensors[0], Reducer.MEAN, 1), observation_id(tensors[0], Reducer.ABSMAX, 1)])


def test_augmented_model_is_the_copy_and_is_restored_after():
    model = onnx.shape_inference.infer_shapes(builders.conv_classifier())
    before = model.SerializeToString()
    copy, copy_map = augment(model, _observations(model), per_sample=True)
    with augmented(model, _observations(model), per_sample=True) as out_map:
        assert out_map == copy_map
        assert model.SerializeToString() == copy.SerializeToString()
    assert model.SerializeToString() == before


def test_augmented_model_is_restored_when_the_block_raises():
    model = onnx.shape_inference.infer_shapes(builders.conv_classifier())
    before = model.SerializeToString()
    with pytest.raises(RuntimeError):
        with augmented(model, _observations(model), per_sample=False):
            raise RuntimeError("the runtime refused the model")
    assert model.SerializeToString() == before


def test_copy_without_keeps_places_types_and_dims_without_the_bytes():
    model = builders.conv_classifier()
    names = {t.name for t in model.graph.initializer if len(t.dims) > 1}
    lean = copy_without(model, names)
    assert [t.name for t in lean.graph.initializer] == [t.name for t in model.graph.initializer]
    assert model_nbytes(lean) == model_nbytes(model) - sum(
        onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name in names)
    for t, s in zip(model.graph.initializer, lean.graph.initializer):
        assert list(s.dims) == list(t.dims) and s.data_type == t.data_type


def test_kept_samples_do_not_pin_their_shard(tmp_path):
    rng = np.random.default_rng(0)
    writer = ShardWriter(tmp_path / "calibration", 4 * 3 * 8 * 8 * 4, with_labels=False)  # 4 samples a shard
    for _ in range(10):
        writer.add({"input": rng.standard_normal((3, 8, 8), dtype=np.float32)}, None)
    writer.flush()
    samples = [s for s, _ in iter_labeled(tmp_path, "calibration")]
    assert len(samples) == 10 and writer.shards == 3
    for s in samples:
        assert s["input"].shape == (1, 3, 8, 8) and s["input"].base is None  # owns its data: no view of a shard


def test_session_from_a_file_computes_what_a_session_from_bytes_computes(monkeypatch):
    model = builders.conv_classifier()
    feeds = builders.random_inputs(3, (3, 16, 16))
    from_bytes = [sessions.make_session(model).run(None, f)[0] for f in feeds]
    monkeypatch.setattr(sessions, "SESSION_FILE_BYTES", 1)  # every model through a file with external data
    from_file = [sessions.make_session(model).run(None, f)[0] for f in feeds]
    for a, b in zip(from_bytes, from_file):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("feeds", [1, 3])
def test_outputs_of_run_each_do_not_pin_the_sessions_buffers(feeds):
    """onnxruntime hands its outputs back as views of its own buffers, which stay allocated while a view lives,
    after the session is gone; run_each's outputs are arrays of their own (the guard and the search keep FP32
    outputs across steps), equal to the session's."""
    model = builders.conv_classifier()
    data = builders.random_inputs(feeds, (3, 16, 16), seed=2)
    direct = sessions.make_session(model).run(None, data[0])[0]
    outs = sessions.run_each(model, data)
    assert all(v.flags.owndata for values in outs for v in values)
    np.testing.assert_array_equal(outs[0][0], direct)
