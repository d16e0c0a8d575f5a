"""torchvision's classification datasets by name: ``source: torchvision:<Class>``.

``root`` is the folder torchvision's class is given (``torchvision.datasets.CIFAR100(root)``),
holding its files in the layout that class reads. Reading goes through torchvision's own
class, one instance per official split, so layouts, split files and label conventions
are torchvision's. Two things differ:

- Checksums. torchvision refuses files whose md5 differs from the published one; here
  every file it checks is still compared, and a difference is a warning, not a refusal:
  re-packed copies (re-compressed, re-saved .mat files) are common. Downloads
  (``download: true``, rule fetch_dataset) go through torchvision's own downloaders,
  which do refuse a wrong checksum.
- Pickles. CIFAR-100's batches are unpickled with the project's restricted unpickler,
  never with plain ``pickle``.

No torch here: torchvision is imported only by the read and fetch functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..files import atomic_write
from ..images import open_upright
from . import storage_fit, storage_size
from .base import (
    DatasetError,
    DatasetSpec,
    Fetch,
    LazyImages,
    RawDataset,
    Source,
    check_labels,
    resize_all,
    unpickle,
)
from .imagefolder import SOURCE as PHOTOS

log = logging.getLogger(__name__)

PREFIX = "torchvision:"
# The storage default of the photo datasets (any size and aspect): imagefolder's, the largest
# resize of the configured networks (shorter side to it, centre-cropped), as for every photo
# source. The small datasets (and EuroSAT's 64-pixel tiles) keep their native size.
PHOTO_SIZE = PHOTOS.image_size
# RawDataset.origin of each official split (datasets.SPLITS order).
_ORIGIN = {"train": 0, "validation": 1, "test": 2}
# Where a download is put together before it is moved into root (a killed one is removed).
_STAGING = ".download"

# Names for classes whose torchvision class has none.
_DIGITS = tuple(str(i) for i in range(10))
# The order of STL-10's class_names.txt (labels 1..10), for a copy without that file.
_STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


# How a constructed dataset hands over its images and labels: uint8 NHWC arrays where the
# class holds them in memory, else the image files (decoded at preparation: LazyImages).
def _nhwc(ds) -> tuple[Any, Any]:
    return np.asarray(ds.data), ds.targets


def _nchw(ds) -> tuple[Any, Any]:
    return np.ascontiguousarray(np.asarray(ds.data).transpose(0, 2, 3, 1)), ds.labels


def _grey(ds) -> tuple[Any, Any]:
    grey = ds.data.numpy()
    return np.repeat(grey[..., None], 3, axis=-1), ds.targets.numpy()


def _listed(ds) -> tuple[Any, Any]:
    return ds._image_files, ds._labels


def _pets(ds) -> tuple[Any, Any]:
    return ds._images, ds._labels


def _folder(ds) -> tuple[Any, Any]:
    return [path for path, _ in ds.samples], ds.targets


def _own_classes(ds) -> list[str]:
    return list(ds.classes)


@dataclass(frozen=True)
class Dataset:
    """One torchvision class, as this family reads it."""

    name: str  # the class in torchvision.datasets
    title: str
    # Each official split (datasets.SPLITS names, in that order) -> the class's arguments for it.
    splits: Mapping[str, Mapping[str, Any]]
    folder: str  # what root holds, relative to it: the cheap check
    holds: str  # what that folder holds, for "expected ..."
    items: Callable[[Any], tuple[Any, Any]]
    image_size: int | None = PHOTO_SIZE
    fit: str = "crop"
    classes: Callable[[Any], list[str]] = _own_classes
    md5_published: bool = True  # whether torchvision checks its downloads' md5
    notes: str = ""

    @property
    def source(self) -> str:
        return PREFIX + self.name

    @property
    def manifest(self) -> str:
        """What a finished download writes last (rule fetch_dataset's output)."""
        return f"torchvision-{self.name}.json"

    @property
    def expects(self) -> str:
        return f"the layout torchvision.datasets.{self.name} reads: {self.holds}; or set download: true"


_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
_SPLIT_TRAIN_TEST = {"train": {"split": "train"}, "test": {"split": "test"}}
_SPLIT_THREE = {"train": {"split": "train"}, "validation": {"split": "val"}, "test": {"split": "test"}}
_VALIDATION = "official validation split: used with `split.official_validation: true`"

DATASETS: tuple[Dataset, ...] = (
    Dataset("CIFAR100", "CIFAR-100 (torchvision)", _TRAIN_TEST, "cifar-100-python",
            "cifar-100-python/ with train, test and meta (cifar-100-python.tar.gz extracted)",
            _nhwc, image_size=32, fit="squash"),
    Dataset("DTD", "Describable Textures (torchvision)", _SPLIT_THREE, "dtd/dtd",
            "dtd/dtd/ with images/<class>/ and labels/train1.txt, val1.txt, test1.txt (dtd-r1.0.1.tar.gz "
            "extracted into dtd/)", _listed, notes=f"partition 1; {_VALIDATION}"),
    Dataset("EuroSAT", "EuroSAT RGB satellite tiles (torchvision)", {}, "eurosat/2750",
            "eurosat/2750/<class>/*.jpg (EuroSAT.zip extracted into eurosat/)", _folder,
            image_size=64, notes="64x64 tiles; no official splits"),
    Dataset("FGVCAircraft", "FGVC-Aircraft, 100 variants (torchvision)", _SPLIT_THREE, "fgvc-aircraft-2013b",
            "fgvc-aircraft-2013b/data/ with images/, variants.txt and images_variant_train.txt, _val.txt, "
            "_test.txt", _listed, md5_published=False, notes=f"labelled by variant; {_VALIDATION}"),
    Dataset("FashionMNIST", "Fashion-MNIST (torchvision)", _TRAIN_TEST, "FashionMNIST/raw",
            "FashionMNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte", _grey, image_size=28, fit="squash", notes="grey, stored as RGB"),
    Dataset("Flowers102", "Oxford 102 Flowers (torchvision)", _SPLIT_THREE, "flowers-102",
            "flowers-102/ with jpg/, imagelabels.mat and setid.mat", _listed, notes=_VALIDATION),
    Dataset("Food101", "Food-101 (torchvision)", _SPLIT_TRAIN_TEST, "food-101",
            "food-101/ with images/<class>/ and meta/train.json, meta/test.json", _listed),
    Dataset("MNIST", "MNIST handwritten digits (torchvision)", _TRAIN_TEST, "MNIST/raw",
            "MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte", _grey, image_size=28, fit="squash", notes="grey, stored as RGB"),
    Dataset("OxfordIIITPet", "Oxford-IIIT Pet, 37 breeds (torchvision)",
            {"train": {"split": "trainval"}, "test": {"split": "test"}}, "oxford-iiit-pet",
            "oxford-iiit-pet/ with images/ and annotations/trainval.txt, annotations/test.txt", _pets,
            notes="trainval is the training split"),
    Dataset("STL10", "STL-10 (torchvision)", _SPLIT_TRAIN_TEST, "stl10_binary",
            "stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin and unlabeled_X.bin "
            "(torchvision requires it; its images are not read)", _nchw, image_size=96, fit="squash",
            classes=lambda ds: list(getattr(ds, "classes", None) or _STL10_CLASSES)),
    Dataset("SVHN", "Street View House Numbers (torchvision)", _SPLIT_TRAIN_TEST, "train_32x32.mat",
            "train_32x32.mat and test_32x32.mat", _nchw, image_size=32, fit="squash",
            classes=lambda ds: list(_DIGITS), notes="digit 0 is class 0; the extra split is not read"),
)
BY_NAME = {d.name: d for d in DATASETS}


# --- reading ---------------------------------------------------------------------------


class _RestrictedPickle:
    """What the ``pickle`` name of a torchvision dataset module is while it reads: a
    ``load`` through the project's restricted unpickler (numpy arrays, plain containers)."""

    @staticmethod
    def load(f, encoding: str = "latin1") -> Any:
        return unpickle(f.read(), getattr(f, "name", "a pickle"))


@contextlib.contextmanager
def _patched(module, **names: Any) -> Iterator[None]:
    """``module``'s globals ``names`` replaced (those it has) for the duration: process-wide,
    so one read at a time per process (``prepare_dataset`` is one process per dataset)."""
    saved = {name: getattr(module, name) for name in names if hasattr(module, name)}
    try:
        for name in saved:
            setattr(module, name, names[name])
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _module(cls) -> Any:
    return sys.modules[cls.__module__]


def _lenient_check(differing: dict[str, tuple[str, str]], md5_cache: dict[str, str]):
    """A stand-in for torchvision's ``check_integrity`` that compares each file's md5 as the
    original does (once per file) but records a difference in ``differing`` instead of
    failing: only a missing file fails."""
    from torchvision.datasets.utils import calculate_md5

    def check_integrity(fpath, md5=None) -> bool:
        if not os.path.isfile(fpath):
            return False
        if md5 is not None:
            key = str(fpath)
            if key not in md5_cache:
                md5_cache[key] = calculate_md5(fpath)
            if md5_cache[key] != md5:
                differing[key] = (md5_cache[key], md5)
        return True

    return check_integrity


def _construct(dataset: Dataset, cls, root: Path, split: str, arguments: Mapping[str, Any], **more) -> Any:
    """torchvision's class for one split, its refusals as a DatasetError naming root and the layout."""
    try:
        return cls(str(root), **arguments, **more)
    except DatasetError:
        raise
    except Exception as err:  # RuntimeError "Dataset not found", a missing split file, a malformed .mat ...
        part = f"the {split} split" if split else "the images"
        raise DatasetError(
            f"{root}: torchvision.datasets.{dataset.name} cannot read {part} "
            f"({type(err).__name__}: {err}); expected {dataset.expects}"
        ) from err


def _split_items(dataset: Dataset, ds, where: str, size: int, fit: str) -> tuple[np.ndarray | list[Path], np.ndarray]:
    """One constructed split as (uint8 (N, size, size, 3) images, or its image files; int64 labels)."""
    images, labels = dataset.items(ds)
    stored = resize_all(images, size) if isinstance(images, np.ndarray) else [Path(p) for p in images]
    return stored, check_labels(np.asarray(labels), len(stored), f"{dataset.name} {where}")


def read(dataset: Dataset, spec: DatasetSpec) -> RawDataset:
    """Every official split of ``dataset`` under ``spec.root``, through torchvision's class."""
    root = Path(spec.root)
    if spec.download and not (root / dataset.manifest).is_file():
        fetch(dataset, root)
    problem = check(dataset, root)
    if problem:
        raise DatasetError(f"{root} {problem}; expected {dataset.expects}")
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset.name)
    differing: dict[str, tuple[str, str]] = {}
    lenient = _lenient_check(differing, {})
    size, fit = storage_size(spec), storage_fit(spec)
    images, labels, origin, class_names = [], [], [], None
    splits = dataset.splits or {"": {}}  # no official splits: one instance holds every image
    log.info("reading torchvision.datasets.%s from %s", dataset.name, root)
    with _patched(_module(cls), check_integrity=lenient, pickle=_RestrictedPickle):
        for split, arguments in splits.items():
            ds = _construct(dataset, cls, root, split, arguments)
            names = dataset.classes(ds)
            where = f"{split} split" if split else "all images"
            if class_names is not None and names != class_names:
                raise DatasetError(
                    f"{root}: the {where} of {dataset.name} names other classes than the first split "
                    f"({len(names)} vs {len(class_names)}: {sorted(set(names) ^ set(class_names))[:5]}); "
                    "every split must list the same classes"
                )
            class_names = names
            x, y = _split_items(dataset, ds, where, size, fit)
            if len(y) and y.max() >= len(names):
                raise DatasetError(f"{root}: {dataset.name} {where}: label {y.max()} but only {len(names)} classes")
            images.append(x)
            labels.append(y)
            origin.append(np.full(len(y), _ORIGIN[split or "train"], dtype=np.int8))
            log.info("read %s %s: %d images", dataset.name, where, len(y))
    if differing:
        listed = "; ".join(
            f"{os.path.relpath(path, root)} (md5 {found}, published {expected})"
            for path, (found, expected) in sorted(differing.items())
        )
        log.warning(
            "%s: %d file(s) differ from the checksums torchvision publishes for %s: %s. Read anyway "
            "(re-packed copies are common); results may differ from those on the published files",
            root, len(differing), dataset.name, listed,
        )
    if isinstance(images[0], np.ndarray):
        stored = np.concatenate(images)
    else:  # photo classes: the files, decoded at preparation
        stored = LazyImages([p for paths in images for p in paths], size, fit, open_upright,
                            what=f"{dataset.name} images")
    return RawDataset(
        images=stored,
        labels=np.concatenate(labels),
        class_names=list(class_names),
        origin=np.concatenate(origin) if dataset.splits else None,
    )


def check(dataset: Dataset, root: Path) -> str | None:
    """A cheap look at root (no file read): None, or what is wrong."""
    return None if (root / dataset.folder).exists() else f"holds no {dataset.folder}"


# --- downloading -----------------------------------------------------------------------


def fetch(dataset: Dataset, root: Path) -> Path:
    """Download ``dataset`` into ``root`` with torchvision's downloaders, md5-verified where
    torchvision publishes the md5; then write ``root/torchvision-<Class>.json`` (the files
    downloaded and their md5s) last.

    Everything is downloaded into ``root/.download/`` and moved into root only once every
    split has been read back by torchvision's class (its checks strict): a killed or failed
    download leaves no manifest, and the next attempt starts afresh.
    """
    root = Path(root)
    manifest = root / dataset.manifest
    if manifest.is_file():
        return manifest
    import torchvision
    import torchvision.datasets
    from torchvision.datasets import utils

    cls = getattr(torchvision.datasets, dataset.name)
    staging = root / _STAGING
    if staging.exists():
        log.info("removing %s, left by an unfinished download", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    downloads: list[tuple[str, Path, str | None]] = []
    original = utils.download_url

    def download_url(url, root, filename=None, md5=None, *args, **kwargs):
        original(url, root, filename, md5, *args, **kwargs)  # raises on a wrong md5
        downloads.append((url, Path(root) / (filename or os.path.basename(url)), md5))

    log.info("downloading torchvision.datasets.%s into %s", dataset.name, staging)
    try:
        with _patched(utils, download_url=download_url), \
                _patched(_module(cls), download_url=download_url, pickle=_RestrictedPickle):
            for split, arguments in (dataset.splits or {"": {}}).items():
                _construct(dataset, cls, staging, split, arguments, download=True)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(err, Exception):
            raise
        raise DatasetError(
            f"could not download torchvision.datasets.{dataset.name} into {root} ({err}); removed what was "
            f"downloaded. Without network access, download it on a machine that has it and set root to the "
            f"folder holding {dataset.holds} (without download: true)"
        ) from err
    files = []
    for url, path, md5 in downloads:
        found = md5 or utils.calculate_md5(path)
        if md5 is None:
            log.warning("%s: torchvision publishes no checksum for %s; downloaded it unverified (md5 %s)",
                        dataset.name, url, found)
        files.append({"url": url, "file": path.relative_to(staging).as_posix(), "md5": found,
                      "verified": md5 is not None})
    for entry in sorted(staging.iterdir()):
        target = root / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
    staging.rmdir()
    record = {"source": dataset.source, "torchvision": torchvision.__version__, "downloads": files}
    with atomic_write(manifest, "w") as f:
        json.dump(record, f, indent=1)
    log.info("%s: %d file(s) downloaded; wrote %s", dataset.name, len(files), manifest)
    return manifest


# --- the sources -----------------------------------------------------------------------


def _source(dataset: Dataset) -> Source:
    checked = ("md5 verified" if dataset.md5_published
               else "unverified: torchvision publishes no checksum; the md5 got is recorded")
    return Source(
        name=dataset.source,
        title=dataset.title,
        read=functools.partial(read, dataset),
        image_size=dataset.image_size,
        expects=dataset.expects,
        check=functools.partial(check, dataset),
        fit=dataset.fit,
        splits=tuple(dataset.splits),
        fetch=Fetch(dataset.manifest, functools.partial(fetch, dataset),
                    what=f"the files with torchvision's downloader ({checked}; `{dataset.manifest}` written "
                         "last)"),
        notes=dataset.notes,
    )


SOURCES = tuple(_source(d) for d in DATASETS)
