"""CIFAR-10 as published: the python batches, in their tarball or extracted.

The tarball is read member by member in memory (nothing is extracted), and a member
that only a crafted archive has is refused. ``download: true`` fetches the official
tarball, md5-verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from . import storage_size
from .base import DatasetError, DatasetSpec, Fetch, RawDataset, Source, check_labels, resize_all, str_keys, unpickle

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST = "test_batch"
META = "batches.meta"
MEMBERS = (*TRAIN, TEST, META)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(dest_folder: Path) -> Path:
    """``dest_folder/cifar-10-python.tar.gz``, downloaded (md5-verified) unless already there.

    The download goes to a temporary name and is renamed only once its checksum is right.
    Without network access the error says which file to place where.
    """
    dest_folder = Path(dest_folder)
    dest = dest_folder / ARCHIVE
    expected = MD5
    place = (
        f"download {ARCHIVE} from {URL} on a machine with network access and "
        f"place it in {dest_folder.resolve()}{os.sep} (md5 {expected}), then rerun"
    )
    if dest.is_file():
        found = _md5(dest)
        if found == expected:
            return dest
        log.warning("%s: md5 %s, expected %s; downloading it again", dest, found, expected)
        place = f"the {dest} in place has md5 {found}, not {expected} (truncated or another file): " + place
    dest_folder.mkdir(parents=True, exist_ok=True)
    tmp = dest_folder / f".{ARCHIVE}.part-{os.getpid()}"
    digest = hashlib.md5()
    log.info("downloading %s into %s", URL, dest_folder)
    try:
        with urllib.request.urlopen(URL, timeout=60) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
    except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, cut connections
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"could not download {URL} ({err}); {place}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    found = digest.hexdigest()
    if found != expected:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"{URL}: the downloaded {ARCHIVE} has md5 {found}, expected {expected}; "
            f"removed it. Try again, or {place}"
        )
    os.replace(tmp, dest)
    log.info("saved %s (md5 %s)", dest, found)
    return dest


def _find(root: Path) -> Path | None:
    """The tarball or the batches folder that ``root`` designates, or None when there is none."""
    if root.is_file():
        return root
    if not root.is_dir():
        return None
    if any((root / m).is_file() for m in MEMBERS):
        return root  # root is cifar-10-batches-py/ itself
    folder, tarball = root / FOLDER, root / ARCHIVE
    folder_complete = folder.is_dir() and all((folder / m).is_file() for m in MEMBERS)
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
            f"name is the mark of a crafted archive. Use the official {ARCHIVE} from {URL}"
        )
    if not member.isfile():
        kind = "a link to " + repr(member.linkname) if member.issym() or member.islnk() else "not a regular file"
        raise DatasetError(
            f"{source}: refused archive member {member.name!r}: {kind}. Use the official "
            f"{ARCHIVE} from {URL}"
        )


def _members(source: Path) -> dict[str, tuple[str, bytes]]:
    """member name -> (where, for messages; raw bytes) for each batch file, read straight from the
    tarball (one pass, nothing extracted) or from the extracted folder."""
    expected = ", ".join(MEMBERS)
    found: dict[str, tuple[str, bytes]] = {}
    if source.is_dir():
        missing = [m for m in MEMBERS if not (source / m).is_file()]
        if missing:
            raise DatasetError(
                f"{source}: missing {', '.join(missing)}; an extracted {FOLDER}/ holds {expected}. "
                f"Extract {ARCHIVE} again, or point root at the tarball"
            )
        return {m: (str(source / m), (source / m).read_bytes()) for m in MEMBERS}
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                name = member.name.rstrip("/").rsplit("/", 1)[-1]
                if name not in MEMBERS:
                    continue
                _check_member(source, member)
                if name in found:
                    raise DatasetError(
                        f"{source}: two members named {name} ({found[name][0].rsplit(':', 1)[-1]} and "
                        f"{member.name}); the official {ARCHIVE} has one. Use the official archive"
                    )
                found[name] = (f"{source}:{member.name}", tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"{source}: not a readable tar.gz archive ({type(err).__name__}: {err}); truncated (an "
            f"interrupted download?) or another file. Replace it with the official {ARCHIVE} "
            f"(md5 {MD5}) from {URL}"
        ) from err
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise DatasetError(
            f"{source}: archive has no member {', '.join(f'{FOLDER}/{m}' for m in missing)}; "
            f"the official {ARCHIVE} holds {FOLDER}/ with {expected}"
        )
    return found


def _batch(where: str, data: bytes, size: int) -> tuple[np.ndarray, np.ndarray]:
    batch = str_keys(unpickle(data, where), where, "a CIFAR-10 batch")
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(
            f"{where}: expected a CIFAR-10 batch with keys 'data' and 'labels', got keys {sorted(map(str, batch))}"
        )
    pixels = batch["data"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise DatasetError(f"{where}: 'data' must be uint8 (N, 3072) rows of 3x32x32 RGB planes, got {got}")
    labels = check_labels(batch["labels"], len(pixels), where)
    images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # planes -> NHWC
    return resize_all(images, size), labels


def read(spec: DatasetSpec) -> RawDataset:
    """The official CIFAR-10 python batches: 50,000 training and 10,000 test images.

    ``root``: a folder holding ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``,
    that folder itself, or the tarball. With ``download: true`` a missing tarball is
    fetched into root.
    """
    root = Path(spec.root)
    source = _find(root)
    if source is None and spec.download:
        if root.name.endswith((".tar.gz", ".tgz")):
            if root.name != ARCHIVE:
                raise DatasetError(
                    f"{root}: no such file; with download: true, root must be a folder (or {ARCHIVE})"
                )
            root = root.parent
        source = fetch(root)
    if source is None:
        raise DatasetError(
            f"{root}: no CIFAR-10 here; expected {ARCHIVE} or {FOLDER}/ in this folder "
            f"(or root pointing at either). Download {URL} into it, or set download: true"
        )
    size = storage_size(spec)
    log.info("reading CIFAR-10 from %s", source)
    members = _members(source)
    where, data = members[META]
    meta = str_keys(unpickle(data, where), where, "the CIFAR-10 metadata")
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetError(f"{where}: expected 'label_names' (a list of class names), got keys {sorted(meta)}")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    images, labels, origin = [], [], []
    for name, split in [(m, 0) for m in TRAIN] + [(TEST, 2)]:
        where, data = members.pop(name)
        x, y = _batch(where, data, size)
        if len(y) and y.max() >= len(class_names):
            raise DatasetError(
                f"{where}: label {y.max()} but {META} names only {len(class_names)} classes"
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


def _check(root: Path) -> str | None:
    return None if _find(root) is not None else "holds no CIFAR-10"


SOURCE = Source(
    name="cifar10",
    title="CIFAR-10, the official python batches",
    read=read,
    image_size=32,
    expects=f"{ARCHIVE} or {FOLDER}/ (from {URL}), or set download: true",
    check=_check,
    splits=("train", "test"),
    fetch=Fetch(ARCHIVE, fetch),
    notes=f"`{FOLDER}/` holds {', '.join(f'`{m}`' for m in MEMBERS)}; `root` may also be the tarball or that "
          "folder itself",
)
