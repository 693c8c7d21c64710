"""ptqflow.arrays.read_npz: the one .npz reader, which never loads a pickle."""

import pickle

import numpy as np
import pytest

from ptqflow.arrays import NpzError, read_npz


def test_reads_every_array(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3), y=np.ones((2, 2), np.float32))
    data = read_npz(tmp_path / "a.npz")
    assert sorted(data) == ["x", "y"] and data["x"].tolist() == [0, 1, 2]


def test_a_pickle_under_an_npz_name_is_refused_unread(tmp_path):
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(NpzError, match="not a zip archive") as err:
        read_npz(tmp_path / "p.npz")
    assert not err.value.pickled


def test_an_object_array_names_its_key(tmp_path):
    np.savez(tmp_path / "o.npz", good=np.zeros(2), bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(NpzError) as err:
        read_npz(tmp_path / "o.npz")
    assert err.value.pickled and err.value.key == "bad"


def test_a_truncated_archive_is_an_npz_error(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.arange(1000))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(NpzError, match="not a readable .npz file|not readable"):
        read_npz(tmp_path / "t.npz")
