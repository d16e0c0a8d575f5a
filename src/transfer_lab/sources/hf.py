"""A Hugging Face dataset saved on disk: ``save_to_disk``'s folder, or the hub's parquet files.

Read with pyarrow alone, so the ``datasets`` library is no dependency: ``save_to_disk``
writes Arrow IPC streams, the hub parquet files; the features (an ``Image`` column, a
``ClassLabel``'s names) come from ``dataset_info.json`` or the schema's ``huggingface``
metadata, where ``datasets`` puts them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..images import decode_image, open_upright
from . import storage_fit, storage_size
from .base import (
    SPLIT_NAMES,
    DatasetError,
    DatasetSpec,
    LazyImages,
    Option,
    RawDataset,
    Source,
    check_labels,
    class_names_and_ids,
    split_origin,
)
from .imagefolder import SOURCE as PHOTOS

log = logging.getLogger(__name__)

_EXPECTED = (
    "a Hugging Face dataset saved on disk: a save_to_disk folder (dataset_dict.json and a folder per split "
    "holding data-*.arrow, dataset_info.json, state.json; or one Dataset's folder), or a folder of parquet "
    "files named by split as the hub lays them out (train-00000-of-00001.parquet, data/test-*.parquet)"
)
IMAGE_COLUMN = Option(
    "image_column",
    {"type": "string", "default": "image", "description": "the column holding the images (an Image feature)"},
    needs="columns",
)
LABEL_COLUMN = Option(
    "label_column",
    {"type": "string", "default": "label",
     "description": "the column holding the labels (a ClassLabel, integers or strings)"},
    needs="columns",
)
# A parquet file's split: its name up to the first '-' (train-00000-of-00001.parquet,
# test.parquet); a bare number (the hub's conversion: default/train/0000.parquet): its folder.
_SHARD = re.compile(r"\d+")


@dataclass
class _Part:
    """One file of the dataset: an Arrow stream or a parquet file, and the split it holds."""

    path: Path
    split: str | None  # the dataset's own name for it; None: a Dataset saved alone (no splits)
    info: Path | None = None  # its dataset_info.json (save_to_disk)


def _parts(root: Path) -> list[_Part] | None:
    """Every data file under ``root``, with its split; None when root holds no HF dataset."""
    if (root / "dataset_dict.json").is_file():
        names = _json(root / "dataset_dict.json").get("splits")
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{root / 'dataset_dict.json'}: expected {{\"splits\": [names]}} as save_to_disk "
                               "writes it")
        return [part for name in names for part in _saved(root / str(name), str(name))]
    if (root / "state.json").is_file():
        return _saved(root, None)
    files = sorted(p for p in root.rglob("*.parquet") if not any(s.startswith(".") for s in p.relative_to(root).parts))
    if not files:
        return None
    parts = []
    for path in files:
        split = path.stem.split("-", 1)[0]
        if _SHARD.fullmatch(split) and path.parent != root:
            split = path.parent.name
        parts.append(_Part(path, split))
    return parts


def _saved(folder: Path, split: str | None) -> list[_Part]:
    """The Arrow files of one Dataset that save_to_disk wrote into ``folder``."""
    state = folder / "state.json"
    if not state.is_file():
        raise DatasetError(f"{folder}: no state.json; expected the folder save_to_disk writes for split "
                           f"{split!r} (data-*.arrow, dataset_info.json, state.json)")
    names = [d.get("filename") for d in _json(state).get("_data_files", []) if isinstance(d, dict)]
    if not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{state}: lists no data files ('_data_files'); expected the state.json save_to_disk "
                           "writes")
    info = folder / "dataset_info.json"
    return [_Part(folder / name, split, info if info.is_file() else None) for name in names]


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not readable JSON ({type(err).__name__}: {err})") from err
    if not isinstance(value, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _table(part: _Part):
    """The file as a pyarrow Table (an Arrow stream is memory-mapped, not copied; the map
    lives as long as the table's buffers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if part.path.suffix == ".parquet":
            return pq.read_table(part.path)
        return pa.ipc.open_stream(pa.memory_map(str(part.path))).read_all()
    except FileNotFoundError:
        raise DatasetError(f"{part.path}: no such file; expected the data files that state.json lists") from None
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"{part.path}: not a readable {'parquet' if part.path.suffix == '.parquet' else 'Arrow'} "
                           f"file ({type(err).__name__}: {err}); truncated, or another format") from err


def _features(part: _Part, table) -> dict:
    """The ``datasets`` features of a file: from its dataset_info.json, else its schema's metadata."""
    if part.info is not None:
        features = _json(part.info).get("features")
        if isinstance(features, dict):
            return features
    metadata = (table.schema.metadata or {}).get(b"huggingface")
    if metadata:
        try:
            features = json.loads(metadata).get("info", {}).get("features")
        except (ValueError, AttributeError):
            features = None
        if isinstance(features, dict):
            return features
    return {}


def _image_entries(column, part: _Part, root: Path, name: str) -> list[tuple[Any, str]]:
    """(image bytes or file path, where) per row of the image column."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_struct(kind) and {"bytes", "path"} <= {kind.field(i).name for i in range(kind.num_fields)}:
        rows = [(r["bytes"], r["path"]) for r in column.to_pylist()]
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        rows = [(b, None) for b in column.to_pylist()]
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        rows = [(None, p) for p in column.to_pylist()]
    else:
        raise DatasetError(f"{part.path}: column {name!r} is {kind}, not images; expected an Image feature "
                           "(a struct of bytes and path), or set the dataset's image_column")
    entries = []
    for i, (data, path) in enumerate(rows):
        where = f"{part.path}, row {i}"
        if data:
            entries.append((data, f"{where} (column {name!r})"))
        elif path:
            file = Path(path) if Path(path).is_absolute() else root / path
            entries.append((file, str(file)))
        else:
            raise DatasetError(f"{where}: column {name!r} holds no image (neither bytes nor a path)")
    return entries


def _open(entry: tuple[Any, str], draft: tuple[int, int] | None = None):
    data, where = entry
    return open_upright(data, draft) if isinstance(data, Path) else decode_image(data, where, draft)


def _column(table, name: str, option: str, part: _Part):
    if name not in table.column_names:
        raise DatasetError(f"{part.path}: no column {name!r} (its columns: {', '.join(table.column_names)}); "
                           f"set the dataset's {option} to the one that holds them")
    return table.column(name)


def _label_kind(column, feature: Any, part: _Part, name: str) -> tuple[str, list[str] | None]:
    """'names' (a ClassLabel with its names), 'ints' or 'text'; unsupported types refused."""
    import pyarrow as pa

    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
        return "names", [str(n) for n in feature["names"]]
    if pa.types.is_integer(column.type):
        return "ints", None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return "text", None
    raise DatasetError(f"{part.path}: label column {name!r} is {column.type}; expected a ClassLabel, integer "
                       "class ids or class names (strings)")


def read(spec: DatasetSpec) -> RawDataset:
    """Every split of the dataset (``split_names`` maps them to ours), its ``image_column``
    decoded as photos (upright by EXIF, shorter side resized to ``image_size``, default the
    networks' largest resize, centre-cropped), its ``label_column`` as class ids: a ClassLabel's names, integers
    named "0".."K-1", or strings sorted (integers in numeric order)."""
    root = Path(spec.root)
    parts = _parts(root) if root.is_dir() else None
    if parts is None:
        raise DatasetError(f"{root}: {'no such folder' if not root.exists() else 'no Hugging Face dataset'}; "
                           f"expected {_EXPECTED}")
    options = {o.name: spec.options.get(o.name, o.schema["default"]) for o in (IMAGE_COLUMN, LABEL_COLUMN, SPLIT_NAMES)}
    image_name, label_name = options["image_column"], options["label_column"]
    entries, raw_labels, origin = [], [], []
    kinds: dict[tuple[str, str | None], list[Path]] = {}  # (kind, names) -> files: one per dataset
    for part in parts:
        kept = None if part.split is None else split_origin(part.split, options["split_names"], f"{part.path}")
        if part.split is not None and kept is None:
            log.info("%s: split %r left out (split_names maps it to null)", part.path, part.split)
            continue
        table = _table(part)
        images = _column(table, image_name, "image_column", part)
        labels = _column(table, label_name, "label_column", part)
        kind, names = _label_kind(labels, _features(part, table).get(label_name), part, label_name)
        kinds.setdefault((kind, json.dumps(names)), []).append(part.path)
        entries += _image_entries(images, part, root, image_name)
        values = labels.to_pylist()
        if None in values:
            raise DatasetError(f"{part.path}, row {values.index(None)}: no label (null in column {label_name!r})")
        raw_labels += values
        origin += [kept if kept is not None else 0] * len(values)
        log.info("%s: %d rows%s", part.path, len(values), "" if part.split is None else f" of split {part.split!r}")
    if len(kinds) > 1:
        found = "; ".join(f"{kind} {json.loads(names) or ''} in {files[0]}" for (kind, names), files in kinds.items())
        raise DatasetError(f"{root}: the splits' label columns {label_name!r} differ ({found}); expected one "
                           "feature for every split")
    if not entries:
        kept = "; split_names leaves out every split" if any(part.split is not None for part in parts) else ""
        raise DatasetError(f"{root}: no rows{kept}; expected {_EXPECTED}")
    (kind, names_json), _ = next(iter(kinds.items()))
    where = f"{root} (column {label_name!r})"
    if kind == "text":
        class_names, ids = class_names_and_ids([str(v).strip() for v in raw_labels], where, label_name)
    else:
        ids = check_labels(np.array(raw_labels, dtype=np.int64), len(entries), where)
        class_names = json.loads(names_json) or [str(i) for i in range(int(ids.max()) + 1)]
        if ids.max() >= len(class_names):
            raise DatasetError(f"{where}: label {ids.max()} but the ClassLabel names only {len(class_names)} "
                               "classes")
    images = LazyImages(entries, storage_size(spec), storage_fit(spec), _open, what="dataset images")
    saved_alone = all(part.split is None for part in parts)
    return RawDataset(images=images, labels=ids, class_names=class_names,
                      origin=None if saved_alone else np.array(origin, dtype=np.int8))


def _check(root: Path) -> str | None:
    if not root.is_dir():
        return "is not a folder"
    found = (root / "dataset_dict.json").is_file() or (root / "state.json").is_file() or any(root.rglob("*.parquet"))
    return None if found else "holds no dataset_dict.json, state.json or parquet files"


SOURCE = Source(
    name="hf",
    title="a Hugging Face dataset saved on disk (save_to_disk or parquet)",
    read=read,
    image_size=PHOTOS.image_size,
    expects=_EXPECTED,
    check=_check,
    fit=PHOTOS.fit,
    splits=("train", "validation", "test"),
    options=(IMAGE_COLUMN, LABEL_COLUMN, SPLIT_NAMES),
    notes="read with pyarrow (the `datasets` library is not needed); image paths without bytes are relative to "
          "`root`; class names from a ClassLabel, else integers named 0..K-1, or strings sorted; a Dataset saved "
          "alone has no official splits",
)
