"""What a dataset source is, and what its readers share.

A source is one on-disk format, described by a :class:`Source`: how to read it, what
``root`` must hold, how its images are stored and which splits it ships. Readers return
a :class:`RawDataset` whose images are uint8 RGB at the storage size, or, for sources
that decode files, the :class:`LazyImages` preparation decodes in parallel; readers never
unpickle with plain ``pickle``, and name the offending path in every error.

No torch here: the workflow reads the descriptors when it is parsed.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import DatasetError  # here too for source plugins, which import it from this module
from ..files import load_pickle, loads_pickle
from ..images import open_image
from ..storage import draft_size, to_storage

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 5000


@dataclass
class RawDataset:
    """What a source yields: every image, and which official split each came from."""

    # uint8 (N, S, S, 3) RGB at the storage size, or the files still to decode to it
    images: np.ndarray | LazyImages
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    # int8 (N,): 0 official train, 1 official validation, 2 official test;
    # None when the source ships no splits (all images are training images).
    origin: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One ``datasets`` entry of the config, as readers and checks take it.

    ``options`` holds the keys only some sources take (gtsrb's ``crop_roi``), as the
    entry gives them: a source refuses one it does not take when it is set.
    """

    source: str
    root: str | None = None
    image_size: int | None = None  # None: the source's own storage size
    download: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    store: str = "pixels"  # or "files": the prepared dataset holds the original files' paths
    # The largest resize of the configured networks (specs.largest_resize): the storage size of
    # a source that follows the networks (Source.image_size None) when image_size is None and
    # the images are stored as pixels.
    network_resize: int | None = None


@dataclass(frozen=True)
class Option:
    """A config key of the sources that declare it, with its JSON-schema fragment
    (type, default, description), from which the config schema is generated."""

    name: str
    schema: Mapping[str, Any]
    needs: str  # what a source must have to take it, for the refusal: "annotated regions of interest"


@dataclass(frozen=True)
class Fetch:
    """How a source's files are downloaded (rule fetch_dataset), for sources that can be."""

    file: str  # what the download writes into the dataset's folder: the output of rule fetch_dataset
    download: Callable[[Path], Path]  # that folder -> the file, verified; reused when already there
    what: str = ""  # Markdown for the docs table: what is fetched; "" = the file, checksum verified


@dataclass(frozen=True)
class Source:
    """Everything the project knows about one dataset format; a module of
    :mod:`transfer_lab.sources` that defines a module-level ``SOURCE`` (or a family of
    them, ``SOURCES``) registers it."""

    name: str  # the config's ``source``
    title: str  # what it is, in a few words (schema description, docs table)
    read: Callable[[DatasetSpec], RawDataset]
    # Storage side when the config's image_size is null; None (photos): the largest resize of
    # the configured networks, so that each network's own resize-and-crop sees what it would
    # see made from the original file (tiny native images keep their own size instead).
    image_size: int | None
    expects: str  # what root must hold: errors say "expected <expects>"; the docs table too
    # A cheap look at an existing root (reads no image): what is wrong with it, or None.
    check: Callable[[Path], str | None] | None = None
    fit: str = "squash"  # how images of other aspects become square: storage.FITS
    splits: tuple[str, ...] = ()  # the official splits it ships, in datasets.SPLITS order
    needs_root: bool = True
    options: tuple[Option, ...] = ()
    fetch: Fetch | None = None
    notes: str = ""  # Markdown for the docs table, after what root holds
    # For a root that names files elsewhere (a table): those files, for the fingerprint that
    # makes a prepared dataset stale (as every file under a folder root is); no validation.
    listed: Callable[[Path], list[Path]] | None = None
    # Its images are whole files on disk, which a dataset may keep as they are (store: files).
    stores_files: bool = False


# --- what readers share ----------------------------------------------------------------


@dataclass
class LazyImages:
    """Image files (or encoded bytes) a source has listed but not decoded yet.

    Preparation assigns splits from the labels first, then decodes only the kept rows,
    in their final order, chunk by chunk and in parallel (:func:`transfer_lab.datasets.stored_chunks`):
    a dataset of any size never sits in memory as pixels. ``items`` hold whatever
    ``opener`` takes (a path; image bytes and where they are, for ``images.decode_image``);
    ``boxes``: optional per-image (left, top, right, bottom) crops applied before resizing.
    ``np.asarray`` (and indexing) decode, so code written for an array keeps working.
    """

    items: Sequence[Any]
    size: int | None  # None: kept as their files (store: files), never decoded at preparation
    fit: str
    opener: Callable[..., Any] = open_image
    boxes: Sequence[tuple[int, int, int, int]] | None = None
    what: str = "images"

    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.items), self.size, self.size, 3

    @property
    def drafts(self) -> bool:
        """Whether JPEG draft mode can apply: not to images cropped to a box (the box is in
        full-scale pixels)."""
        return self.boxes is None

    def files(self) -> list[Path] | None:
        """The items as files, when every one is a file on disk (``store: files``), else None."""
        return list(self.items) if all(isinstance(item, Path) for item in self.items) else None

    def decode_one(self, i: int, draft: bool = False) -> np.ndarray:
        """Image ``i`` as uint8 (size, size, 3); ``draft``: JPEGs decoded at a reduced scale
        (``storage.draft_size``)."""
        item = self.items[i]
        if self.size is None:
            raise ValueError(f"{self.where(i)}: a dataset kept as its files (store: files) has no storage size to "
                             "decode its images to; extraction decodes the files")
        image = self.opener(item, draft_size(self.size)) if draft and self.drafts else self.opener(item)
        if self.boxes is not None:
            left, top, right, bottom = self.boxes[i]
            width, height = image.size
            box = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DatasetError(f"{item}: region of interest {self.boxes[i]} lies outside the {width}x{height} image")
            image = image.crop(box)
        return to_storage(image, self.size, self.fit)

    def decode(self, rows: Sequence[int] | np.ndarray, draft: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` decoded into one uint8 (len(rows), size, size, 3) array, in that order:
        ``out`` when given (a slice of a memory-mapped file, say), else a new one."""
        if out is None:
            out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(rows):
            out[k] = self.decode_one(int(i), draft)
        return out

    def where(self, i: int) -> str:
        """Image ``i`` as a message names it."""
        item = self.items[i]
        return str(item[1] if isinstance(item, tuple) else item)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.uint8)
        for start in range(0, len(self), _PROGRESS_EVERY):
            rows = range(start, min(start + _PROGRESS_EVERY, len(self)))
            out[rows.start:rows.stop] = self.decode(rows)
            log.info("read %d/%d %s", rows.stop, len(self), self.what)
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.arange(len(self))[index]
        return self.decode_one(int(rows)) if np.ndim(rows) == 0 else self.decode(rows)


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3), squashed through ``to_storage``; unchanged if already there."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = to_storage(image, size)
    return out


def unpickle(data: bytes, where: str) -> Any:
    """Bytes through the restricted unpickler; a refusal or a corrupt pickle is a :class:`DatasetError`."""
    try:
        return loads_pickle(data, where)
    except pickle.UnpicklingError as err:  # UnsafePickleError included; both name the source
        raise DatasetError(str(err)) from err


def read_pickle(path: Path) -> Any:
    """A file through the restricted unpickler; any failure is a :class:`DatasetError` naming it."""
    try:
        return load_pickle(path)
    except Exception as err:  # UnsafePickleError, UnpicklingError, FileNotFoundError: all name the file
        raise DatasetError(str(err)) from err


def str_keys(obj: Any, where: str, what: str) -> dict:
    """A pickled dict with its keys as str: Python 2's str keys arrive as str under
    latin1 decoding, Python 3-written bytes keys as bytes."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected {what} (a dict), got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def check_labels(values: Any, n: int, where: str, key: str = "labels") -> np.ndarray:
    """``values`` as int64 class ids, one per image, none negative."""
    labels = np.asarray(values)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DatasetError(
            f"{where}: '{key}' must be a 1-D sequence of integer class ids, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != n:
        raise DatasetError(f"{where}: {len(labels)} labels for {n} images; they must match one to one")
    if len(labels) and labels.min() < 0:
        raise DatasetError(f"{where}: negative label {labels.min()}; class ids start at 0")
    return labels.astype(np.int64)


# --- labels and splits of tables (csv, hf): one rule for both ----------------------------------

# The splits a table names, as a dataset calls them -> ours (null: left out). One declaration
# for every source that takes it (the registry refuses two that differ).
SPLIT_NAMES = Option(
    "split_names",
    {
        "type": "object",
        "additionalProperties": {"type": ["string", "null"], "enum": ["train", "validation", "test", None]},
        "default": {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                    "test": "test"},
        "description": "the dataset's own split names (a csv's split values, an hf dataset's splits), each mapped "
                       "to train, validation or test, or to null to leave it out; a name not listed is an error. "
                       "Default: train; validation, valid and val; test",
    },
    needs="split names of their own",
)
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def class_names_and_ids(values: Sequence[str], where: str, column: str) -> tuple[list[str], np.ndarray]:
    """Class names and int64 ids of text labels: every value an integer -> the names sorted in
    numeric order ("2" before "10"), else the names sorted as text; a class's id is its
    name's place in that order. A number that is no integer (1.5), or integers mixed with
    names, is a :class:`DatasetError` naming ``where``, the column and examples."""
    distinct = sorted(set(values))
    integers = [v for v in distinct if _INTEGER.fullmatch(v)]
    numbers = [v for v in distinct if _NUMBER.fullmatch(v) and not _INTEGER.fullmatch(v)]
    if numbers:
        raise DatasetError(
            f"{where}: label column {column!r} holds numbers that are no integers ({_examples(numbers)}); "
            "labels are class names or integer class ids"
        )
    if integers and len(integers) < len(distinct):
        names = [v for v in distinct if not _INTEGER.fullmatch(v)]
        raise DatasetError(
            f"{where}: label column {column!r} mixes integers ({_examples(integers)}) and names "
            f"({_examples(names)}); use one kind for every row"
        )
    if integers:
        distinct = sorted(distinct, key=int)
    index = {name: i for i, name in enumerate(distinct)}
    return distinct, np.array([index[v] for v in values], dtype=np.int64)


def _examples(values: Sequence[str], n: int = 3) -> str:
    return "e.g. " + ", ".join(repr(v) for v in values[:n])


def split_origin(value: str, split_names: Mapping[str, str | None], where: str) -> int | None:
    """The :class:`RawDataset` ``origin`` of a row or file in split ``value`` (as the dataset
    names it), through ``split_names``; None when it is left out (mapped to null)."""
    if value not in split_names:
        raise DatasetError(
            f"{where}: unknown split {value!r}; split_names maps {', '.join(map(repr, split_names))}. "
            "Map it to train, validation or test (or null to leave it out) in the dataset's split_names"
        )
    ours = split_names[value]
    return None if ours is None else ("train", "validation", "test").index(ours)
