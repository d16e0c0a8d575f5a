"""torchvision's datasets by name (``source: torchvision:<Class>``), through toy copies written
in the exact layouts torchvision's classes read (tests/tv_layouts.py), and downloads through
torchvision's own downloaders served from this machine (nothing leaves it)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import logging
import pickle
import tarfile
import threading
from pathlib import Path

import fixtures
import numpy as np
import pandas as pd
import pytest
import tv_layouts
from conftest import REPO, copy_workflow, snakemake, write_config
from fixtures import decoded

from transfer_lab import sources
from transfer_lab.config import ConfigError, load_schema, validate_config
from transfer_lab.datasets import SplitSpec, load_prepared, prepare_dataset
from transfer_lab.sources import torchvision_datasets as tvd
from transfer_lab.sources.base import DatasetError

# Our split names for torchvision's (Oxford-IIIT Pet's trainval is the training split).
OURS = {"train": "train", "trainval": "train", "val": "validation", "test": "test", "all": None}
ORIGIN = {"train": 0, "validation": 1, "test": 2}
# The classes whose torchvision class compares md5 sums of the files it reads.
CHECKSUMMED = {"CIFAR100", "SVHN", "STL10", "Flowers102"}
GREY = {"MNIST", "FashionMNIST"}


def spec(name: str, root, **kw):
    """A dataset spec in a workflow whose networks resize to 64 at most (the photos' storage size)."""
    return sources.dataset_spec({"source": f"torchvision:{name}", "root": str(root), "download": False,
                                 "image_size": None, "network_resize": 64, **kw})


def checksum_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "differ from the checksums" in r.getMessage()]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Every class's toy copy, written once: name -> (root, what the writer says it wrote)."""
    base = tmp_path_factory.mktemp("tv")
    return {name: (base / name, write(base / name)) for name, write in tv_layouts.LAYOUTS.items()}


def test_every_layout_written_is_a_family_member():
    assert {f"torchvision:{name}" for name in tv_layouts.LAYOUTS} == {d.source for d in tvd.DATASETS}
    for d in tvd.DATASETS:  # each official split read with the arguments torchvision takes for it
        splits = {OURS[s]: kwargs for s, kwargs in tv_layouts.SPLITS[d.name].items() if s != "all"}
        assert splits == d.splits


@pytest.mark.parametrize("name", list(tv_layouts.LAYOUTS))
def test_official_splits_classes_and_labels(layouts, name, caplog):
    root, written = layouts[name]
    d = tvd.BY_NAME[name]
    caplog.set_level(logging.WARNING)
    raw = decoded(sources.get(d.source).read(spec(name, root)))
    size = sources.storage_size(spec(name, root))  # the photos': the networks' largest resize (64 here)
    assert raw.images.shape[1:] == (size, size, 3) and raw.images.dtype == np.uint8
    assert raw.class_names[: len(written["classes"])] == written["classes"]
    expected = np.concatenate([written["labels"][s] for s in written["splits"]])
    assert raw.labels.tolist() == expected.tolist()  # torchvision's item order, splits in order
    if d.splits:
        origin = np.concatenate([[ORIGIN[OURS[s]]] * n for s, n in written["splits"].items()])  # split order
        assert raw.origin.tolist() == origin.tolist()
    else:
        assert raw.origin is None and len(raw.labels) == sum(written["splits"].values())
    # Upright (the lighter top of every picture stays on top) and each image its class's colour.
    top, bottom = raw.images[:, : size // 8].mean(axis=(1, 2, 3)), raw.images[:, -size // 8:].mean(axis=(1, 2, 3))
    assert (top - bottom > tv_layouts.SKY / 2).all()
    means = raw.images[:, size // 2:].reshape(len(raw.labels), -1, 3).mean(axis=1)
    colours = np.array([[tv_layouts.gray_level(y)] * 3 if name in GREY else fixtures.class_colour(y)
                        for y in raw.labels])
    assert np.abs(means - colours).max() < 10
    # The toy files are not the published ones: a warning where torchvision compares checksums.
    warned = checksum_warnings(caplog)
    assert bool(warned) == (name in CHECKSUMMED), warned
    if warned:
        assert str(root) in warned[0] and "published" in warned[0] and "Read anyway" in warned[0]


@pytest.mark.parametrize("name", ["Flowers102", "MNIST"])
def test_image_size_overrides_the_default(layouts, name):
    raw = decoded(sources.get(f"torchvision:{name}").read(spec(name, layouts[name][0], image_size=40)))
    assert raw.images.shape[1:] == (40, 40, 3)


def test_storage_defaults():
    """Native sizes for the tiny datasets (EuroSAT's tiles too); the photos follow the networks (None)."""
    native = {"CIFAR100": (32, "squash"), "SVHN": (32, "squash"), "STL10": (96, "squash"), "MNIST": (28, "squash"),
              "FashionMNIST": (28, "squash"), "EuroSAT": (64, "crop")}
    assert tvd.PHOTO_SIZE is None
    for d in tvd.DATASETS:
        source = sources.get(d.source)
        assert (source.image_size, source.fit) == native.get(d.name, (tvd.PHOTO_SIZE, "crop"))


# --- checksums: compared as torchvision does, a difference warned about -----------------------


def _published(monkeypatch, folder: Path) -> None:
    """CIFAR100's published md5 sums made those of the files in ``folder``."""
    from torchvision.datasets import CIFAR100

    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})


def test_files_with_their_published_checksums_read_without_warning_and_a_repacked_one_with(
        tmp_path, monkeypatch, caplog):
    tv_layouts.write_CIFAR100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    _published(monkeypatch, folder)
    caplog.set_level(logging.WARNING)
    first = decoded(sources.get("torchvision:CIFAR100").read(spec("CIFAR100", tmp_path)))
    assert checksum_warnings(caplog) == []
    # The same batch pickled again by Python 3: other bytes, the same content.
    batch = pickle.loads((folder / "test").read_bytes(), encoding="latin1")
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=4))
    again = decoded(sources.get("torchvision:CIFAR100").read(spec("CIFAR100", tmp_path)))
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)
    (warned,) = checksum_warnings(caplog)
    assert "1 file(s)" in warned and "cifar-100-python/test (md5" in warned and "/train" not in warned


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    tv_layouts.write_CIFAR100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": Evil()}, protocol=2))
    with pytest.raises(DatasetError, match=r"cifar-100-python/meta: refused to load global '__builtin__.print'"):
        decoded(sources.get("torchvision:CIFAR100").read(spec("CIFAR100", tmp_path)))


# --- what root must hold ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CIFAR100", "SVHN", "DTD", "EuroSAT"])
def test_empty_root_refused_naming_what_torchvision_reads(tmp_path, name):
    d = tvd.BY_NAME[name]
    with pytest.raises(ValueError) as err:
        sources.check_dataset("mine", spec(name, tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"datasets.mine.root: {tmp_path} holds no {d.folder}; expected the layout "
                          f"torchvision.datasets.{name} reads")
    with pytest.raises(DatasetError, match=f"holds no {d.folder}"):
        decoded(sources.get(d.source).read(spec(name, tmp_path)))


def test_incomplete_layout_refused_naming_the_split_and_the_layout(tmp_path):
    tv_layouts.write_DTD(tmp_path)
    (tmp_path / "dtd/dtd/labels/test1.txt").unlink()
    with pytest.raises(DatasetError) as err:
        decoded(sources.get("torchvision:DTD").read(spec("DTD", tmp_path)))
    msg = str(err.value)
    assert "torchvision.datasets.DTD cannot read the test split" in msg and "test1.txt" in msg
    assert "dtd/dtd/ with images/<class>/" in msg


# --- unknown classes --------------------------------------------------------------------------


@pytest.mark.parametrize("name, close", [("torchvision:Cifar100", "torchvision:CIFAR100"),
                                         ("mnist", "torchvision:MNIST"),
                                         ("torchvision:fashion-mnist", "torchvision:FashionMNIST")])
def test_unknown_class_refused_before_any_job_with_close_matches(name, close):
    config = {"networks": {"n": {"arch": "resnet18", "weights": "random"}},
              "datasets": {"d": {"source": name, "root": "somewhere"}}, "heads": {"h": {"kind": "linear"}}}
    with pytest.raises(ConfigError) as err:
        validate_config(config, load_schema(REPO / "workflow/schemas/config.schema.yaml"), check_resources=False)
    msg = str(err.value)
    assert f"datasets.d.source: {name!r} is not valid; valid choices: cifar10" in msg
    assert all(d.source in msg for d in tvd.DATASETS)
    assert msg.rstrip().endswith(f"did you mean: {close}?") or f"did you mean: {close}," in msg
    with pytest.raises(ValueError, match=f"unknown dataset source {name!r}; did you mean: {close}"):
        sources.get(name)


# --- download: torchvision's downloaders, served from a local folder --------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, its base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join()


def _serve_mnist(tmp_path, served, monkeypatch, wrong: str | None = None) -> dict:
    """MNIST's four idx files gzipped and served, MNIST's mirror and md5 sums pointed at them
    (``wrong``: the file whose md5 is not the one served)."""
    from torchvision.datasets import MNIST

    written = tv_layouts.write_MNIST(tmp_path / "toy")
    folder, url = served
    resources = []
    for path in sorted((tmp_path / "toy/MNIST/raw").iterdir()):
        data = gzip.compress(path.read_bytes(), mtime=0)
        (folder / f"{path.name}.gz").write_bytes(data)
        md5 = "0" * 32 if path.name == wrong else hashlib.md5(data).hexdigest()
        resources.append((f"{path.name}.gz", md5))
    monkeypatch.setattr(MNIST, "mirrors", [url])
    monkeypatch.setattr(MNIST, "resources", resources)
    return written


def test_download_verified_moved_into_root_and_manifest_written_last(tmp_path, served, monkeypatch, caplog):
    written = _serve_mnist(tmp_path, served, monkeypatch)
    root = tmp_path / "resources/raw/mnist"
    (root / ".download").mkdir(parents=True)  # left by a killed download: removed, not reused
    (root / ".download/partial.gz").write_bytes(b"half")
    manifest = tvd.fetch(tvd.BY_NAME["MNIST"], root)
    assert manifest == root / "torchvision-MNIST.json"
    record = json.loads(manifest.read_text())
    assert record["source"] == "torchvision:MNIST" and record["torchvision"]
    assert sorted(f["file"] for f in record["downloads"]) == sorted(
        f"MNIST/raw/{p.name}.gz" for p in (tmp_path / "toy/MNIST/raw").iterdir())
    assert all(f["verified"] and f["url"].startswith(served[1]) for f in record["downloads"])
    assert sorted(p.name for p in root.iterdir()) == ["MNIST", "torchvision-MNIST.json"]
    caplog.set_level(logging.WARNING)
    raw = decoded(sources.get("torchvision:MNIST").read(spec("MNIST", root, download=True)))
    assert raw.labels.tolist() == written["labels"]["train"] + written["labels"]["test"]
    assert checksum_warnings(caplog) == []
    for path in served[0].iterdir():
        path.unlink()  # nothing to download any more: the manifest says it is done
    assert tvd.fetch(tvd.BY_NAME["MNIST"], root) == manifest


def test_download_with_a_wrong_checksum_refused_leaving_nothing(tmp_path, served, monkeypatch):
    _serve_mnist(tmp_path, served, monkeypatch, wrong="t10k-labels-idx1-ubyte")
    root = tmp_path / "resources/raw/mnist"
    with pytest.raises(DatasetError) as err:
        tvd.fetch(tvd.BY_NAME["MNIST"], root)
    msg = str(err.value)
    assert "could not download torchvision.datasets.MNIST" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "MNIST/raw/ with" in msg  # what to place where, offline
    assert list(root.iterdir()) == []


def test_download_of_an_archive_checked_strictly_after_extraction(tmp_path, served, monkeypatch):
    """CIFAR-100's tarball: md5-verified, extracted, then every batch's md5 checked by torchvision's
    class; a batch that differs from the published md5 fails the download (not just a warning)."""
    from torchvision.datasets import CIFAR100

    written = tv_layouts.write_CIFAR100(tmp_path / "toy")
    folder, url = served
    with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "toy/cifar-100-python", arcname="cifar-100-python")
    data = (folder / "cifar-100-python.tar.gz").read_bytes()
    monkeypatch.setattr(CIFAR100, "url", url + "cifar-100-python.tar.gz")
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(data).hexdigest())
    root = tmp_path / "raw"
    with pytest.raises(DatasetError, match="could not download torchvision.datasets.CIFAR100"):
        tvd.fetch(tvd.BY_NAME["CIFAR100"], root)  # the batches are not the published ones
    assert list(root.iterdir()) == []
    _published(monkeypatch, tmp_path / "toy/cifar-100-python")
    manifest = tvd.fetch(tvd.BY_NAME["CIFAR100"], root)
    (download,) = json.loads(manifest.read_text())["downloads"]
    assert download == {"url": CIFAR100.url, "file": "cifar-100-python.tar.gz", "md5": CIFAR100.tgz_md5,
                        "verified": True}
    raw = decoded(sources.get("torchvision:CIFAR100").read(spec("CIFAR100", root)))
    assert raw.labels.tolist() == written["labels"]["train"] + written["labels"]["test"]


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.integration
def test_workflow_keeps_the_official_splits_and_warns_in_the_log(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    root = tmp_path / "data"
    written = tv_layouts.write_CIFAR100(root, per_class=12)
    config = {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {"c100": {"source": "torchvision:CIFAR100", "root": str(root)}},
        "split": {"validation_fraction": 0.25, "test_fraction": 0.5},
        "heads": {"linear": {"kind": "linear", "epochs": 3}},
    }
    write_config(workdir, config)
    run = snakemake(workdir)
    assert run.jobs == {"prepare_dataset": 1, "extract_features": 1, "train_head": 1, "compare": 1}, run.output
    prepared = load_prepared(workdir / "results/datasets/c100.npz")
    sizes = prepared.split_sizes()
    assert sizes["test"] == written["splits"]["test"] == 36  # the official test split, not test_fraction
    assert sizes["train"] + sizes["validation"] == written["splits"]["train"] and sizes["validation"] == 9
    assert prepared.class_names == written["classes"] and prepared.meta["source"] == "torchvision:CIFAR100"
    table = pd.read_csv(workdir / "results/comparison.csv")
    assert table.loc[0, ["n_train", "n_validation", "n_test"]].tolist() == [27, 9, 36]
    log = (workdir / "results/logs/prepare_dataset/c100.log").read_text()
    assert "differ from the checksums torchvision publishes for CIFAR100" in log


def test_prepared_splits_in_process(layouts):
    """Flowers102's official validation split replaces the carved one when asked for."""
    root, written = layouts["Flowers102"]
    split = SplitSpec(validation_fraction=0.5, test_fraction=0.2, seed=0, official_validation=True)
    ds = prepare_dataset(spec("Flowers102", root), split)
    assert ds.split_sizes() == {"train": written["splits"]["train"], "validation": written["splits"]["val"],
                                "test": written["splits"]["test"]}


def test_splits_naming_other_classes_refused(tmp_path):
    """DTD numbers its classes per split: a split missing a class would shift its labels."""
    tv_layouts.write_DTD(tmp_path)
    listing = tmp_path / "dtd/dtd/labels/test1.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("".join(f"{line}\n" for line in lines if not line.startswith("banded/")))
    with pytest.raises(DatasetError, match=r"the test split of DTD names other classes .*\['banded'\].*same classes"):
        decoded(sources.get("torchvision:DTD").read(spec("DTD", tmp_path)))


def test_stl10_without_its_class_names_file_gets_the_published_names(tmp_path):
    tv_layouts.write_STL10(tmp_path)
    (tmp_path / "stl10_binary/class_names.txt").unlink()
    raw = decoded(sources.get("torchvision:STL10").read(spec("STL10", tmp_path)))
    assert raw.class_names == ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def test_download_without_a_published_checksum_records_the_md5_got(tmp_path, served, monkeypatch, caplog):
    from torchvision.datasets import FGVCAircraft

    tv_layouts.write_FGVCAircraft(tmp_path / "toy")
    folder, url = served
    with tarfile.open(folder / "fgvc-aircraft-2013b.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "toy/fgvc-aircraft-2013b", arcname="fgvc-aircraft-2013b")
    md5 = hashlib.md5((folder / "fgvc-aircraft-2013b.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(FGVCAircraft, "_URL", url + "fgvc-aircraft-2013b.tar.gz")
    caplog.set_level(logging.WARNING)
    manifest = tvd.fetch(tvd.BY_NAME["FGVCAircraft"], tmp_path / "raw")
    (download,) = json.loads(manifest.read_text())["downloads"]
    assert download == {"url": FGVCAircraft._URL, "file": "fgvc-aircraft-2013b.tar.gz", "md5": md5,
                        "verified": False}
    assert any("publishes no checksum" in r.getMessage() and md5 in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_download_true_plans_fetch_dataset_writing_the_manifest(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {"svhn": {"source": "torchvision:SVHN", "download": True}},
        "heads": {"linear": {"kind": "linear"}},
    })
    run = snakemake(workdir, "-n", "resources/raw/svhn/torchvision-SVHN.json", "results/datasets/svhn.npz")
    assert run.jobs == {"fetch_dataset": 1, "prepare_dataset": 1}, run.output


def test_reading_with_download_true_fetches_what_is_missing(tmp_path, served, monkeypatch):
    written = _serve_mnist(tmp_path, served, monkeypatch)
    root = tmp_path / "resources/raw/mnist"
    raw = decoded(sources.get("torchvision:MNIST").read(spec("MNIST", root, download=True)))
    assert len(raw.labels) == sum(written["splits"].values())
    assert (root / "torchvision-MNIST.json").is_file()
