"""The bottleneck pickle contract, the restricted unpickler and atomic writes."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from transfer_lab.bottleneck import Bottleneck, read_bottleneck, write_bottleneck
from transfer_lab.files import UnsafePickleError, atomic_write, load_pickle


def sample(n: int = 12, d: int = 5) -> Bottleneck:
    rng = np.random.default_rng(0)
    return Bottleneck(
        features=rng.normal(size=(n, d)).astype(np.float64),  # written as float32
        labels=np.arange(n) % 3,
        class_names=["cat", "dog", "frog"],
        meta={"network": "resnet", "arch": "resnet50", "input_size": 224, "scale": 0.5},
    )


def raw_pickle(path, payload, protocol: int = 4) -> None:
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)


# --- write / read ------------------------------------------------------------------------


def test_round_trip(tmp_path):
    b = sample()
    path = tmp_path / "out" / "net_data_bottleneck_features_train.p"
    write_bottleneck(path, b)
    back = read_bottleneck(path)
    assert back.features.dtype == np.float32
    np.testing.assert_array_equal(back.features, b.features.astype(np.float32))
    assert back.labels.dtype == np.int64
    np.testing.assert_array_equal(back.labels, b.labels)
    assert back.class_names == ["cat", "dog", "frog"]
    assert back.meta == b.meta


def test_file_is_readable_by_the_labs_own_code(tmp_path):
    path = tmp_path / "b.p"
    write_bottleneck(path, sample(n=7, d=4))
    with open(path, "rb") as f:
        data = pickle.load(f)
    assert isinstance(data, dict)
    assert data["features"].dtype == np.float32 and data["features"].shape == (7, 4)
    assert data["labels"].dtype == np.int64 and data["labels"].shape == (7,)
    assert data["class_names"] == ["cat", "dog", "frog"]
    assert all(type(c) is str for c in data["class_names"])
    assert data["meta"]["arch"] == "resnet50"


def test_write_leaves_only_the_file(tmp_path):
    write_bottleneck(tmp_path / "b.p", sample())
    assert [p.name for p in tmp_path.iterdir()] == ["b.p"]


@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, None, (1,), np.float32(1.0)])
def test_meta_values_must_be_str_int_float(tmp_path, bad):
    b = sample()
    b.meta["versions"] = bad
    path = tmp_path / "b.p"
    with pytest.raises(TypeError, match="versions"):
        write_bottleneck(path, b)
    assert not path.exists()


def test_write_refuses_mismatched_lengths(tmp_path):
    b = sample()
    b.labels = b.labels[:-1]
    with pytest.raises(ValueError):
        write_bottleneck(tmp_path / "b.p", b)
    assert list(tmp_path.iterdir()) == []


def test_read_refuses_different_lengths_naming_file(tmp_path):
    path = tmp_path / "short.p"
    raw_pickle(path, {"features": np.zeros((4, 3), np.float32), "labels": np.zeros(3, np.int64),
                      "class_names": ["a"]})
    with pytest.raises(ValueError, match="4 feature rows") as info:
        read_bottleneck(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_read_refuses_non_finite_features_naming_file(tmp_path, bad_value):
    features = np.zeros((4, 3), np.float32)
    features[2, 1] = bad_value
    path = tmp_path / "nan.p"
    raw_pickle(path, {"features": features, "labels": np.zeros(4, np.int64), "class_names": ["a"]})
    with pytest.raises(ValueError, match="NaN or infinite") as info:
        read_bottleneck(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("labels", [[0, 1, 3], [0, -1, 1]])
def test_read_refuses_labels_out_of_range_naming_file(tmp_path, labels):
    path = tmp_path / "labels.p"
    raw_pickle(path, {"features": np.zeros((3, 2), np.float32),
                      "labels": np.array(labels, np.int64), "class_names": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="3 classes") as info:
        read_bottleneck(path)
    assert str(path) in str(info.value)


def test_read_refuses_features_that_are_not_2d(tmp_path):
    path = tmp_path / "flat.p"
    raw_pickle(path, {"features": np.zeros(3, np.float32), "labels": np.zeros(3, np.int64)})
    with pytest.raises(ValueError, match="2-D") as info:
        read_bottleneck(path)
    assert str(path) in str(info.value)


def test_read_refuses_a_non_dict(tmp_path):
    path = tmp_path / "list.p"
    raw_pickle(path, [np.zeros((3, 2), np.float32)])
    with pytest.raises(ValueError, match="features") as info:
        read_bottleneck(path)
    assert str(path) in str(info.value)


def test_read_course_style_pickle_without_class_names(tmp_path):
    # The course pickles held only features and labels; class names are derived.
    path = tmp_path / "vgg_traffic_bottleneck_features_train.p"
    raw_pickle(path, {"features": np.ones((5, 2), np.float64), "labels": np.array([0, 1, 2, 1, 0])},
               protocol=2)
    back = read_bottleneck(path)
    assert back.features.dtype == np.float32
    assert back.labels.dtype == np.int64
    assert back.class_names == ["0", "1", "2"]
    assert back.meta == {}


# --- the restricted unpickler -----------------------------------------------------------


class _RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_pickle_refuses_code_execution(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.p"
    raw_pickle(path, {"features": _RunsACommand(f"touch {marker}")}, protocol=protocol)
    with pytest.raises(UnsafePickleError) as info:
        load_pickle(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "'posix.system'" in msg or "'os.system'" in msg
    assert not marker.exists()
    # read_bottleneck goes through the same unpickler.
    with pytest.raises(UnsafePickleError):
        read_bottleneck(path)
    assert not marker.exists()


def test_unsafe_pickle_error_is_an_unpickling_error():
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_load_pickle_refuses_arbitrary_classes(tmp_path):
    import collections

    path = tmp_path / "counter.p"
    raw_pickle(path, collections.Counter("abc"))
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        load_pickle(path)


def test_truncated_pickle_raises_unpickling_error_naming_file(tmp_path):
    path = tmp_path / "cut.p"
    write_bottleneck(path, sample(n=50, d=20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pickle.UnpicklingError) as info:
        load_pickle(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(path) in str(info.value)
    assert "truncated" in str(info.value)


def test_not_a_pickle_raises_unpickling_error(tmp_path):
    path = tmp_path / "text.p"
    path.write_text("hello, this is not a pickle\n")
    with pytest.raises(pickle.UnpicklingError, match="text.p"):
        load_pickle(path)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.p"
    with pytest.raises(FileNotFoundError, match="absent.p"):
        load_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_pickle_admits_numpy_arrays_and_containers(tmp_path, protocol):
    payload = {
        "features": np.arange(12, dtype=np.float32).reshape(3, 4),
        "labels": np.array([2, 0, 1], dtype=np.int64),
        "images": np.full((2, 4, 4, 3), 7, dtype=np.uint8),
        "coords": np.array([[1.5, 2.5]], dtype=np.float64),
        "names": ["a", "b"],
        "nested": {"n": 3, "x": 0.25, "t": (1, "two")},
    }
    path = tmp_path / f"p{protocol}.p"
    raw_pickle(path, payload, protocol=protocol)
    back = load_pickle(path)
    assert set(back) == set(payload)
    for key in ("features", "labels", "images", "coords"):
        assert back[key].dtype == payload[key].dtype
        np.testing.assert_array_equal(back[key], payload[key])
    assert back["names"] == ["a", "b"]
    assert back["nested"] == {"n": 3, "x": 0.25, "t": (1, "two")}


# --- atomic_write ----------------------------------------------------------------------


def test_atomic_write_leaves_no_file_when_body_raises(tmp_path):
    path = tmp_path / "sub" / "result.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path) as f:
            f.write(b"half of it")
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_atomic_write_keeps_previous_file_when_body_raises(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("old and complete")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path, "w") as f:
            f.write("new but")
            raise KeyboardInterrupt
    assert path.read_text() == "old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_atomic_write_writes_on_success(tmp_path):
    path = tmp_path / "a" / "b" / "result.txt"
    with atomic_write(path, "w") as f:
        f.write("done")
        assert not path.exists()  # not visible until the body finished
    assert path.read_text() == "done"
    assert [p.name for p in path.parent.iterdir()] == ["result.txt"]
