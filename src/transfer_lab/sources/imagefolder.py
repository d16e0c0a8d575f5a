"""Your own photos: one folder of images per class, as torchvision's ImageFolder takes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import IMAGE_EXTENSIONS, image_files, open_upright
from . import storage_fit, storage_size
from .base import DatasetError, DatasetSpec, LazyImages, RawDataset, Source

_EXPECTED = f"one subfolder per class holding {', '.join(IMAGE_EXTENSIONS)} images"


def _class_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def read(spec: DatasetSpec) -> RawDataset:
    """``root/<class>/*.jpg|jpeg|png|ppm|bmp``: classes are the sorted subfolder names.

    Any size and mode; each image is turned upright by its EXIF orientation, converted to
    RGB, its shorter side resized to ``image_size`` (default: the largest resize of the configured networks)
    and centre-cropped square.
    """
    root = Path(spec.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; expected {_EXPECTED}")
    class_dirs = _class_folders(root)
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders; expected {_EXPECTED}")
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
    images = LazyImages(files, storage_size(spec), storage_fit(spec), opener=open_upright)
    return RawDataset(
        images=images, labels=np.array(labels, dtype=np.int64), class_names=[d.name for d in class_dirs]
    )


def _check(root: Path) -> str | None:
    return None if root.is_dir() and _class_folders(root) else "has no class folders"


SOURCE = Source(
    name="imagefolder",
    title="your own images, one folder per class",
    read=read,
    image_size=None,  # the networks' largest resize
    expects=_EXPECTED,
    check=_check,
    fit="crop",
    stores_files=True,
    notes="any size and mode (grey, RGBA, palette, CMYK become RGB; EXIF orientation applied); subfolders of a "
          "class folder count, hidden files do not",
)
