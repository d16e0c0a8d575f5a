"""The course's traffic-sign pickles: ``train.p``, ``valid.p`` and ``test.p`` (GTSRB at 32x32)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from . import storage_size
from .base import DatasetError, DatasetSpec, RawDataset, Source, check_labels, read_pickle, resize_all, str_keys
from .gtsrb import CLASS_NAMES

log = logging.getLogger(__name__)

_FILES = (("train.p", 0, True), ("valid.p", 1, False), ("test.p", 2, True))
_EXPECTED = (
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


def read(spec: DatasetSpec) -> RawDataset:
    """The course's ``train.p`` / ``valid.p`` / ``test.p`` (unpickled through the restricted loader)."""
    root = Path(spec.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; expected a folder with {_EXPECTED}")
    size = storage_size(spec)
    images, labels, origin = [], [], []
    for name, split, required in _FILES:
        path = root / name
        if not path.is_file():
            if required:
                raise DatasetError(f"{path}: missing; expected {_EXPECTED}")
            continue
        data = str_keys(read_pickle(path), str(path), "a dict with 'features' and 'labels'")
        if "features" not in data or "labels" not in data:
            raise DatasetError(f"{path}: expected the keys 'features' and 'labels', got {sorted(map(str, data))}")
        x = data["features"]
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DatasetError(f"{path}: 'features' must be uint8 (N, H, W, 3) RGB images, got {got}")
        y = check_labels(data["labels"], len(x), str(path))
        images.append(resize_all(x, size))
        labels.append(y)
        origin.append(np.full(len(y), split, dtype=np.int8))
        log.info("read %s: %d images", path, len(y))
    all_labels = np.concatenate(labels)
    n_classes = int(all_labels.max()) + 1 if len(all_labels) else 0
    signnames = root / "signnames.csv"
    if signnames.is_file():
        class_names = _signnames(signnames, n_classes)
    elif n_classes <= len(CLASS_NAMES):
        class_names = list(CLASS_NAMES)
    else:
        class_names = [str(i) for i in range(n_classes)]
    return RawDataset(
        images=np.concatenate(images), labels=all_labels, class_names=class_names, origin=np.concatenate(origin)
    )


def _check(root: Path) -> str | None:
    missing = [name for name, _, required in _FILES if required and not (root / name).is_file()]
    return f"has no {' or '.join(missing)}" if missing else None


SOURCE = Source(
    name="traffic-pickle",
    title="the course's traffic-sign pickles",
    read=read,
    image_size=32,
    expects=_EXPECTED,
    check=_check,
    splits=("train", "validation", "test"),
    notes="`signnames.csv` beside them names the classes",
)
