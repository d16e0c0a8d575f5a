"""tests/tv_layouts.py writes what torchvision 0.29.1's own dataset classes read: for each of
the eleven classes and each official split, the class (download=False) finds the files,
counts the items, gives the labels and class names the writer says, and each image has the
written size, mode, class colour and orientation. The classes that compare md5 sums refuse
the toy files unless inside relaxed_checksums(), and a missing file is refused even there.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
from fixtures import class_colour
from PIL import Image
from torchvision.datasets import utils as tv_utils
from tv_layouts import (
    FGVC_HIERARCHY,
    FGVC_LEVELS,
    LAYOUTS,
    NEEDS_RELAXED_CHECKSUMS,
    SKY,
    SPLITS,
    gray_level,
    relaxed_checksums,
)

GRAY = {"MNIST", "FashionMNIST"}
CASES = [(name, split) for name in LAYOUTS for split in SPLITS[name]]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """name -> (root, writer's result), each layout written once for the module."""
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            cache[name] = (root, LAYOUTS[name](root))
        return cache[name]

    return get


def open_dataset(name: str, root: Path, split: str, **extra):
    """torchvision's class on the split, inside relaxed_checksums() only where it is needed."""
    needed = relaxed_checksums() if name in NEEDS_RELAXED_CHECKSUMS else contextlib.nullcontext()
    with needed:
        return getattr(torchvision.datasets, name)(root, download=False, **SPLITS[name][split], **extra)


def check_picture(image: Image.Image, label: int, gray: bool) -> None:
    """The class colour below the top third, that plus SKY in it (the top rows, not the left
    columns or the bottom: a transposed or flipped reader fails)."""
    pixels = np.asarray(image, dtype=float).reshape(image.size[1], image.size[0], -1)
    third = pixels.shape[0] // 3
    top, rest = pixels[: third - 2].mean(axis=(0, 1)), pixels[third + 2 :].mean(axis=(0, 1))
    expected = np.array([gray_level(label)] if gray else class_colour(label), dtype=float)
    assert np.abs(rest - expected).max() < 8, (rest, expected)
    assert (top - rest).min() > SKY / 2, (top, rest)


@pytest.mark.parametrize("name,split", CASES)
def test_torchvision_reads_the_layout(written, name, split):
    """(Outside relaxed_checksums() for the classes not in NEEDS_RELAXED_CHECKSUMS: that
    they read the files without it is part of the test.)"""
    root, result = written(name)
    assert set(result["splits"]) == set(SPLITS[name])
    ds = open_dataset(name, root, split)
    assert len(ds) == result["splits"][split] > 0
    if name == "SVHN":
        assert not hasattr(ds, "classes")  # torchvision gives none; the writer's are the digits
        assert result["classes"] == [str(d) for d in range(len(result["classes"]))]
    else:
        assert list(ds.classes) == result["classes"]
    labels = []
    for i in range(len(ds)):
        image, label = ds[i]
        assert type(label) is int
        labels.append(label)
        assert isinstance(image, Image.Image)
        assert image.mode == ("L" if name in GRAY else "RGB")
        assert image.size == result["sizes"][split][i]
        check_picture(image, label, name in GRAY)
    assert labels == result["labels"][split]
    assert set(labels) == set(range(3))  # every class in every split


@pytest.mark.parametrize("name", sorted(NEEDS_RELAXED_CHECKSUMS))
def test_md5_checking_classes_refuse_the_files_without_relaxed_checksums(written, name):
    root, _ = written(name)
    for kwargs in SPLITS[name].values():
        with pytest.raises(RuntimeError, match="not found or corrupted"):
            getattr(torchvision.datasets, name)(root, download=False, **kwargs)


# name -> (path under root to delete, split to open, what torchvision raises)
MISSING = [
    ("CIFAR100", "cifar-100-python/test", "train", RuntimeError, "Dataset not found or corrupted"),
    ("CIFAR100", "cifar-100-python/meta", "test", RuntimeError, "metadata file not found or corrupted"),
    ("SVHN", "test_32x32.mat", "test", RuntimeError, "Dataset not found or corrupted"),
    ("STL10", "stl10_binary/unlabeled_X.bin", "train", RuntimeError, "Dataset not found or corrupted"),
    ("STL10", "stl10_binary/test_y.bin", "test", RuntimeError, "Dataset not found or corrupted"),
    ("Flowers102", "flowers-102/setid.mat", "val", RuntimeError, "Dataset not found or corrupted"),
    ("Flowers102", "flowers-102/jpg", "train", RuntimeError, "Dataset not found or corrupted"),
    ("MNIST", "MNIST/raw/t10k-labels-idx1-ubyte", "train", RuntimeError, "Dataset not found"),
    ("FashionMNIST", "FashionMNIST/raw/train-images-idx3-ubyte", "test", RuntimeError, "Dataset not found"),
    ("OxfordIIITPet", "oxford-iiit-pet/annotations", "trainval", RuntimeError, "Dataset not found"),
    ("OxfordIIITPet", "oxford-iiit-pet/annotations/test.txt", "test", FileNotFoundError, "test.txt"),
    ("DTD", "dtd/dtd", "train", RuntimeError, "Dataset not found"),
    ("DTD", "dtd/dtd/labels/val1.txt", "val", FileNotFoundError, "val1.txt"),
    ("EuroSAT", "eurosat/2750", "all", RuntimeError, "Dataset not found"),
    ("FGVCAircraft", "fgvc-aircraft-2013b", "train", RuntimeError, "Dataset not found"),
    ("FGVCAircraft", "fgvc-aircraft-2013b/data/variants.txt", "test", FileNotFoundError, "variants.txt"),
    ("Food101", "food-101/images", "train", RuntimeError, "Dataset not found"),
    ("Food101", "food-101/meta/test.json", "test", FileNotFoundError, "test.json"),
]


@pytest.mark.parametrize("name,missing,split,error,match", MISSING, ids=[f"{m[0]}-{m[1]}" for m in MISSING])
def test_a_missing_file_is_refused_even_with_relaxed_checksums(tmp_path, name, missing, split, error, match):
    LAYOUTS[name](tmp_path)
    path = tmp_path / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with relaxed_checksums(), pytest.raises(error, match=match):
        getattr(torchvision.datasets, name)(tmp_path, download=False, **SPLITS[name][split])


def test_relaxed_checksums_passes_md5_of_existing_files_only(tmp_path):
    original = tv_utils.check_md5
    there = tmp_path / "file.bin"
    there.write_bytes(b"toy")
    wrong = "0" * 32
    assert not tv_utils.check_integrity(there, wrong)
    with relaxed_checksums():
        assert tv_utils.check_integrity(there, wrong)
        assert torchvision.datasets.cifar.check_integrity(str(there), wrong)  # the name a module imported
        assert not tv_utils.check_integrity(tmp_path / "absent.bin", wrong)
        assert not tv_utils.check_integrity(tmp_path, wrong)  # a folder is no file
    assert tv_utils.check_md5 is original
    assert not tv_utils.check_integrity(there, wrong)


def test_stl10_folds(written):
    root, result = written("STL10")
    assert len(result["folds"]) == 10
    for k in (0, 9):
        ds = open_dataset("STL10", root, "train", folds=k)
        fold = result["folds"][k]
        assert len(ds) == len(fold) > 0
        assert [ds[i][1] for i in range(len(ds))] == [result["labels"]["train"][j] for j in fold]


def test_fgvc_aircraft_annotation_levels_and_trainval(written):
    root, result = written("FGVCAircraft")
    variant = {split: open_dataset("FGVCAircraft", root, split) for split in SPLITS["FGVCAircraft"]}
    for index, level in enumerate(FGVC_LEVELS):
        if level == "variant":
            continue
        names = sorted({h[index] for h in FGVC_HIERARCHY[:3]})
        for split, ds_variant in variant.items():
            ds = open_dataset("FGVCAircraft", root, split, annotation_level=level)
            assert ds.classes == names
            assert len(ds) == len(ds_variant)
            assert [ds.classes[ds[i][1]] for i in range(len(ds))] == [
                FGVC_HIERARCHY[y][index] for y in result["labels"][split]
            ]
    trainval = torchvision.datasets.FGVCAircraft(root)  # the default split
    assert len(trainval) == result["splits"]["train"] + result["splits"]["val"]


def test_oxford_pet_segmentation_and_species(written):
    root, result = written("OxfordIIITPet")
    ds = open_dataset("OxfordIIITPet", root, "test", target_types=["category", "binary-category", "segmentation"])
    for i in range(len(ds)):
        image, (label, species, trimap) = ds[i]
        assert species == (0 if label == 0 else 1)  # Abyssinian a cat, the two bulldogs dogs
        assert trimap.size == image.size == result["sizes"]["test"][i]
        assert set(np.unique(np.asarray(trimap))) == {1, 2, 3}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_other_counts(tmp_path, name):
    result = LAYOUTS[name](tmp_path, per_class=1, classes=4, seed=5)
    for split in SPLITS[name]:
        ds = open_dataset(name, tmp_path, split)
        assert len(ds) == result["splits"][split] == 4
        assert [ds[i][1] for i in range(len(ds))] == result["labels"][split]
        assert sorted(result["labels"][split]) == [0, 1, 2, 3]


def test_writers_are_deterministic(tmp_path):
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for name, write in LAYOUTS.items():
        a, b, c = (tmp_path / name / s for s in "abc")
        assert write(a) == write(b)
        assert tree(a) == tree(b)
        write(c, seed=1)
        assert tree(c) != tree(a)


def test_published_details_torchvision_does_not_check(written):
    """What the original files hold that torchvision reads past or maps away."""
    root, result = written("SVHN")
    from scipy.io import loadmat

    mat = loadmat(root / "train_32x32.mat")
    n = result["splits"]["train"]
    assert mat["X"].shape == (32, 32, 3, n) and mat["X"].dtype == np.uint8
    assert mat["y"].shape == (n, 1) and mat["y"].dtype == np.uint8
    assert [10 if y == 0 else y for y in result["labels"]["train"]] == mat["y"][:, 0].tolist()  # 10 is digit 0

    root, result = written("CIFAR100")
    import pickle

    train = pickle.loads((root / "cifar-100-python" / "train").read_bytes(), encoding="bytes")
    assert set(train) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}  # py2 str keys
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (result["splits"]["train"], 3072)
    meta = pickle.loads((root / "cifar-100-python" / "meta").read_bytes(), encoding="latin1")
    assert meta["fine_label_names"] == result["classes"] and len(meta["coarse_label_names"]) == 20

    root, result = written("STL10")
    assert sorted(set((root / "stl10_binary" / "test_y.bin").read_bytes())) == [1, 2, 3]  # 1-based

    root, result = written("MNIST")
    head = (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()[:16]
    n = result["splits"]["test"].to_bytes(4, "big")
    assert head == bytes.fromhex("00000803") + n + bytes.fromhex("0000001c0000001c")  # magic, N, 28, 28
