"""Dataset sources, stratified splits and the prepared .npz contract."""

from __future__ import annotations

import numpy as np
import pytest

from transfer_lab.datasets import (
    SPLITS,
    PreparedDataset,
    SplitSpec,
    assign_splits,
    load_prepared,
    prepare_dataset,
    save_prepared,
    splits_for,
    write_prepared,
)
from transfer_lab.sources import dataset_spec

TRAIN, VALIDATION, TEST = (SPLITS.index(s) for s in ("train", "validation", "test"))
SPLIT_CFG = {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "train_per_class": None}
DIGITS = dataset_spec({"source": "digits"})


@pytest.fixture(scope="module")
def digits() -> PreparedDataset:
    return prepare_dataset(DIGITS, SplitSpec(**SPLIT_CFG))


@pytest.fixture(scope="module")
def digit_labels(digits) -> np.ndarray:
    # No images dropped without train_per_class, so these are all 1797 labels.
    return digits.labels


def test_splits_are_named_in_order():
    assert SPLITS == ("train", "validation", "test")


def test_digits_images_labels_and_class_names(digits):
    images, labels = digits.images, digits.labels
    assert images.dtype == np.uint8
    assert images.ndim == 4 and images.shape[1:] == (8, 8, 3)
    assert len(images) == len(labels) == len(digits.split) == 1797
    # Grey repeated to RGB: the three channels are equal.
    assert np.array_equal(images[..., 0], images[..., 1])
    assert np.array_equal(images[..., 0], images[..., 2])
    # 0..16 scaled to the full 0..255 range.
    assert images.min() == 0 and images.max() == 255
    assert images.flags["C_CONTIGUOUS"]
    assert labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    assert digits.class_names == [str(i) for i in range(10)]


def test_unknown_source_lists_valid_sources():
    with pytest.raises(ValueError, match=r"'nope'.*digits"):
        prepare_dataset(dataset_spec({"source": "nope"}), SplitSpec(**SPLIT_CFG))


def test_split_sizes_and_subset_agree(digits):
    sizes = digits.split_sizes()
    assert set(sizes) == set(SPLITS)
    assert sum(sizes.values()) == len(digits.labels)
    for name in SPLITS:
        images, labels = digits.subset(name)
        assert len(images) == len(labels) == sizes[name]
        mask = digits.split == SPLITS.index(name)
        assert np.array_equal(labels, digits.labels[mask])


def test_assign_splits_is_stratified_with_configured_fractions(digit_labels):
    split = assign_splits(digit_labels, None, 0.2, 0.2, seed=0)
    assert split.dtype == np.int8
    assert set(np.unique(split)) == {TRAIN, VALIDATION, TEST}
    n = len(digit_labels)
    n_test = int((split == TEST).sum())
    n_val = int((split == VALIDATION).sum())
    # test_fraction of everything; validation_fraction of what remains for training.
    assert n_test / n == pytest.approx(0.2, abs=0.01)
    assert n_val / (n - n_test) == pytest.approx(0.2, abs=0.01)
    for cls in range(10):
        members = split[digit_labels == cls]
        assert (members == TRAIN).any() and (members == VALIDATION).any() and (members == TEST).any()
        test_share = (members == TEST).mean()
        val_share = (members == VALIDATION).sum() / (members != TEST).sum()
        assert test_share == pytest.approx(0.2, abs=0.02)
        assert val_share == pytest.approx(0.2, abs=0.02)


def test_splits_are_disjoint_and_cover_everything(digit_labels):
    split = assign_splits(digit_labels, None, 0.2, 0.2, seed=0)
    masks = [split == i for i in range(len(SPLITS))]
    total = sum(m.astype(int) for m in masks)
    assert (total == 1).all()  # each image in exactly one split, none dropped


def test_assign_splits_is_reproducible_and_seeded(digit_labels):
    a = assign_splits(digit_labels, None, 0.2, 0.2, seed=3)
    b = assign_splits(digit_labels, None, 0.2, 0.2, seed=3)
    c = assign_splits(digit_labels, None, 0.2, 0.2, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Another seed moves images, not proportions.
    for i in range(len(SPLITS)):
        assert (a == i).sum() == (c == i).sum()


def test_prepare_dataset_is_reproducible(digits):
    again = prepare_dataset(DIGITS, SplitSpec(**SPLIT_CFG))
    assert np.array_equal(again.split, digits.split)
    assert np.array_equal(again.images, digits.images)


def test_official_test_split_is_kept_exactly(digit_labels):
    rng = np.random.default_rng(123)
    is_test = rng.random(len(digit_labels)) < 0.3
    origin = np.where(is_test, TEST, TRAIN).astype(np.int8)
    split = assign_splits(digit_labels, origin, 0.25, 0.2, seed=0)
    assert np.array_equal(split == TEST, is_test)
    # Validation is carved out of the non-test images only, stratified.
    rest = ~is_test
    assert ((split == TRAIN) | (split == VALIDATION))[rest].all()
    for cls in range(10):
        members = split[rest & (digit_labels == cls)]
        assert (members == VALIDATION).mean() == pytest.approx(0.25, abs=0.03)
        assert (members == TRAIN).any()


def test_no_test_split_when_test_fraction_is_zero():
    cfg = dict(SPLIT_CFG, test_fraction=0.0)
    ds = prepare_dataset(DIGITS, SplitSpec(**cfg))
    assert ds.split_sizes()["test"] == 0
    assert ds.split_sizes()["validation"] > 0
    assert splits_for(DIGITS, SplitSpec(**cfg)) == ["train", "validation"]
    present = [SPLITS[i] for i in np.unique(ds.split)]
    assert present == splits_for(DIGITS, SplitSpec(**cfg))


def test_splits_for_agrees_with_prepared_splits(digits):
    present = [SPLITS[i] for i in np.unique(digits.split)]
    assert splits_for(DIGITS, SplitSpec(**SPLIT_CFG)) == ["train", "validation", "test"] == present


def test_train_per_class_keeps_k_and_leaves_other_splits(digit_labels):
    full = assign_splits(digit_labels, None, 0.2, 0.2, seed=0)
    few = assign_splits(digit_labels, None, 0.2, 0.2, seed=0, train_per_class=5)
    assert np.array_equal(few == VALIDATION, full == VALIDATION)
    assert np.array_equal(few == TEST, full == TEST)
    for cls in range(10):
        assert ((few == TRAIN) & (digit_labels == cls)).sum() == 5
    # The kept training images are a subset of the full training split; the rest is dropped.
    assert not ((few == TRAIN) & (full != TRAIN)).any()
    assert np.array_equal(few == -1, (full == TRAIN) & (few != TRAIN))


def test_train_per_class_larger_than_class_keeps_all(digit_labels):
    full = assign_splits(digit_labels, None, 0.2, 0.2, seed=0)
    big = assign_splits(digit_labels, None, 0.2, 0.2, seed=0, train_per_class=10_000)
    assert np.array_equal(full, big)


def test_prepare_dataset_with_train_per_class_drops_images(digits):
    few = prepare_dataset(DIGITS, SplitSpec(**dict(SPLIT_CFG, train_per_class=3)))
    sizes, full_sizes = few.split_sizes(), digits.split_sizes()
    assert sizes["train"] == 30
    assert sizes["validation"] == full_sizes["validation"]
    assert sizes["test"] == full_sizes["test"]
    assert len(few.images) == len(few.labels) == len(few.split) == sum(sizes.values())
    assert (few.split >= 0).all()
    _, train_labels = few.subset("train")
    assert np.array_equal(np.bincount(train_labels, minlength=10), np.full(10, 3))


def test_save_load_round_trip(digits, tmp_path):
    path = tmp_path / "nested" / "digits.npz"
    save_prepared(digits, path)
    back = load_prepared(path)
    assert back.images.dtype == np.uint8 and np.array_equal(back.images, digits.images)
    assert back.labels.dtype == np.int64 and np.array_equal(back.labels, digits.labels)
    assert np.array_equal(back.split, digits.split)
    assert back.class_names == digits.class_names
    assert back.split_sizes() == digits.split_sizes()


def test_saved_file_is_plain_npz_without_pickles(digits, tmp_path):
    path = tmp_path / "digits.npz"
    save_prepared(digits, path)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) >= {"images", "labels", "split", "class_names", "split_names"}
        assert [str(s) for s in z["split_names"]] == list(SPLITS)


def test_save_is_atomic_leaves_no_temporary_files(digits, tmp_path):
    path = tmp_path / "digits.npz"
    save_prepared(digits, path)
    save_prepared(digits, path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.npz"]


def test_images_written_in_chunks_read_back_whole_and_mapped(digits, tmp_path):
    """The streaming writer: chunks in row order make the same file content as one array,
    np.load reads it, and the memory map finds the images inside the zip64 member."""
    path = tmp_path / "chunked.npz"
    chunks = (digits.images[i:i + 100] for i in range(0, len(digits.images), 100))
    write_prepared(path, digits.labels, digits.split, digits.class_names, {"k": 1}, chunks, digits.images.shape[1:])
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(z["images"], digits.images)
    mapped = load_prepared(path, mmap=True)
    assert isinstance(mapped.images, np.memmap) and np.array_equal(mapped.images, digits.images)
    assert mapped.meta == {"k": 1}


def test_writer_refuses_a_short_or_misshapen_image_stream(digits, tmp_path):
    args = (digits.labels, digits.split, digits.class_names, {})
    with pytest.raises(ValueError, match="written for"):
        write_prepared(tmp_path / "short.npz", *args, [digits.images[:10]], digits.images.shape[1:])
    with pytest.raises(ValueError, match="image chunk"):
        write_prepared(tmp_path / "bad.npz", *args, [digits.images[:10, :4]], digits.images.shape[1:])
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_dataset_stored_as_files_round_trip(tmp_path):
    files = np.array([f"/data/img{i}.jpg" for i in range(6)])
    ds = PreparedDataset(images=None, labels=np.arange(6) % 2, split=np.array([0, 0, 0, 0, 1, 2], np.int8),
                         class_names=["a", "b"], files=files)
    save_prepared(ds, tmp_path / "files.npz")
    back = load_prepared(tmp_path / "files.npz", mmap=True)
    assert back.images is None and list(back.files) == list(files)
    paths, labels = back.subset("train")
    assert list(paths) == list(files[:4]) and list(labels) == [0, 1, 0, 1]


def test_load_prepared_refuses_missing_keys(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2, np.int64))
    with pytest.raises(ValueError) as info:
        load_prepared(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "split" in msg and "class_names" in msg


def test_load_prepared_refuses_non_uint8_images(tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.float32), labels=np.zeros(2, np.int64),
             split=np.zeros(2, np.int8), class_names=np.array(["a"]))
    with pytest.raises(ValueError, match="uint8") as info:
        load_prepared(path)
    assert str(path) in str(info.value)


def test_load_prepared_never_unpickles(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2, np.int64),
             split=np.zeros(2, np.int8), class_names=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_prepared(path)


def test_sklearn_method_reproduces_train_test_split(digit_labels):
    """The lab's protocol: train_test_split(test_size=0.2, random_state=0) on the training images."""
    from sklearn.model_selection import train_test_split

    origin = np.where(np.arange(len(digit_labels)) >= 1500, TEST, TRAIN).astype(np.int8)
    split = assign_splits(digit_labels, origin, 0.2, 0.0, seed=0, method="sklearn")
    train_idx, val_idx = train_test_split(np.arange(1500), test_size=0.2, random_state=0)
    assert np.array_equal(np.flatnonzero(split == VALIDATION), np.sort(val_idx))
    assert np.array_equal(np.flatnonzero(split == TRAIN), np.sort(train_idx))
    assert (split[1500:] == TEST).all()


def test_official_validation_is_used_only_when_asked(digit_labels):
    origin = np.zeros(len(digit_labels), dtype=np.int8)
    origin[:300] = VALIDATION
    origin[300:600] = TEST
    used = assign_splits(digit_labels, origin, 0.2, 0.2, seed=0, official_validation=True)
    assert np.array_equal(np.flatnonzero(used == VALIDATION), np.arange(300))
    assert (used[600:] == TRAIN).all()
    carved = assign_splits(digit_labels, origin, 0.2, 0.2, seed=0)
    assert (carved[:300] == -1).all()  # left out, never mixed into training
    assert (carved[600:] == VALIDATION).sum() == pytest.approx(0.2 * (len(digit_labels) - 600), abs=10)


def test_train_per_class_keeps_the_first_k_of_sklearns_shuffle(digit_labels):
    from sklearn.utils import shuffle

    origin = np.zeros(len(digit_labels), dtype=np.int8)
    split = assign_splits(digit_labels, origin, 0.2, 0.0, seed=0, train_per_class=3, method="sklearn")
    full = assign_splits(digit_labels, origin, 0.2, 0.0, seed=0, method="sklearn")
    order = shuffle(np.flatnonzero(full == TRAIN), random_state=0)
    expected = np.sort(np.concatenate([order[digit_labels[order] == c][:3] for c in range(10)]))
    assert np.array_equal(np.flatnonzero(split == TRAIN), expected)
