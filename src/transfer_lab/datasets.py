"""The prepared-dataset contract, and how images are assigned to splits.

Every source (:mod:`transfer_lab.sources`), whatever its on-disk format, is turned once into
``results/datasets/{dataset}.npz``: uint8 NHWC RGB ``images``, int64 ``labels``,
int8 ``split`` (an index into :data:`SPLITS`) and ``class_names``. Extraction then
never decodes an image file again: it streams uint8 batches to the device. (A dataset
with ``store: files`` keeps its files' paths instead, for extraction to decode.)

Preparation decodes in bounded memory: splits are assigned from labels first
(:func:`plan_dataset`), then the kept images are decoded on worker processes, chunk by
chunk, each worker writing its rows where they lie in the memory-mapped output file
(:func:`decode_into`, :func:`write_dataset`), or in parts that separate jobs write and one
gathers (:func:`write_part`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import sources
from .files import atomic_write
from .sources.base import DatasetError, DatasetSpec, LazyImages
from .storage import draft_size, to_storage

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSpec:
    """How a dataset's images are assigned to splits: the config's ``split`` section with
    the dataset's own ``split`` overrides applied (``SplitSpec(**section)``)."""

    validation_fraction: float
    test_fraction: float
    seed: int
    method: str = "stratified"  # or "sklearn": train_test_split's own choice, the lab's protocol
    official_validation: bool = False
    train_per_class: int | None = None


@dataclass
class PreparedDataset:
    images: np.ndarray | None  # uint8 (N, S, S, 3); None for a dataset stored as its original files
    labels: np.ndarray
    split: np.ndarray
    class_names: list[str]
    # Provenance (str/int/float values): source, split seed, library versions. Stored as
    # one JSON string member, so the file stays free of pickles.
    meta: dict = field(default_factory=dict)
    # str (N,): the original image files, for a dataset stored as files (images is then None)
    files: np.ndarray | None = None

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (or, stored as files, their paths) and labels of one split, in prepared order.

        A split stored as one block (as :func:`prepare_dataset` writes it) comes back as a
        slice: a view, which for a memory-mapped file reads nothing until it is used.
        """
        items = self.images if self.files is None else self.files
        rows = np.flatnonzero(self.split == SPLITS.index(split))
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            block = slice(int(rows[0]), int(rows[-1]) + 1)
            return items[block], self.labels[block]
        return items[rows], self.labels[rows]

    def split_sizes(self) -> dict[str, int]:
        return {name: int((self.split == i).sum()) for i, name in enumerate(SPLITS)}


def splits_for(spec: DatasetSpec, split: SplitSpec) -> list[str]:
    """The splits a dataset will have, known from the config alone (the DAG needs them)."""
    has_test = "test" in sources.get(spec.source).splits or split.test_fraction > 0
    return ["train", "validation"] + (["test"] if has_test else [])


def _stratified_holdout(labels: np.ndarray, pool: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Indices (from ``pool``) of a per-class ``fraction`` holdout, at least one per class."""
    picked = []
    for cls in np.unique(labels[pool]):
        members = pool[labels[pool] == cls]
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        if len(members) > 1:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        picked.append(members[:n])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def _holdout(labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int, method: str, rng) -> np.ndarray:
    """Indices of ``pool`` to hold out: per class (``stratified``), or exactly as
    scikit-learn's ``train_test_split(test_size=fraction, random_state=seed)`` picks them
    (``sklearn``, the course lab's protocol)."""
    if method == "sklearn":
        from sklearn.model_selection import train_test_split

        return np.sort(train_test_split(pool, test_size=fraction, random_state=seed)[1])
    return _stratified_holdout(labels, pool, fraction, rng)


def assign_splits(
    labels: np.ndarray,
    origin: np.ndarray | None,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    train_per_class: int | None = None,
    method: str = "stratified",
    official_validation: bool = False,
) -> np.ndarray:
    """Split ids per image (indices into :data:`SPLITS`); -1 marks images left out.

    An official test split is kept as published; otherwise ``test_fraction`` is held out.
    Validation is the official one when asked for and present, else carved out of what
    remains for training, so test images never influence model selection. An official
    validation split that is not used is left out, not mixed into training.
    ``train_per_class`` shuffles the training indices as scikit-learn's
    ``shuffle(random_state=seed)`` does and keeps the first k of each class.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    origin = np.zeros(n, dtype=np.int8) if origin is None else np.asarray(origin)
    train, validation, test = (SPLITS.index(s) for s in SPLITS)
    split = np.full(n, -1, dtype=np.int8)
    split[origin == train] = train
    if (origin == test).any():
        split[origin == test] = test
    elif test_fraction > 0:
        split[_holdout(labels, np.flatnonzero(split == train), test_fraction, seed, method, rng)] = test
    if official_validation and (origin == validation).any():
        split[origin == validation] = validation
    else:
        pool = np.flatnonzero(split == train)
        split[_holdout(labels, pool, validation_fraction, seed, method, rng)] = validation
    if train_per_class is not None:
        from sklearn.utils import shuffle

        order = shuffle(np.flatnonzero(split == train), random_state=seed)
        kept = np.zeros(n, dtype=bool)
        for cls in np.unique(labels[order]):
            kept[order[labels[order] == cls][:train_per_class]] = True
        split[(split == train) & ~kept] = -1
    return split


@dataclass
class Plan:
    """A dataset's prepared rows before any image is decoded: the split assignment needs
    labels only, so a source that lists files (:class:`LazyImages`) decodes just the kept rows."""

    images: np.ndarray | LazyImages  # every row of the source
    rows: np.ndarray  # the source's rows kept, in prepared order
    labels: np.ndarray  # of the prepared rows
    split: np.ndarray  # of the prepared rows
    class_names: list[str]


def plan_dataset(spec: DatasetSpec, split_spec: SplitSpec) -> Plan:
    """Read a source (its labels; pixels only where it holds arrays) and assign splits.

    Deterministic: every job that plans the same dataset (each part of ``prepare.parts``)
    gets the same rows in the same order.
    """
    raw = sources.get(spec.source).read(spec)
    if spec.store == "pixels":
        _check_storage_size(spec, raw.images)
    split = assign_splits(
        raw.labels,
        raw.origin,
        split_spec.validation_fraction,
        split_spec.test_fraction,
        split_spec.seed,
        split_spec.train_per_class,
        split_spec.method,
        split_spec.official_validation,
    )
    keep = split >= 0
    sizes = {name: int((split == SPLITS.index(name)).sum()) for name in splits_for(spec, split_spec)}
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise DatasetError(
            f"{spec.root or spec.source}: no images for split(s) {', '.join(empty)} "
            f"(sizes {sizes}). A source without its official test part needs split.test_fraction > 0; "
            "a tiny dataset needs more images per class."
        )
    # Rows ordered by split (stable within each): a split is one contiguous block, which
    # extraction reads straight from the file without loading the other splits.
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(split[rows], kind="stable")]
    return Plan(raw.images, rows, raw.labels[rows], split[rows], list(raw.class_names))


def _check_storage_size(spec: DatasetSpec, images: np.ndarray | LazyImages) -> None:
    """A source's images are at the dataset's storage size: preparation records that size, and
    predict resizes new images to it. A source (a plugin, say) that keeps another size would
    make the record false and predict resize to a size training never used: refused."""
    size = sources.storage_size(spec)
    if tuple(images.shape[1:3]) != (size, size):
        height, width = images.shape[1:3]
        why = f"its image_size {spec.image_size}" if spec.image_size is not None else "the source's storage size"
        raise RuntimeError(
            f"source {spec.source!r} read {height}x{width} images, but the dataset's storage size is {size} ({why}): "
            "a source must return its images at sources.storage_size(spec) (base.resize_all resizes arrays)"
        )


def prepare_dataset(spec: DatasetSpec, split_spec: SplitSpec) -> PreparedDataset:
    """Load a source and assign splits; images stay uint8, one array for all splits, in memory
    (small datasets and tests; the workflow streams :func:`stored_chunks` to disk instead)."""
    plan = plan_dataset(spec, split_spec)
    return PreparedDataset(
        images=np.concatenate([np.empty((0, *plan.images.shape[1:]), np.uint8),
                               *stored_chunks(plan.images, plan.rows)]),
        labels=plan.labels,
        split=plan.split,
        class_names=plan.class_names,
    )


# --- decoding in parallel, in chunks ----------------------------------------------------

# Bytes of stored images per task handed to a worker at most: the tasks in flight (two per
# worker) then hold a few MB each, whatever the storage size.
_TASK_BYTES = 4 << 20
_PROGRESS_SECONDS = 30.0
# The images a worker process decodes (set before the workers fork, inherited, never pickled).
_WORK: tuple[LazyImages, bool] | None = None


def _set_work(images: LazyImages, draft: bool) -> None:
    global _WORK
    _WORK = (images, draft)


def _decode_task(rows: np.ndarray) -> np.ndarray:
    images, draft = _WORK
    return images.decode(rows, draft)


def _executor(images: LazyImages, workers: int, draft: bool):
    """Worker processes, forked where the platform can (the worker imports nothing new: no
    torch); threads elsewhere. Processes because, while Pillow releases the GIL inside the
    JPEG decoder and the resize, the Python around them (opening, EXIF, 16-bit greys in
    numpy, checks) holds it: on 16 cores that share would cap threads, not processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if "fork" not in multiprocessing.get_all_start_methods():
        _set_work(images, draft)
        return ThreadPoolExecutor(workers)
    return ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), _set_work, (images, draft))


def _tasks(rows: np.ndarray, size: int, workers: int) -> list[np.ndarray]:
    """``rows`` cut into the pieces one worker decodes at a time: at most 64 images a task
    (a few tenths of a second), fewer when they are big, and at least four tasks a worker
    when there are few images, so that every worker has work."""
    per_task = max(1, min(64, _TASK_BYTES // (size * size * 3), -(-len(rows) // (4 * max(workers, 1)))))
    return [rows[i:i + per_task] for i in range(0, len(rows), per_task)]


def _progress(images: LazyImages, total: int, workers: int):
    """A function to call with each decoded piece's image count: logs the pace every
    ``_PROGRESS_SECONDS`` and at the end."""
    started = last = time.monotonic()
    done = 0

    def progress(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= _PROGRESS_SECONDS or done == total:
            last = now
            log.info("decoded %d/%d %s (%.0f images/s on %d worker%s)", done, total, images.what,
                     done / max(now - started, 1e-9), workers, "s" if workers > 1 else "")

    return progress


def stored_chunks(
    images: np.ndarray | LazyImages, rows: np.ndarray, workers: int = 1, draft: bool = False
) -> Iterator[np.ndarray]:
    """The stored images of ``rows``, in that order, as uint8 (k, S, S, 3) chunks.

    ``LazyImages`` are decoded on ``workers`` processes, a few chunks in flight at a time:
    memory holds those chunks, never the dataset. The bytes do not depend on ``workers``.
    ``draft``: JPEG draft mode (see :func:`draft_is_exact`). (Writing a file, the workflow
    lets the workers write their rows into it instead: :func:`decode_into`.)
    """
    tasks = _tasks(rows, images.shape[1], workers)
    if isinstance(images, np.ndarray):
        for task in tasks:
            yield np.ascontiguousarray(images[task])
        return
    progress = _progress(images, len(rows), workers)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            chunk = images.decode(task, draft)
            progress(len(chunk))
            yield chunk
        return
    with _executor(images, workers, draft) as pool:
        pending: deque = deque()
        queued = iter(tasks)
        for task in itertools.islice(queued, 2 * workers):
            pending.append(pool.submit(_decode_task, task))
        while pending:
            chunk = pending.popleft().result()
            task = next(queued, None)
            if task is not None:
                pending.append(pool.submit(_decode_task, task))
            progress(len(chunk))
            yield chunk


# --- decoding in parallel, straight into the output file ---------------------------------

def _decode_into_task(path: str, offset: int, start: int, rows: np.ndarray) -> int:
    """Decode ``rows`` into rows ``start`` on of the images that begin at byte ``offset`` of
    the file ``path``, through a map of just those rows (unmapped when done: the process
    keeps none of the file resident); the CRC-32 of their bytes."""
    images, draft = _WORK
    shape = (len(rows), *images.shape[1:])
    out = np.memmap(path, dtype=np.uint8, mode="r+", offset=offset + start * int(np.prod(shape[1:])), shape=shape)
    images.decode(rows, draft, out=out)
    crc = zlib.crc32(out)
    del out  # unmaps
    return crc


def parallel(images: np.ndarray | LazyImages, rows: np.ndarray, workers: int) -> bool:
    """Whether ``rows`` of ``images`` are decoded on worker processes (:func:`decode_into`)."""
    return isinstance(images, LazyImages) and workers > 1 and len(_tasks(rows, images.shape[1], workers)) > 1


def decode_into(images: LazyImages, rows: np.ndarray, path: str | os.PathLike, offset: int, workers: int,
                draft: bool = False) -> int:
    """Decode ``rows`` of ``images``, in that order, on ``workers`` processes straight into
    the file ``path``, whose bytes from ``offset`` on (already there: the file is long
    enough) are to hold them as uint8 (len(rows), S, S, 3), C order.

    Each task maps just its rows of the file and decodes them where they lie; what comes
    back is their CRC-32, never pixels, so the job's own process moves no image data. A few
    tasks are in flight at a time, and a worker's error (a bad image, named) is raised here
    as it would be on one process. Returns the CRC-32 of all those bytes, as
    ``zlib.crc32`` of them in one piece would be (the zip member's checksum).
    """
    row_bytes = int(np.prod(images.shape[1:]))
    tasks = _tasks(rows, images.shape[1], workers)
    starts = np.cumsum([0] + [len(t) for t in tasks[:-1]])
    progress = _progress(images, len(rows), workers)
    crc = 0
    with _executor(images, workers, draft) as pool:
        pending: deque = deque()
        queued = iter(zip(starts, tasks, strict=True))
        for start, task in itertools.islice(queued, 2 * workers):
            pending.append((len(task), pool.submit(_decode_into_task, str(path), offset, int(start), task)))
        while pending:
            n, future = pending.popleft()
            crc = crc32_combine(crc, future.result(), n * row_bytes)
            nxt = next(queued, None)
            if nxt is not None:
                start, task = nxt
                pending.append((len(task), pool.submit(_decode_into_task, str(path), offset, int(start), task)))
            progress(n)
    return crc


# CRC-32 (zlib's polynomial, reflected) of two pieces from the CRCs of each: zlib's
# crc32_combine, which Python's zlib does not expose. The operator that appends n zero bytes
# is a 32x32 matrix over GF(2) (a list of 32 column ints); tasks are all one length but the
# last, so it is computed once per length.


def _gf2_times(matrix: Sequence[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_product(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """The matrix of applying ``b``, then ``a``."""
    return [_gf2_times(a, column) for column in b]


@lru_cache(maxsize=16)
def _zeros_operator(nbytes: int) -> tuple[int, ...]:
    """The matrix M such that ``crc32(a + b) == M crc32(a) ^ crc32(b)`` for every ``b`` of
    ``nbytes`` bytes (zlib's "append nbytes zero bytes" operator)."""
    one_bit = [0xEDB88320] + [1 << k for k in range(31)]  # one zero bit
    power = one_bit
    for _ in range(3):  # 8 zero bits: one zero byte
        power = _gf2_product(power, power)
    result = [1 << k for k in range(32)]  # identity
    while nbytes:
        if nbytes & 1:
            result = _gf2_product(power, result)
        nbytes >>= 1
        if nbytes:
            power = _gf2_product(power, power)
    return tuple(result)


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc1 = zlib.crc32(a)``, ``crc2 = zlib.crc32(b)`` and
    ``len2 = len(b)``."""
    if len2 <= 0:
        return crc1
    return _gf2_times(_zeros_operator(len2), crc1) ^ crc2


# How many images, spread over the dataset, are decoded both ways before draft mode is used.
DRAFT_SAMPLE = 16


def draft_is_exact(images: np.ndarray | LazyImages, rows: np.ndarray) -> bool:
    """Whether JPEG draft mode may decode this dataset: True when, of ``DRAFT_SAMPLE``
    images spread evenly over ``rows``, some decode at a reduced scale and each of those
    stores within one grey level of its full-scale decode; else False, logging why (the
    image and the difference, or that no image has a reduced scale to use).

    The choice depends on the dataset alone (not on a part or worker count), so every
    part of a scattered preparation decodes the same way.
    """
    if not isinstance(images, LazyImages) or not images.drafts or not len(rows):
        return False
    sample = np.unique(rows[np.linspace(0, len(rows) - 1, min(DRAFT_SAMPLE, len(rows))).round().astype(int)])
    reduced = 0
    for i in sample:
        item = images.items[int(i)]
        full, drafted = images.opener(item), images.opener(item, draft_size(images.size))
        if drafted.size == full.size:  # not a JPEG, or too small for a reduced scale
            continue
        reduced += 1
        diff = int(np.abs(to_storage(full, images.size, images.fit).astype(np.int16)
                          - to_storage(drafted, images.size, images.fit)).max())
        if diff > 1:
            log.info(
                "JPEG draft mode off for this dataset: %s stores up to %d grey levels differently when decoded at "
                "reduced scale (allowed: 1); decoding every image at full scale (slower, the same images)",
                images.where(int(i)), diff,
            )
            return False
    if not reduced:
        log.info("JPEG draft mode not used: none of %d sampled images is a JPEG of at least %d pixels on its "
                 "shorter side (a half-scale decode must keep twice the storage size, %d)", len(sample),
                 2 * draft_size(images.size)[0], images.size)
        return False
    log.info("JPEG draft mode on: %d of %d sampled images decode at reduced scale, each within one grey level of "
             "its full-scale decode", reduced, len(sample))
    return True


def save_prepared(ds: PreparedDataset, path: str | os.PathLike) -> None:
    """Write an in-memory prepared dataset (:func:`write_prepared` with one chunk)."""
    if ds.files is not None:
        write_prepared(path, ds.labels, ds.split, ds.class_names, ds.meta, files=ds.files)
    else:
        write_prepared(path, ds.labels, ds.split, ds.class_names, ds.meta, [ds.images], ds.images.shape[1:])


def write_prepared(
    path: str | os.PathLike,
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    meta: Mapping,
    images: Iterable[np.ndarray] = (),
    image_shape: tuple[int, ...] | None = None,
    files: np.ndarray | None = None,
    fill: Callable[[str, int], int] | None = None,
) -> None:
    """Write ``results/datasets/{dataset}.npz`` with the images streamed in chunks.

    ``images`` yields uint8 (k, S, S, 3) chunks in row order, which go straight to disk:
    host memory holds one chunk, not the dataset (ImageNet at 256 px is 250 GB). The file
    is a plain uncompressed ``.npz`` (``np.load`` reads it, :func:`load_prepared` maps
    its images), written atomically. A dataset stored as its original ``files`` (one
    path per row) has no ``images`` member.

    ``fill`` instead of ``images``: a function ``fill(path, offset)`` that writes every
    image itself into the file ``path`` (the temporary file, already long enough), from
    byte ``offset`` on, and returns their CRC-32 (:func:`decode_into`, on worker
    processes). The file's bytes are the same either way.
    """
    n = len(labels)
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_member(zf, "labels", np.asarray(labels))
        _write_member(zf, "split", np.asarray(split))
        _write_member(zf, "split_names", np.array(SPLITS))
        _write_member(zf, "class_names", np.array([str(c) for c in class_names]))
        _write_member(zf, "meta", np.array(json.dumps(dict(meta), sort_keys=True)))
        if files is not None:
            if len(files) != n:
                raise ValueError(f"{path}: {len(files)} files for {n} labels")
            _write_member(zf, "files", np.asarray(files, dtype=str))
            return
        shape = (n, *image_shape)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        written = 0
        with zf.open("images.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            if fill is not None:
                _fill_member(member, f, n * int(np.prod(image_shape)), fill)
                written = n
            for chunk in images:
                if chunk.dtype != np.uint8 or chunk.shape[1:] != tuple(image_shape):
                    raise ValueError(f"{path}: image chunk {chunk.dtype} {chunk.shape}, expected uint8 (k, {image_shape})")
                member.write(np.ascontiguousarray(chunk).data)
                written += len(chunk)
        if written != n:
            raise ValueError(f"{path}: {written} images written for {n} labels")


def _reserve(f, nbytes: int) -> int:
    """Make room for ``nbytes`` at the position of the open file ``f``: its offset, for
    workers to map. The disk space is allocated here (``posix_fallocate``), so that a full
    disk fails now, with an ``OSError`` naming the file, rather than as a bus error in a
    worker writing into a sparse map."""
    f.flush()
    offset = f.tell()
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(f.fileno(), offset, nbytes)
    else:
        f.truncate(offset + nbytes)
    return offset


def _fill_member(member, f, nbytes: int, fill: Callable[[str, int], int]) -> None:
    """The data of an uncompressed zip member being written (``member``, of ``zf.open(name,
    "w")``), written by ``fill`` into the file ``f`` instead of through ``member``; the
    member's size and checksum then account for them as if they had been written through it."""
    # zipfile's writer keeps the member's running size and CRC-32 in these two attributes
    # (CPython 3.6 on), which its close() writes into the local header and the directory.
    if not (hasattr(member, "_crc") and hasattr(member, "_file_size") and getattr(member, "_compressor", 0) is None):
        raise RuntimeError("this Python's zipfile keeps no _crc and _file_size on a member being written: "
                           "preparation on worker processes cannot account for the data they write")
    offset = _reserve(f, nbytes)
    crc = fill(f.name, offset)
    f.seek(offset + nbytes)
    member._crc = crc32_combine(member._crc, crc, nbytes)
    member._file_size += nbytes


def _write_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _memmap_member(path: Path, member: str) -> np.ndarray:
    """A read-only memory map of one array inside an uncompressed ``.npz``.

    ``np.savez`` stores members uncompressed, so each ``.npy`` lies contiguous in the zip:
    find its local header, skip the npy header, and map the data where it lies.
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{path}: member {member} is compressed; cannot memory-map it")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")


def load_prepared(path: str | os.PathLike, mmap: bool = False) -> PreparedDataset:
    """Read a prepared dataset without ever unpickling (``allow_pickle=False``).

    ``mmap=True`` maps the images instead of reading them: host memory then holds only
    the batches extraction touches, whatever the dataset's size.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        stored_as_files = "files" in z.files
        missing = {"labels", "split", "class_names", "files" if stored_as_files else "images"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a prepared dataset (missing {sorted(missing)})")
        ds = PreparedDataset(
            images=None if stored_as_files else _memmap_member(path, "images.npy") if mmap else z["images"],
            labels=z["labels"].astype(np.int64),
            split=z["split"],
            class_names=[str(c) for c in z["class_names"]],
            meta=json.loads(str(z["meta"])) if "meta" in z.files else {},
            files=z["files"] if stored_as_files else None,
        )
    if stored_as_files:
        return ds
    if ds.images.dtype != np.uint8 or ds.images.ndim != 4 or ds.images.shape[-1] != 3:
        raise ValueError(
            f"{path}: images must be uint8 (N, H, W, 3), got {ds.images.dtype} {ds.images.shape}"
        )
    return ds


# --- what rules prepare_dataset and prepare_part write -----------------------------------


def part_rows(rows: np.ndarray, part: int, parts: int, where: str = "prepare.parts") -> np.ndarray:
    """The rows part ``part`` (0-based) of ``parts`` decodes: consecutive, sizes differing by
    at most one, so the parts gathered in index order are the rows in order."""
    if not 0 < parts <= len(rows):
        raise ValueError(
            f"{where}: {parts} parts for {len(rows)} prepared images; every part needs at least one image, "
            f"so set {where} to at most {len(rows)}"
        )
    return np.array_split(rows, parts)[part]


def write_part(plan: Plan, path: str | os.PathLike, part: int, parts: int, workers: int = 1,
               draft: bool = False) -> int:
    """Decode part ``part`` of ``parts`` of a plan's rows into a plain ``.npy`` (uint8
    (k, S, S, 3)), streamed chunk by chunk, written atomically. Returns k."""
    rows = part_rows(plan.rows, part, parts)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(rows), *plan.images.shape[1:])}
    with atomic_write(path) as f:
        np.lib.format.write_array_header_1_0(f, header)
        if parallel(plan.images, rows, workers):
            nbytes = len(rows) * int(np.prod(plan.images.shape[1:]))
            decode_into(plan.images, rows, f.name, _reserve(f, nbytes), workers, draft)
            f.seek(0, os.SEEK_END)
        else:
            for chunk in stored_chunks(plan.images, rows, workers, draft):
                f.write(chunk.data)
    return len(rows)


def part_chunks(paths: Sequence[str | os.PathLike], plan: Plan, chunk: int = 256) -> Iterator[np.ndarray]:
    """The images of part files, in index order, chunk by chunk (each part memory-mapped):
    what :func:`write_prepared` gathers. A part of the wrong shape (another plan's) is refused."""
    for k, path in enumerate(paths):
        images = np.load(path, mmap_mode="r", allow_pickle=False)
        expected = (len(part_rows(plan.rows, k, len(paths))), *plan.images.shape[1:])
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"{path}: part {k + 1} of {len(paths)} holds {images.dtype} {images.shape}, expected "
                             f"uint8 {expected}; "
                             "delete it, and rule prepare_part makes it again")
        for start in range(0, len(images), chunk):
            yield np.array(images[start:start + chunk])


def write_dataset(plan: Plan, path: str | os.PathLike, meta: Mapping, workers: int = 1, draft: bool = False,
                  parts: Sequence[str | os.PathLike] = ()) -> None:
    """Write a plan's prepared dataset: its images decoded on ``workers``, which write them
    into the file themselves (:func:`decode_into`), or on this process, or gathered from the
    ``parts`` files :func:`write_part` made, streamed into :func:`write_prepared`."""
    if not parts and parallel(plan.images, plan.rows, workers):
        def fill(tmp: str, offset: int) -> int:
            return decode_into(plan.images, plan.rows, tmp, offset, workers, draft)

        write_prepared(path, plan.labels, plan.split, plan.class_names, meta, (), plan.images.shape[1:], fill=fill)
        return
    chunks = part_chunks(parts, plan) if parts else stored_chunks(plan.images, plan.rows, workers, draft)
    write_prepared(path, plan.labels, plan.split, plan.class_names, meta, chunks, plan.images.shape[1:])


def write_files(plan: Plan, path: str | os.PathLike, meta: Mapping, dataset: str) -> None:
    """Write a plan's prepared dataset as its original files' absolute paths (``store: files``):
    extraction decodes them. Only sources whose images are files on disk can."""
    files = plan.images.files() if isinstance(plan.images, LazyImages) and plan.images.boxes is None else None
    if files is None:
        raise ValueError(f"datasets.{dataset}.store: files needs images that are files on disk; this dataset's "
                         "are not (use store: pixels)")
    write_prepared(path, plan.labels, plan.split, plan.class_names, meta,
                   files=np.array([str(files[i].resolve()) for i in plan.rows]))
