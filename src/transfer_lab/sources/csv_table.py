"""Your own labelled files, listed in a table: one row per image, ``path,label[,split]``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..images import open_upright
from . import storage_fit, storage_size
from .base import SPLIT_NAMES, DatasetError, DatasetSpec, LazyImages, RawDataset, Source, class_names_and_ids
from .base import split_origin as origin_of
from .imagefolder import SOURCE as PHOTOS

REQUIRED = ("path", "label")
SPLIT = "split"
_EXPECTED = (
    "a .csv table (comma-separated, a header row) with columns path,label and optionally split: one row per "
    "image file, paths relative to the table's folder or absolute"
)


def _header(table: Path) -> tuple[list[str], str | None]:
    """The table's column names, and what is wrong with them (None: nothing). Reads one line."""
    with open(table, newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    if not any(header):
        return header, "is empty (no header row)"
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        hint = " (the table is read comma-separated)" if len(header) == 1 and any(s in header[0] for s in ";\t") else ""
        return header, (f"has no column {' or '.join(map(repr, missing))} (its columns: {', '.join(header)}){hint}")
    return header, None


def _resolve(table: Path, cell: str) -> Path:
    path = Path(cell.strip())
    return path if path.is_absolute() else table.parent / path


def listed(table: Path) -> list[Path]:
    """Every file the table names, resolved (what a changed image makes stale); reads only the
    path column and checks nothing: that is for :func:`read`. [] when there is no table."""
    try:
        header, problem = _header(table)
        if problem:
            return []
        column = header.index("path")
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))[1:]
    except OSError:
        return []
    return [_resolve(table, row[column]) for row in rows if column < len(row) and row[column].strip()]


def read(spec: DatasetSpec) -> RawDataset:
    """``root``: a table of ``path,label[,split]`` rows (other columns ignored).

    Labels are class names or integers: the distinct values sorted (integers in numeric
    order) give the class ids. With a ``split`` column every row names its split, mapped by
    ``split_names`` (train; validation, valid, val; test): official splits. Without it there
    are none, and the config's ``split`` carves them. Images are photos, as imagefolder's:
    upright by EXIF, shorter side resized to ``image_size`` (default: the networks' largest resize),
    centre-cropped.
    """
    table = Path(spec.root)
    if not table.is_file():
        raise DatasetError(f"{table}: {'a folder' if table.is_dir() else 'no such file'}; expected {_EXPECTED}")
    header, problem = _header(table)
    if problem:
        raise DatasetError(f"{table}: {problem}; expected {_EXPECTED}")
    has_split = SPLIT in header
    split_names = spec.options.get(SPLIT_NAMES.name, SPLIT_NAMES.schema["default"])
    files, labels, origin, lines = [], [], [], []
    left_out = 0
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        column = {name: header.index(name) for name in (*REQUIRED, SPLIT) if name in header}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{table}, line {reader.line_num}"
            cells = {name: (row[i].strip() if i < len(row) else "") for name, i in column.items()}
            for name in column:
                if not cells[name]:
                    raise DatasetError(
                        f"{where}: empty {name!r}; every row needs a path and a label"
                        + (" and, as the table has a split column, a split" if has_split else "")
                    )
            if has_split:
                kept = origin_of(cells[SPLIT], split_names, f"{where}: column 'split'")
                if kept is None:
                    left_out += 1
                    continue
                origin.append(kept)
            files.append(_resolve(table, cells["path"]))
            labels.append(cells["label"])
            lines.append(where)
    if not files:
        kept = f" kept: split_names leaves out the {left_out}" if left_out else ""
        raise DatasetError(f"{table}: no rows{kept}; expected {_EXPECTED}")
    missing = [i for i, path in enumerate(files) if not path.is_file()]
    if missing:
        first = missing[0]
        raise DatasetError(
            f"{lines[first]}: {files[first]} is no file ({len(missing)} of the {len(files)} files listed are "
            "missing); paths are relative to the table's folder, or absolute"
        )
    class_names, ids = class_names_and_ids(labels, str(table), "label")
    images = LazyImages(files, storage_size(spec), storage_fit(spec), open_upright, what="listed images")
    return RawDataset(
        images=images,
        labels=ids,
        class_names=class_names,
        origin=np.array(origin, dtype=np.int8) if has_split else None,
    )


def _check(root: Path) -> str | None:
    if not root.is_file():
        return "is a folder, not a table" if root.is_dir() else "is not a file"
    return _header(root)[1]


SOURCE = Source(
    name="csv",
    title="your own images, listed in a table with their labels",
    read=read,
    image_size=PHOTOS.image_size,
    expects=_EXPECTED,
    check=_check,
    fit=PHOTOS.fit,
    splits=("train", "validation", "test"),
    options=(SPLIT_NAMES,),
    listed=listed,
    stores_files=True,
    notes="labels are class names or integers, the distinct values sorted (integers in numeric order) giving the "
          "class ids; a `split` column makes official splits, and then every row needs one; images of any size and mode, as "
          "imagefolder's",
)
