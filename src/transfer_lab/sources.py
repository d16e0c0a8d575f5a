"""Dataset sources: readers of the formats people actually have on disk.

Each reader returns a :class:`RawDataset` whose images are already uint8 RGB at the
storage size; :mod:`transfer_lab.datasets` then assigns splits and writes the
prepared arrays. Readers never unpickle with plain ``pickle`` and name the offending
path in every error.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import logging
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .files import load_pickle, loads_pickle
from .images import IMAGE_EXTENSIONS, image_files, open_image, open_upright

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset on disk is missing, incomplete or corrupt; the message says which file and what was expected."""


@dataclass
class RawDataset:
    """What a source yields: every image, and which official split each came from."""

    images: np.ndarray  # uint8 (N, S, S, 3) RGB at the storage size
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    # int8 (N,): 0 official train, 1 official validation, 2 official test;
    # None when the source ships no splits (all images are training images).
    origin: np.ndarray | None = None


def load_digits(spec: dict) -> RawDataset:
    """scikit-learn's bundled 8x8 digits: real handwriting, no download, 1797 images.

    Pixel values 0..16 are scaled to 0..255 and the grey channel repeated to RGB so the
    images meet ImageNet-trained networks on their own terms.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    return RawDataset(
        images=np.ascontiguousarray(images),
        labels=digits.target.astype(np.int64),
        class_names=[str(n) for n in digits.target_names],
    )


# Storage side per source when the spec's image_size is null.
DEFAULT_IMAGE_SIZE: dict[str, int] = {
    "cifar10": 32,
    "traffic-pickle": 32,
    "digits": 8,
    "gtsrb": 64,
    "imagefolder": 64,
}

_PROGRESS_EVERY = 5000


# --- the one resize-to-storage step ------------------------------------------------------


def storage_size(spec: dict) -> int:
    """The side of the stored square images: ``image_size``, or the source's own default."""
    size = spec.get("image_size")
    return DEFAULT_IMAGE_SIZE[spec["source"]] if size is None else int(size)


# Sources whose images come in any aspect: the shorter side is resized, then centre-cropped.
CROP_SOURCES = frozenset({"imagefolder"})


def storage_fit(spec: dict) -> str:
    """How a source's images are fit into the storage square (``to_storage``'s ``fit``)."""
    return "crop" if spec["source"] in CROP_SOURCES else "squash"


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3) through :func:`to_storage`; unchanged if already there."""
    if images.shape[1:3] == (size, size):
        return images
    # preprocess imports torch, which parsing the workflow must not: only a reader needs it.
    from .preprocess import to_storage

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = to_storage(image, size)
    return out


def _read_images(
    paths: list[Path], size: int, fit: str, boxes=None, what: str = "images", opener: Callable = open_image
) -> np.ndarray:
    """Decode image files into one preallocated uint8 (N, size, size, 3) array, logging progress.

    ``boxes``: optional per-image (left, top, right, bottom) crops applied before resizing;
    ``opener``: how a file becomes a PIL image (``open_upright`` for photos).
    """
    # preprocess imports torch, which parsing the workflow must not: only a reader needs it.
    from .preprocess import to_storage

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = opener(path)
        if boxes is not None:
            left, top, right, bottom = boxes[i]
            width, height = image.size
            box = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DatasetError(f"{path}: region of interest {boxes[i]} lies outside the {width}x{height} image")
            image = image.crop(box)
        out[i] = to_storage(image, size, fit)
        if (i + 1) % _PROGRESS_EVERY == 0 or i + 1 == len(paths):
            log.info("read %d/%d %s", i + 1, len(paths), what)
    return out


def _unpickle(data: bytes, where: str) -> Any:
    try:
        return loads_pickle(data, where)
    except pickle.UnpicklingError as err:  # UnsafePickleError included; both name the source
        raise DatasetError(str(err)) from err


def _load_pickle(path: Path) -> Any:
    try:
        return load_pickle(path)
    except Exception as err:  # UnsafePickleError, UnpicklingError, FileNotFoundError: all name the file
        raise DatasetError(str(err)) from err


def _str_keys(obj: Any, where: str, what: str) -> dict:
    """A pickled dict with its keys as str: Python 2's str keys arrive as str under
    latin1 decoding, Python 3-written bytes keys as bytes."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected {what} (a dict), got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _labels(values: Any, n: int, where: str, key: str = "labels") -> np.ndarray:
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


# --- CIFAR-10 ----------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_MEMBERS = (*CIFAR10_TRAIN, CIFAR10_TEST, CIFAR10_META)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_cifar10(dest_folder: Path) -> Path:
    """``dest_folder/cifar-10-python.tar.gz``, downloaded (md5-verified) unless already there.

    The download goes to a temporary name and is renamed only once its checksum is right.
    Without network access the error says which file to place where.
    """
    dest_folder = Path(dest_folder)
    dest = dest_folder / CIFAR10_ARCHIVE
    expected = CIFAR10_MD5
    place = (
        f"download {CIFAR10_ARCHIVE} from {CIFAR10_URL} on a machine with network access and "
        f"place it in {dest_folder.resolve()}{os.sep} (md5 {expected}), then rerun"
    )
    if dest.is_file():
        found = _md5(dest)
        if found == expected:
            return dest
        log.warning("%s: md5 %s, expected %s; downloading it again", dest, found, expected)
        place = f"the {dest} in place has md5 {found}, not {expected} (truncated or another file): " + place
    dest_folder.mkdir(parents=True, exist_ok=True)
    tmp = dest_folder / f".{CIFAR10_ARCHIVE}.part-{os.getpid()}"
    digest = hashlib.md5()
    log.info("downloading %s into %s", CIFAR10_URL, dest_folder)
    try:
        with urllib.request.urlopen(CIFAR10_URL, timeout=60) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
    except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, cut connections
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"could not download {CIFAR10_URL} ({err}); {place}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    found = digest.hexdigest()
    if found != expected:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"{CIFAR10_URL}: the downloaded {CIFAR10_ARCHIVE} has md5 {found}, expected {expected}; "
            f"removed it. Try again, or {place}"
        )
    os.replace(tmp, dest)
    log.info("saved %s (md5 %s)", dest, found)
    return dest


def _find_cifar10(root: Path) -> Path | None:
    """The tarball or the batches folder that ``root`` designates, or None when there is none."""
    if root.is_file():
        return root
    if not root.is_dir():
        return None
    if any((root / m).is_file() for m in CIFAR10_MEMBERS):
        return root  # root is cifar-10-batches-py/ itself
    folder, tarball = root / CIFAR10_FOLDER, root / CIFAR10_ARCHIVE
    folder_complete = folder.is_dir() and all((folder / m).is_file() for m in CIFAR10_MEMBERS)
    if folder_complete or (folder.is_dir() and not tarball.is_file()):
        return folder
    if tarball.is_file():
        return tarball
    return None


def _check_member(source: Path, member: tarfile.TarInfo) -> None:
    """Refuse an archive member that only a crafted archive has: a path that is absolute
    or climbs out with '..', or a link (a reader must get the bytes it names, nothing
    else). Nothing in this project extracts archives; members are read by name."""
    parts = member.name.replace("\\", "/").split("/")
    if member.name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise DatasetError(
            f"{source}: refused archive member {member.name!r}: an absolute path or '..' in a member "
            f"name is the mark of a crafted archive. Use the official {CIFAR10_ARCHIVE} from {CIFAR10_URL}"
        )
    if not member.isfile():
        kind = "a link to " + repr(member.linkname) if member.issym() or member.islnk() else "not a regular file"
        raise DatasetError(
            f"{source}: refused archive member {member.name!r}: {kind}. Use the official "
            f"{CIFAR10_ARCHIVE} from {CIFAR10_URL}"
        )


def _cifar10_members(source: Path) -> dict[str, tuple[str, bytes]]:
    """member name -> (where, for messages; raw bytes) for each batch file, read straight from the
    tarball (one pass, nothing extracted) or from the extracted folder."""
    expected = ", ".join(CIFAR10_MEMBERS)
    found: dict[str, tuple[str, bytes]] = {}
    if source.is_dir():
        missing = [m for m in CIFAR10_MEMBERS if not (source / m).is_file()]
        if missing:
            raise DatasetError(
                f"{source}: missing {', '.join(missing)}; an extracted {CIFAR10_FOLDER}/ holds {expected}. "
                f"Extract {CIFAR10_ARCHIVE} again, or point root at the tarball"
            )
        return {m: (str(source / m), (source / m).read_bytes()) for m in CIFAR10_MEMBERS}
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                name = member.name.rstrip("/").rsplit("/", 1)[-1]
                if name not in CIFAR10_MEMBERS:
                    continue
                _check_member(source, member)
                if name in found:
                    raise DatasetError(
                        f"{source}: two members named {name} ({found[name][0].rsplit(':', 1)[-1]} and "
                        f"{member.name}); the official {CIFAR10_ARCHIVE} has one. Use the official archive"
                    )
                found[name] = (f"{source}:{member.name}", tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"{source}: not a readable tar.gz archive ({type(err).__name__}: {err}); truncated (an "
            f"interrupted download?) or another file. Replace it with the official {CIFAR10_ARCHIVE} "
            f"(md5 {CIFAR10_MD5}) from {CIFAR10_URL}"
        ) from err
    missing = [m for m in CIFAR10_MEMBERS if m not in found]
    if missing:
        raise DatasetError(
            f"{source}: archive has no member {', '.join(f'{CIFAR10_FOLDER}/{m}' for m in missing)}; "
            f"the official {CIFAR10_ARCHIVE} holds {CIFAR10_FOLDER}/ with {expected}"
        )
    return found


def _cifar10_batch(where: str, data: bytes, size: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(_unpickle(data, where), where, "a CIFAR-10 batch")
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(
            f"{where}: expected a CIFAR-10 batch with keys 'data' and 'labels', got keys {sorted(map(str, batch))}"
        )
    pixels = batch["data"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise DatasetError(f"{where}: 'data' must be uint8 (N, 3072) rows of 3x32x32 RGB planes, got {got}")
    labels = _labels(batch["labels"], len(pixels), where)
    images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> NHWC
    return _resize_all(images, size), labels


def load_cifar10(spec: dict) -> RawDataset:
    """The official CIFAR-10 python batches: 50,000 training and 10,000 test images.

    ``root``: a folder holding ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``,
    that folder itself, or the tarball. With ``download: true`` a missing tarball is
    fetched into root.
    """
    root = Path(spec["root"])
    source = _find_cifar10(root)
    if source is None and spec.get("download"):
        if root.name.endswith((".tar.gz", ".tgz")):
            if root.name != CIFAR10_ARCHIVE:
                raise DatasetError(
                    f"{root}: no such file; with download: true, root must be a folder (or {CIFAR10_ARCHIVE})"
                )
            root = root.parent
        source = fetch_cifar10(root)
    if source is None:
        raise DatasetError(
            f"{root}: no CIFAR-10 here; expected {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/ in this folder "
            f"(or root pointing at either). Download {CIFAR10_URL} into it, or set download: true"
        )
    size = storage_size(spec)
    log.info("reading CIFAR-10 from %s", source)
    members = _cifar10_members(source)
    where, data = members[CIFAR10_META]
    meta = _str_keys(_unpickle(data, where), where, "the CIFAR-10 metadata")
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetError(f"{where}: expected 'label_names' (a list of class names), got keys {sorted(meta)}")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    images, labels, origin = [], [], []
    for name, split in [(m, 0) for m in CIFAR10_TRAIN] + [(CIFAR10_TEST, 2)]:
        where, data = members.pop(name)
        x, y = _cifar10_batch(where, data, size)
        if len(y) and y.max() >= len(class_names):
            raise DatasetError(
                f"{where}: label {y.max()} but {CIFAR10_META} names only {len(class_names)} classes"
            )
        images.append(x)
        labels.append(y)
        origin.append(np.full(len(y), split, dtype=np.int8))
        log.info("read %s: %d images", name, len(y))
    return RawDataset(
        images=np.concatenate(images),  # C-contiguous: every piece is
        labels=np.concatenate(labels),
        class_names=class_names,
        origin=np.concatenate(origin),
    )


# --- GTSRB -------------------------------------------------------------------------------

# As in the course's signnames.csv (ClassId -> SignName).
GTSRB_CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

GTSRB_TEST_CSV = "GT-final_test.csv"
_GTSRB_COLUMNS = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
_GTSRB_EXPECTED = (
    "GTSRB/Final_Training/Images/<class>/ (GTSRB_Final_Training_Images.zip extracted), optionally "
    f"GTSRB/Final_Test/Images/ (GTSRB_Final_Test_Images.zip) with {GTSRB_TEST_CSV} (GTSRB_Final_Test_GT.zip); "
    "or torchvision's gtsrb/GTSRB/Training/<class>/"
)


@dataclass
class _GtsrbPaths:
    train: Path  # folder of class folders
    test_images: Path
    test_csvs: list[Path]  # where GT-final_test.csv may be, in order


def _gtsrb_paths(root: Path) -> _GtsrbPaths | None:
    for base in (root / "GTSRB", root):  # official archives
        train = base / "Final_Training" / "Images"
        if train.is_dir():
            test = base / "Final_Test" / "Images"
            csvs = [test, base / "Final_Test", base, base.parent, root]
            return _GtsrbPaths(train, test, list(dict.fromkeys(d / GTSRB_TEST_CSV for d in csvs)))
    for base in (root / "gtsrb", root):  # torchvision's download
        train = base / "GTSRB" / "Training"
        if train.is_dir():
            test = base / "GTSRB" / "Final_Test" / "Images"
            return _GtsrbPaths(train, test, [base / GTSRB_TEST_CSV, test / GTSRB_TEST_CSV])
    return None


def _gtsrb_csv(csv_path: Path, folder: Path) -> list[tuple[Path, tuple[int, int, int, int], int]]:
    """(image path, ROI (x1, y1, x2, y2) inclusive, ClassId) per row of a GTSRB annotation file."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=";")
        header = [h.strip() for h in next(reader, [])]
        needed = ["Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
        if any(h not in header for h in needed):
            raise DatasetError(
                f"{csv_path}: expected the header {_GTSRB_COLUMNS} (semicolon-separated), got {';'.join(header)!r}"
                + (" - this is the unlabelled GT-final_test.test.csv format; the labels are in "
                   f"{GTSRB_TEST_CSV} from GTSRB_Final_Test_GT.zip" if "ClassId" not in header else "")
            )
        col = {h: header.index(h) for h in needed}
        for line, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            try:
                name = row[col["Filename"]].strip()
                roi = tuple(int(row[col[k]]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
                class_id = int(row[col["ClassId"]])
            except (ValueError, IndexError):
                raise DatasetError(
                    f"{csv_path}, line {line}: expected {_GTSRB_COLUMNS}, got {';'.join(row)!r}"
                ) from None
            if class_id < 0:
                raise DatasetError(f"{csv_path}, line {line}: negative ClassId {class_id}")
            rows.append((folder / name, roi, class_id))
    return rows


def load_gtsrb(spec: dict) -> RawDataset:
    """The German Traffic Sign Recognition Benchmark, from its official archives (or torchvision's copy).

    Labels come from the annotations' ClassId. ``crop_roi`` crops each image to its
    annotated sign before the squash-resize to ``image_size`` (default 64). Without the
    test part (images and GT-final_test.csv) every image is a training image.
    """
    root = Path(spec["root"])
    paths = _gtsrb_paths(root)
    if paths is None:
        raise DatasetError(f"{root}: no GTSRB training images; expected {_GTSRB_EXPECTED}")
    class_dirs = sorted(d for d in paths.train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{paths.train}: no class folders; expected 00000/, 00001/, ... each with GT-<class>.csv")
    rows = []
    for folder in class_dirs:
        csv_path = folder / f"GT-{folder.name}.csv"
        if not csv_path.is_file():
            raise DatasetError(
                f"{folder}: class folder without its annotation file {csv_path.name} (expected {csv_path}); "
                "extract the official training archive again"
            )
        rows += _gtsrb_csv(csv_path, folder)
    n_train = len(rows)
    test_csv = next((p for p in paths.test_csvs if p.is_file()), None)
    if paths.test_images.is_dir() and test_csv is not None:
        rows += _gtsrb_csv(test_csv, paths.test_images)
    else:
        missing = (
            f"no test images in {paths.test_images} (GTSRB_Final_Test_Images.zip)"
            if not paths.test_images.is_dir()
            else f"no test labels {GTSRB_TEST_CSV} (GTSRB_Final_Test_GT.zip) in any of "
            + ", ".join(str(p.parent) for p in paths.test_csvs)
        )
        log.warning("%s: %s; using the training images only", root, missing)
    boxes = None
    if spec.get("crop_roi"):
        boxes = [(x1, y1, x2 + 1, y2 + 1) for _, (x1, y1, x2, y2), _ in rows]
    log.info("reading %d GTSRB images (%d training) from %s", len(rows), n_train, root)
    images = _read_images([r[0] for r in rows], storage_size(spec), "squash", boxes, "GTSRB images")
    labels = np.array([r[2] for r in rows], dtype=np.int64)
    origin = np.zeros(len(rows), dtype=np.int8)
    origin[n_train:] = 2
    top = int(labels.max()) if len(labels) else -1
    class_names = list(GTSRB_CLASS_NAMES) if top < len(GTSRB_CLASS_NAMES) else [str(i) for i in range(top + 1)]
    return RawDataset(images=images, labels=labels, class_names=class_names, origin=origin)


# --- the course's traffic-sign pickles ---------------------------------------------------

_TRAFFIC_FILES = (("train.p", 0, True), ("valid.p", 1, False), ("test.p", 2, True))
_TRAFFIC_EXPECTED = (
    "train.p, test.p and optionally valid.p: dicts with 'features' (N, 32, 32, 3) uint8 and 'labels' (N,)"
)


def _signnames(path: Path, n_classes: int) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ClassId", "SignName"} <= {h.strip() for h in reader.fieldnames}:
            raise DatasetError(f"{path}: expected the columns ClassId,SignName, got {reader.fieldnames}")
        names = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            try:
                names[int(row["ClassId"])] = row["SignName"].strip()
            except (TypeError, ValueError, AttributeError):
                raise DatasetError(f"{path}, line {line}: expected ClassId,SignName, got {row}") from None
    n = max(n_classes, max(names, default=-1) + 1)
    missing = [i for i in range(n) if i not in names]
    if missing:
        raise DatasetError(f"{path}: no SignName for ClassId {', '.join(map(str, missing))}")
    return [names[i] for i in range(n)]


def load_traffic_pickle(spec: dict) -> RawDataset:
    """The course's ``train.p`` / ``valid.p`` / ``test.p`` (unpickled through the restricted loader)."""
    root = Path(spec["root"])
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; expected a folder with {_TRAFFIC_EXPECTED}")
    size = storage_size(spec)
    images, labels, origin = [], [], []
    for name, split, required in _TRAFFIC_FILES:
        path = root / name
        if not path.is_file():
            if required:
                raise DatasetError(f"{path}: missing; expected {_TRAFFIC_EXPECTED}")
            continue
        data = _str_keys(_load_pickle(path), str(path), "a dict with 'features' and 'labels'")
        if "features" not in data or "labels" not in data:
            raise DatasetError(f"{path}: expected the keys 'features' and 'labels', got {sorted(map(str, data))}")
        x = data["features"]
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DatasetError(f"{path}: 'features' must be uint8 (N, H, W, 3) RGB images, got {got}")
        y = _labels(data["labels"], len(x), str(path))
        images.append(_resize_all(x, size))
        labels.append(y)
        origin.append(np.full(len(y), split, dtype=np.int8))
        log.info("read %s: %d images", path, len(y))
    all_labels = np.concatenate(labels)
    n_classes = int(all_labels.max()) + 1 if len(all_labels) else 0
    signnames = root / "signnames.csv"
    if signnames.is_file():
        class_names = _signnames(signnames, n_classes)
    elif n_classes <= len(GTSRB_CLASS_NAMES):
        class_names = list(GTSRB_CLASS_NAMES)
    else:
        class_names = [str(i) for i in range(n_classes)]
    return RawDataset(
        images=np.concatenate(images), labels=all_labels, class_names=class_names, origin=np.concatenate(origin)
    )


# --- one folder of images per class ------------------------------------------------------


def _class_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def load_imagefolder(spec: dict) -> RawDataset:
    """``root/<class>/*.jpg|jpeg|png|ppm|bmp``: classes are the sorted subfolder names.

    Any size and mode; each image is turned upright by its EXIF orientation, converted to
    RGB, its shorter side resized to ``image_size`` (default 64) and centre-cropped square.
    """
    root = Path(spec["root"])
    expected = f"one subfolder per class holding {', '.join(IMAGE_EXTENSIONS)} images"
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; expected {expected}")
    class_dirs = _class_folders(root)
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders; expected {expected}")
    files, labels = [], []
    for label, folder in enumerate(class_dirs):
        found = image_files(folder)
        if not found:
            raise DatasetError(
                f"{folder}: class folder {folder.name!r} has no images (expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        files += found
        labels += [label] * len(found)
    images = _read_images(files, storage_size(spec), storage_fit(spec), opener=open_upright)
    return RawDataset(
        images=images, labels=np.array(labels, dtype=np.int64), class_names=[d.name for d in class_dirs]
    )


# --- registry and parse-time checks ------------------------------------------------------

SOURCES: dict[str, Callable[[dict], RawDataset]] = {
    "cifar10": load_cifar10,
    "digits": load_digits,
    "gtsrb": load_gtsrb,
    "imagefolder": load_imagefolder,
    "traffic-pickle": load_traffic_pickle,
}
# Sources that ship an official test split; the others get one carved out (test_fraction).
OFFICIAL_TEST: frozenset[str] = frozenset({"cifar10", "gtsrb", "traffic-pickle"})


def check_dataset(name: str, spec: dict, on_disk: bool = True) -> None:
    """Cheap checks that the files a source needs are where ``root`` says.

    Raises ValueError naming the config key, the path and what is expected there. Reads
    no images. The workflow runs the key checks when it is parsed (``on_disk=False``: a
    dry run plans the grid before the data is in place) and all of them first thing in
    ``prepare_dataset``.
    """
    where = f"datasets.{name}"
    source = spec["source"]
    if spec.get("crop_roi") and source != "gtsrb":
        raise ValueError(f"{where}.crop_roi: only the gtsrb source has annotated regions of interest, not {source!r}")
    if spec.get("download") and source != "cifar10":
        raise ValueError(
            f"{where}.download: only the cifar10 source can be downloaded, not {source!r}; "
            "place the files in root yourself"
        )
    if source == "digits":
        return
    root = spec.get("root")
    expected = {
        "cifar10": f"expected {CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/ (from {CIFAR10_URL}), or set download: true",
        "gtsrb": f"expected {_GTSRB_EXPECTED}",
        "traffic-pickle": f"expected {_TRAFFIC_EXPECTED}",
        "imagefolder": f"expected one subfolder per class holding {', '.join(IMAGE_EXTENSIONS)} images",
    }.get(source, "")
    if not root:
        raise ValueError(f"{where}.root: required for source {source!r}; {expected}")
    if not on_disk:
        return
    path = Path(root)
    if source == "cifar10":
        if not spec.get("download") and _find_cifar10(path) is None:
            state = "does not exist" if not path.exists() else "holds no CIFAR-10"
            raise ValueError(f"{where}.root: {root} {state}; {expected}")
        return
    if not path.exists():
        raise ValueError(f"{where}.root: {root} does not exist; {expected}")
    if source == "gtsrb" and _gtsrb_paths(path) is None:
        raise ValueError(f"{where}.root: {root} holds no GTSRB training images; {expected}")
    if source == "traffic-pickle":
        missing = [f for f, _, required in _TRAFFIC_FILES if required and not (path / f).is_file()]
        if missing:
            raise ValueError(f"{where}.root: {root} has no {' or '.join(missing)}; {expected}")
    if source == "imagefolder" and (not path.is_dir() or not _class_folders(path)):
        raise ValueError(f"{where}.root: {root} has no class folders; {expected}")
