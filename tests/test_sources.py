"""Dataset readers, through files written in each source's published on-disk format."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import fixtures
import numpy as np
import pytest
from conftest import REPO
from fixtures import decoded
from PIL import Image

from transfer_lab import sources
from transfer_lab.datasets import SPLITS, SplitSpec, prepare_dataset
from transfer_lab.sources import check_dataset, cifar10, imagefolder, traffic_pickle
from transfer_lab.sources import gtsrb as gtsrb_source  # `gtsrb` is the fixture of its files
from transfer_lab.sources.base import DatasetError, DatasetSpec


def spec(source: str, root=None, **kw) -> DatasetSpec:
    """A dataset spec as the schema leaves it (defaults filled in), in a workflow whose networks
    resize to 64 at most (the storage size of photos without image_size)."""
    d = {"source": source, "download": False, "image_size": None, "crop_roi": False, "network_resize": 64, **kw}
    if root is not None:
        d["root"] = str(root)
    return sources.dataset_spec(d)


def assert_class_colours(images: np.ndarray, labels: np.ndarray, tol: float = 6.0) -> None:
    """Each image's mean colour is its own class's colour: labels travel with their images."""
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    expected = np.array([fixtures.class_colour(int(y)) for y in labels])
    assert np.abs(means - expected).max() < tol


# --- CIFAR-10 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    base = tmp_path_factory.mktemp("cifar")
    return {
        "tarball": fixtures.write_cifar10(base / "tar", tarball=True),
        "folder": fixtures.write_cifar10(base / "extracted"),
    }


def test_cifar10_tarball_and_extracted_folder_read_identically(cifar):
    roots = [
        cifar["tarball"],
        cifar["tarball"] / "cifar-10-python.tar.gz",
        cifar["folder"],
        cifar["folder"] / "cifar-10-batches-py",
    ]
    assert not (cifar["tarball"] / "cifar-10-batches-py").exists()  # read without extracting
    raws = [cifar10.read(spec("cifar10", r)) for r in roots]
    first = raws[0]
    assert first.images.shape == (180, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.images.flags["C_CONTIGUOUS"]
    assert first.labels.dtype == np.int64 and first.origin.dtype == np.int8
    assert first.class_names == list(fixtures.CIFAR10_CLASSES)
    assert (first.origin == 0).sum() == 150 and (first.origin == 2).sum() == 30
    assert set(np.unique(first.origin)) == {0, 2}
    assert np.bincount(first.labels[first.origin == 2]).tolist() == [3] * 10
    for raw in raws[1:]:
        assert np.array_equal(raw.images, first.images)
        assert np.array_equal(raw.labels, first.labels)
        assert np.array_equal(raw.origin, first.origin)
        assert raw.class_names == first.class_names
    assert not (cifar["tarball"] / "cifar-10-batches-py").exists()


def test_cifar10_planes_become_nhwc(cifar):
    raw = cifar10.read(spec("cifar10", cifar["folder"]))
    (row, col), rgb = fixtures.CIFAR10_MARKER
    assert raw.images[0, row, col].tolist() == list(rgb)
    assert raw.images[0, col, row].tolist() != list(rgb)
    # Everything but the marker is the class colour: labels line up with images.
    assert_class_colours(raw.images[1:], raw.labels[1:])


def test_cifar10_python3_bytes_keys_accepted(tmp_path):
    folder = fixtures.write_cifar10(tmp_path) / "cifar-10-batches-py"
    reference = cifar10.read(spec("cifar10", folder))
    batch = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="latin1")
    rewritten = {k.encode(): v for k, v in batch.items()}
    rewritten[b"labels"] = np.array(batch["labels"], dtype=np.int64)
    (folder / "data_batch_1").write_bytes(pickle.dumps(rewritten, protocol=2))
    meta = pickle.loads((folder / "batches.meta").read_bytes(), encoding="latin1")
    meta = {k.encode(): [n.encode() for n in v] if k == "label_names" else v for k, v in meta.items()}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    raw = cifar10.read(spec("cifar10", folder))
    assert np.array_equal(raw.images, reference.images)
    assert np.array_equal(raw.labels, reference.labels)
    assert raw.class_names == reference.class_names


def test_cifar10_image_size_override(cifar):
    raw = cifar10.read(spec("cifar10", cifar["folder"], image_size=48))
    assert raw.images.shape == (180, 48, 48, 3)
    assert_class_colours(raw.images[1:], raw.labels[1:], tol=8)


def test_cifar10_missing_batch_in_folder_named(tmp_path):
    folder = fixtures.write_cifar10(tmp_path) / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3") as err:
        cifar10.read(spec("cifar10", tmp_path))
    assert "test_batch" in str(err.value) and "batches.meta" in str(err.value)  # lists what is expected


def test_cifar10_missing_member_in_tarball_named(tmp_path):
    files = fixtures.cifar10_batches()
    del files["test_batch"]
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(fixtures.cifar10_tarball_bytes(files))
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py/test_batch") as err:
        cifar10.read(spec("cifar10", tmp_path))
    assert "cifar-10-python.tar.gz" in str(err.value)


def test_cifar10_corrupt_tarball_named(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*not a readable"):
        cifar10.read(spec("cifar10", tmp_path))


@pytest.mark.parametrize(
    "batch",
    [
        {"data": np.zeros((30, 1024), np.uint8), "labels": [0] * 30},  # one channel
        {"data": np.zeros((30, 3072), np.float32), "labels": [0] * 30},  # not uint8
        {"data": np.zeros((30, 3072), np.uint8), "labels": [0] * 29},  # labels short
        {"pixels": np.zeros((30, 3072), np.uint8), "labels": [0] * 30},  # wrong key
    ],
    ids=["shape", "dtype", "labels", "keys"],
)
def test_cifar10_malformed_batch_named(tmp_path, batch):
    folder = fixtures.write_cifar10(tmp_path) / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(fixtures.py2_pickle(batch))
    with pytest.raises(DatasetError, match="data_batch_2"):
        cifar10.read(spec("cifar10", tmp_path))


def test_cifar10_nothing_there_says_what_to_place(tmp_path):
    with pytest.raises(DatasetError) as err:
        cifar10.read(spec("cifar10", tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg


# --- cifar10.fetch (urllib monkeypatched: no network) -----------------------------------------


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(monkeypatch, data: bytes) -> list:
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return _Response(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def _offline(monkeypatch) -> None:
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_fetch_cifar10_offline_says_which_file_where(tmp_path, monkeypatch):
    _offline(monkeypatch)
    dest = tmp_path / "raw" / "cifar10"
    with pytest.raises(DatasetError) as err:
        cifar10.fetch(dest)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg
    assert cifar10.URL in msg
    assert str(dest.resolve()) in msg
    assert cifar10.MD5 in msg
    assert list(dest.iterdir()) == []  # no partial download left behind


def test_fetch_cifar10_cut_connection_leaves_nothing(tmp_path, monkeypatch):
    class Cut(_Response):
        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Cut(b"x" * 100))
    with pytest.raises(DatasetError, match="Connection reset.*cifar-10-python.tar.gz"):
        cifar10.fetch(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_fetch_cifar10_rejects_wrong_checksum(tmp_path, monkeypatch):
    data = fixtures.cifar10_tarball_bytes(fixtures.cifar10_batches())
    _serve(monkeypatch, data)
    with pytest.raises(DatasetError) as err:
        cifar10.fetch(tmp_path)
    msg = str(err.value)
    assert hashlib.md5(data).hexdigest() in msg and cifar10.MD5 in msg
    assert list(tmp_path.iterdir()) == []


def test_fetch_cifar10_accepts_right_checksum_and_reuses_it(tmp_path, monkeypatch):
    data = fixtures.cifar10_tarball_bytes(fixtures.cifar10_batches())
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(data).hexdigest())
    calls = _serve(monkeypatch, data)
    path = cifar10.fetch(tmp_path)
    assert path == tmp_path / "cifar-10-python.tar.gz"
    assert path.read_bytes() == data
    assert calls == [cifar10.URL]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]
    _offline(monkeypatch)
    assert cifar10.fetch(tmp_path) == path  # verified file reused, no network needed


def test_load_cifar10_downloads_when_asked(tmp_path, monkeypatch):
    data = fixtures.cifar10_tarball_bytes(fixtures.cifar10_batches())
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(data).hexdigest())
    calls = _serve(monkeypatch, data)
    root = tmp_path / "resources" / "raw" / "cifar10"
    raw = cifar10.read(spec("cifar10", root, download=True))
    assert raw.images.shape == (180, 32, 32, 3) and len(calls) == 1
    assert (root / "cifar-10-python.tar.gz").is_file()
    cifar10.read(spec("cifar10", root, download=True))
    assert len(calls) == 1  # found on disk the second time


# --- GTSRB -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gtsrb(tmp_path_factory):
    base = tmp_path_factory.mktemp("gtsrb")
    return {
        "official": fixtures.write_gtsrb(base / "official"),
        "torchvision": fixtures.write_gtsrb(base / "torchvision", layout="torchvision"),
    }


def test_gtsrb_official_layout(gtsrb):
    raw = decoded(gtsrb_source.read(spec("gtsrb", gtsrb["official"])))
    assert raw.images.shape == (18, 64, 64, 3) and raw.images.dtype == np.uint8
    assert raw.images.flags["C_CONTIGUOUS"]
    assert raw.labels.dtype == np.int64
    assert (raw.origin == 0).sum() == 12 and (raw.origin == 2).sum() == 6
    assert np.bincount(raw.labels[raw.origin == 0]).tolist() == [4, 4, 4]
    assert np.bincount(raw.labels[raw.origin == 2]).tolist() == [2, 2, 2]
    assert raw.class_names == list(gtsrb_source.CLASS_NAMES) and len(raw.class_names) == 43
    assert raw.class_names[0] == "Speed limit (20km/h)"
    assert raw.class_names[42] == "End of no passing by vehicles over 3.5 metric tons"
    # The sign's centre is its class colour (the border around it is grey noise).
    centres = raw.images[:, 24:40, 24:40].reshape(18, -1, 3).mean(axis=1)
    expected = np.array([fixtures.class_colour(int(y)) for y in raw.labels])
    assert np.abs(centres - expected).max() < 8
    again = decoded(gtsrb_source.read(spec("gtsrb", gtsrb["official"] / "GTSRB")))
    assert np.array_equal(again.images, raw.images) and np.array_equal(again.origin, raw.origin)


def test_gtsrb_torchvision_layout_reads_the_same(gtsrb):
    official = decoded(gtsrb_source.read(spec("gtsrb", gtsrb["official"])))
    for root in (gtsrb["torchvision"], gtsrb["torchvision"] / "gtsrb"):
        raw = decoded(gtsrb_source.read(spec("gtsrb", root)))
        assert np.array_equal(raw.images, official.images)
        assert np.array_equal(raw.labels, official.labels)
        assert np.array_equal(raw.origin, official.origin)


def test_gtsrb_crop_roi_keeps_only_the_sign(gtsrb):
    full = decoded(gtsrb_source.read(spec("gtsrb", gtsrb["official"])))
    cropped = decoded(gtsrb_source.read(spec("gtsrb", gtsrb["official"], crop_roi=True)))
    assert cropped.images.shape == full.images.shape
    assert not np.array_equal(cropped.images, full.images)
    # The grey border is gone: every pixel, corners included, is near the class colour.
    assert_class_colours(cropped.images, cropped.labels, tol=4)
    corners = cropped.images[:, [0, 0, -1, -1], [0, -1, 0, -1]].astype(int)
    expected = np.array([fixtures.class_colour(int(y)) for y in cropped.labels])[:, None]
    assert np.abs(corners - expected).max() <= fixtures.NOISE + 6


def test_gtsrb_image_size_override(gtsrb):
    raw = decoded(gtsrb_source.read(spec("gtsrb", gtsrb["official"], image_size=24)))
    assert raw.images.shape == (18, 24, 24, 3)


def test_gtsrb_class_folder_without_csv_named(tmp_path):
    root = fixtures.write_gtsrb(tmp_path)
    folder = root / "GTSRB" / "Final_Training" / "Images" / "00001"
    (folder / "GT-00001.csv").unlink()
    with pytest.raises(DatasetError) as err:
        decoded(gtsrb_source.read(spec("gtsrb", root)))
    assert str(folder) in str(err.value) and "GT-00001.csv" in str(err.value)


def test_gtsrb_missing_test_part_loads_training_only(tmp_path, caplog):
    root = fixtures.write_gtsrb(tmp_path, test_per_class=0)
    with caplog.at_level(logging.WARNING, logger="transfer_lab.sources"):
        raw = decoded(gtsrb_source.read(spec("gtsrb", root)))
    assert len(raw.labels) == 12 and (raw.origin == 0).all()
    assert "Final_Test" in caplog.text


def test_gtsrb_test_labels_missing_warns_and_finds_them_elsewhere(tmp_path, caplog):
    root = fixtures.write_gtsrb(tmp_path)
    labels_csv = root / "GT-final_test.csv"
    hidden = tmp_path / "elsewhere.csv"
    labels_csv.rename(hidden)
    with caplog.at_level(logging.WARNING, logger="transfer_lab.sources"):
        raw = decoded(gtsrb_source.read(spec("gtsrb", root)))
    # Only the unlabelled GT-final_test.test.csv is there: not mistaken for the labels.
    assert (raw.origin == 0).all() and len(raw.labels) == 12
    assert "GT-final_test.csv" in caplog.text
    for place in (root / "GTSRB", root / "GTSRB" / "Final_Test" / "Images"):
        shutil.copy(hidden, place / "GT-final_test.csv")
        raw = decoded(gtsrb_source.read(spec("gtsrb", root)))
        assert (raw.origin == 2).sum() == 6
        (place / "GT-final_test.csv").unlink()


def test_gtsrb_missing_image_and_missing_training_named(tmp_path):
    root = fixtures.write_gtsrb(tmp_path)
    image = root / "GTSRB" / "Final_Training" / "Images" / "00002" / "00000_00001.ppm"
    image.unlink()
    with pytest.raises(DatasetError, match="00000_00001.ppm"):
        decoded(gtsrb_source.read(spec("gtsrb", root)))
    with pytest.raises(DatasetError, match="Final_Training"):
        decoded(gtsrb_source.read(spec("gtsrb", tmp_path / "GTSRB" / "Final_Test")))


def test_class_ids_beyond_the_43_signs_named_by_number(tmp_path):
    root = fixtures.write_gtsrb(tmp_path / "g", n_classes=45, per_class=1, test_per_class=0)
    assert decoded(gtsrb_source.read(spec("gtsrb", root, image_size=8))).class_names == [str(i) for i in range(45)]
    root = fixtures.write_traffic_pickle(tmp_path / "t", n_classes=44, per_class=1)
    raw = traffic_pickle.read(spec("traffic-pickle", root))
    assert raw.class_names == [str(i) for i in range(44)]


# --- the course's traffic-sign pickles -----------------------------------------------------------


def test_traffic_pickle_with_validation(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path)
    raw = traffic_pickle.read(spec("traffic-pickle", root))
    assert raw.images.shape == (24, 32, 32, 3) and raw.images.dtype == np.uint8
    assert raw.images.flags["C_CONTIGUOUS"]
    assert raw.labels.dtype == np.int64 and raw.origin.dtype == np.int8
    assert [(raw.origin == i).sum() for i in range(3)] == [12, 6, 6]
    assert raw.class_names == list(gtsrb_source.CLASS_NAMES)
    assert_class_colours(raw.images, raw.labels, tol=4)
    resized = traffic_pickle.read(spec("traffic-pickle", root, image_size=40))
    assert resized.images.shape == (24, 40, 40, 3)
    assert_class_colours(resized.images, resized.labels, tol=6)


def test_traffic_pickle_without_validation_and_with_signnames(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path)
    (root / "valid.p").unlink()
    (root / "signnames.csv").write_text("ClassId,SignName\n0,Alpha\n1,Beta\n2,Gamma (3.5t)\n")
    raw = traffic_pickle.read(spec("traffic-pickle", root))
    assert [(raw.origin == i).sum() for i in range(3)] == [12, 0, 6]
    assert raw.class_names == ["Alpha", "Beta", "Gamma (3.5t)"]
    (root / "signnames.csv").write_text("ClassId,SignName\n0,Alpha\n1,Beta\n")
    with pytest.raises(DatasetError, match=r"signnames\.csv.*2"):
        traffic_pickle.read(spec("traffic-pickle", root))


@pytest.mark.parametrize(
    "change",
    [
        {"labels": np.zeros(5, np.uint8)},  # fewer labels than images
        {"labels": np.full(12, -1, np.int64)},
        {"labels": np.zeros(12, np.float32)},
        {"features": np.zeros((12, 32, 32), np.uint8)},
        {"features": np.zeros((12, 32, 32, 3), np.float32)},
        {"features": np.zeros((12, 32, 32, 4), np.uint8)},
    ],
    ids=["length", "negative", "float-labels", "3d", "float", "rgba"],
)
def test_traffic_pickle_malformed_refused_naming_file(tmp_path, change):
    root = fixtures.write_traffic_pickle(tmp_path)
    with open(root / "train.p", "rb") as f:
        data = pickle.load(f)  # our own fixture file
    data.update(change)
    with open(root / "train.p", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(DatasetError, match=r"train\.p"):
        traffic_pickle.read(spec("traffic-pickle", root))


class _Exploit:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_traffic_pickle_code_never_runs(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path / "data")
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"features": _Exploit(str(marker)), "labels": np.zeros(1, np.uint8)})
    (root / "test.p").write_bytes(payload)
    with pytest.raises(DatasetError, match=r"test\.p.*refused"):
        traffic_pickle.read(spec("traffic-pickle", root))
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real: plain pickle runs it
    assert marker.is_dir()


def test_traffic_pickle_missing_test_named(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path)
    (root / "test.p").unlink()
    with pytest.raises(DatasetError, match=r"test\.p"):
        traffic_pickle.read(spec("traffic-pickle", root))


# --- one folder per class ------------------------------------------------------------------------


def _mode_and_size(path: Path) -> tuple[str, tuple[int, int]]:
    with Image.open(path) as image:
        return image.mode, image.size


def test_imagefolder_every_mode_and_format(tmp_path):
    root = fixtures.write_imagefolder(tmp_path)
    files = [p for p in sorted(root.glob("*/[!.]*")) if p.suffix != ".txt"]  # what the loader should take
    modes, sizes = zip(*map(_mode_and_size, files), strict=True)
    assert {"L", "RGBA", "P", "CMYK", "RGB"} <= set(modes)
    assert {".png", ".jpg", ".JPEG", ".bmp", ".ppm"} <= {p.suffix for p in files}
    assert len(set(sizes)) == len(files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's warning on palette transparency
        raw = decoded(imagefolder.read(spec("imagefolder", root)))
    assert raw.images.shape == (8, 64, 64, 3) and raw.images.dtype == np.uint8
    assert raw.images.flags["C_CONTIGUOUS"]
    assert raw.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert raw.class_names == ["cat", "dog"]
    assert raw.origin is None
    colour_kept = [i for i, m in enumerate(modes) if m != "L"]
    assert len(colour_kept) == 7
    assert_class_colours(raw.images[colour_kept], raw.labels[colour_kept], tol=6)
    grey = [i for i, m in enumerate(modes) if m == "L"]
    assert np.ptp(raw.images[grey], axis=-1).max() == 0  # grey repeated to RGB


def test_imagefolder_keeps_the_centre_of_non_square_images(tmp_path):
    for name, (width, height) in (("wide", (120, 40)), ("tall", (30, 90))):
        bands = np.zeros((height, width, 3), dtype=np.uint8)
        bands[...] = (0, 0, 255)  # the outer thirds blue
        if width > height:
            bands[:, width // 3: 2 * width // 3] = (0, 255, 0)
        else:
            bands[height // 3: 2 * height // 3] = (0, 255, 0)
        (tmp_path / name).mkdir()
        Image.fromarray(bands).save(tmp_path / name / "bands.png")
    raw = decoded(imagefolder.read(spec("imagefolder", tmp_path, image_size=16)))
    assert raw.images.shape == (2, 16, 16, 3)
    assert (raw.images[..., 1] > 200).all() and (raw.images[..., 2] < 50).all()  # centre only, unsquashed


def test_imagefolder_image_size_override(tmp_path):
    root = fixtures.write_imagefolder(tmp_path)
    raw = decoded(imagefolder.read(spec("imagefolder", root, image_size=20)))
    assert raw.images.shape == (8, 20, 20, 3)


def test_imagefolder_empty_class_folder_named(tmp_path):
    root = fixtures.write_imagefolder(tmp_path)
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no images yet")
    with pytest.raises(DatasetError, match="emu") as err:
        decoded(imagefolder.read(spec("imagefolder", root)))
    assert str(root / "emu") in str(err.value)


@pytest.mark.parametrize("content", [b"this is not a JPEG", "truncated"])
def test_imagefolder_corrupt_image_named(tmp_path, content):
    root = fixtures.write_imagefolder(tmp_path)
    bad = root / "dog" / "broken.jpg"
    if content == "truncated":
        data = (root / "cat" / "cat_001.jpg").read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match="broken.jpg"):
        decoded(imagefolder.read(spec("imagefolder", root)))


def test_imagefolder_without_class_folders_names_root(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "loose.png")
    with pytest.raises(DatasetError, match="no class folders") as err:
        decoded(imagefolder.read(spec("imagefolder", tmp_path)))
    assert str(tmp_path) in str(err.value)


# --- registry, parse-time checks, and the prepared splits ------------------------------------------


def test_registry():
    assert sources.names() == sorted(sources.names())
    torchvision = {f"torchvision:{c}" for c in ("CIFAR100", "DTD", "EuroSAT", "FGVCAircraft", "FashionMNIST",
                                               "Flowers102", "Food101", "MNIST", "OxfordIIITPet", "STL10", "SVHN")}
    assert set(sources.names()) == {"cifar10", "csv", "digits", "gtsrb", "hf", "imagefolder", "traffic-pickle"} | torchvision
    tested = {"cifar10", "csv", "gtsrb", "hf", "traffic-pickle"} | torchvision - {"torchvision:EuroSAT"}
    assert {n for n in sources.names() if "test" in sources.get(n).splits} == tested
    assert all(sources.get(n).image_size is None or sources.get(n).image_size > 0 for n in sources.names())


def test_official_test_split_survives_preparation(gtsrb, tmp_path):
    split_cfg = SplitSpec(validation_fraction=0.25, test_fraction=0.2, seed=0, train_per_class=None)
    ds = prepare_dataset(spec("gtsrb", gtsrb["official"]), split_cfg)
    assert ds.split_sizes() == {"train": 9, "validation": 3, "test": 6}
    root = fixtures.write_traffic_pickle(tmp_path)
    ds = prepare_dataset(spec("traffic-pickle", root), dataclasses.replace(split_cfg, official_validation=True))
    assert ds.split_sizes() == {"train": 12, "validation": 6, "test": 6}
    assert set(SPLITS) == set(ds.split_sizes())


def test_check_dataset_accepts_fixtures(gtsrb, cifar, tmp_path):
    check_dataset("d", spec("digits"))
    check_dataset("c", spec("cifar10", cifar["tarball"]))
    check_dataset("c", spec("cifar10", cifar["folder"] / "cifar-10-batches-py"))
    check_dataset("c", spec("cifar10", tmp_path / "not-yet", download=True))
    check_dataset("g", spec("gtsrb", gtsrb["torchvision"], crop_roi=True))
    check_dataset("t", spec("traffic-pickle", fixtures.write_traffic_pickle(tmp_path / "t")))
    check_dataset("i", spec("imagefolder", fixtures.write_imagefolder(tmp_path / "i")))


@pytest.mark.parametrize(
    "source, root, extra, key, expected",
    [
        ("cifar10", "missing", {}, "root", "cifar-10-python.tar.gz"),
        ("cifar10", "empty", {}, "root", "cifar-10-batches-py"),
        ("gtsrb", "missing", {}, "root", "Final_Training"),
        ("gtsrb", "empty", {}, "root", "Final_Training"),
        ("traffic-pickle", "empty", {}, "root", "train.p"),
        ("imagefolder", "missing", {}, "root", "subfolder per class"),
        ("imagefolder", "empty", {}, "root", "subfolder per class"),
        ("imagefolder", None, {}, "root", "required"),
        ("cifar10", "empty", {"crop_roi": True}, "crop_roi", "gtsrb"),
        ("gtsrb", "empty", {"download": True}, "download", "cifar10"),
        ("imagefolder", "empty", {"store": "files", "image_size": 64}, "image_size", "would change nothing"),
    ],
)
def test_check_dataset_refusals(tmp_path, source, root, extra, key, expected):
    (tmp_path / "empty").mkdir()
    path = None if root is None else tmp_path / root
    with pytest.raises(ValueError) as err:
        check_dataset("mine", spec(source, path, **extra))
    msg = str(err.value)
    assert msg.startswith(f"datasets.mine.{key}: ")
    assert expected in msg
    if key == "root" and path is not None:
        assert str(path) in msg


def test_storage_fit_crops_only_photos_of_any_aspect():
    from transfer_lab.sources import storage_fit, storage_size

    assert storage_fit(spec("imagefolder")) == "crop"
    for source in ("cifar10", "gtsrb", "traffic-pickle", "digits"):
        assert storage_fit(spec(source)) == "squash"
    assert storage_size(spec("digits", image_size=16)) == 16


def test_digits_honour_image_size_and_a_source_that_ignores_it_is_refused(monkeypatch):
    """Preparation records the storage size and predict resizes new images to it, so every source
    stores its images there: digits resize their 8x8 images to image_size as the others do."""
    from transfer_lab.datasets import plan_dataset
    from transfer_lab.sources.base import RawDataset, resize_all

    split = SplitSpec(0.2, 0.2, 0)
    native = sources.get("digits").read(spec("digits"))
    assert native.images.shape[1:] == (8, 8, 3)
    plan = plan_dataset(spec("digits", image_size=16), split)
    assert plan.images.shape[1:] == (16, 16, 3) and sources.storage_size(spec("digits", image_size=16)) == 16
    assert np.array_equal(plan.images, resize_all(native.images, 16))
    ignoring = dataclasses.replace(sources.get("digits"), read=lambda s: RawDataset(
        native.images, native.labels, native.class_names))
    monkeypatch.setitem(sources._registry(), "digits", ignoring)
    with pytest.raises(RuntimeError, match=r"^source 'digits' read 8x8 images, but the dataset's storage size is 16 "
                                           r"\(its image_size 16\): a source must return its images at "):
        plan_dataset(spec("digits", image_size=16), split)
    assert plan_dataset(spec("digits"), split).images.shape[1:] == (8, 8, 3)


def test_photos_are_stored_at_the_networks_largest_resize_and_tiny_images_at_their_own_size():
    from transfer_lab.sources import follows_networks, storage_size

    photos = {name for name in sources.names() if sources.get(name).image_size is None}
    assert photos == {"imagefolder", "gtsrb", "csv", "hf", "torchvision:DTD", "torchvision:FGVCAircraft",
                      "torchvision:Flowers102", "torchvision:Food101", "torchvision:OxfordIIITPet"}
    for name in photos:
        assert follows_networks(spec(name)) and storage_size(spec(name, network_resize=342)) == 342
        assert not follows_networks(spec(name, image_size=96)) and storage_size(spec(name, image_size=96)) == 96
    native = {"digits": 8, "cifar10": 32, "traffic-pickle": 32, "torchvision:EuroSAT": 64, "torchvision:STL10": 96,
              "torchvision:CIFAR100": 32, "torchvision:SVHN": 32, "torchvision:MNIST": 28, "torchvision:FashionMNIST": 28}
    assert set(native) == set(sources.names()) - photos
    for name, size in native.items():
        assert not follows_networks(spec(name)) and storage_size(spec(name, network_resize=342)) == size
    with pytest.raises(ValueError, match="no network is given: set the dataset's image_size"):
        storage_size(DatasetSpec("imagefolder", "photos"))
    # Kept as their files, photos store nothing: no storage size, nothing that follows the networks.
    for name in ("imagefolder", "csv"):
        assert not follows_networks(spec(name, store="files")) and storage_size(spec(name, store="files")) is None


def test_documented_datasets_table_is_what_the_registry_renders():
    assert sources.docs_table() in (REPO / "docs/configuration.md").read_text(encoding="utf-8")


def test_reading_the_config_imports_no_torch():
    """What the workflow imports to check a config and plan the DAG (the registry and every
    source module included) leaves torch out, so parsing stays fast."""
    code = (
        "import sys, transfer_lab.sources, transfer_lab.datasets, transfer_lab.images, transfer_lab.config\n"
        "transfer_lab.config.load_schema(sys.argv[1])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "workflow/schemas/config.schema.yaml")],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
