"""The images a user hands in for prediction: finding them and decoding them.

No torch here: the workflow expands the image list when it is parsed (the files are the
predict rule's inputs, so adding or changing one reruns it).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .sources import IMAGE_EXTENSIONS, _as_rgb, _open_image


class NoImagesError(ValueError):
    """A folder or pattern that names no image at all (surely a typo)."""


def find_images(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by folders (searched recursively), glob patterns and plain paths.

    A plain path is kept even when it is missing or not an image: its row then says so.
    A folder or pattern that yields nothing is an error.
    """
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        path = Path(text)
        if path.is_dir():
            hits = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                          and not any(part.startswith(".") for part in p.relative_to(path).parts))
            what = f"folder {text} holds no {', '.join(IMAGE_EXTENSIONS)} files"
        elif glob.has_magic(text):
            hits = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            what = f"no files match {text!r}"
        else:
            hits, what = [path], ""
        if not hits:
            raise NoImagesError(what)
        found += hits
    if not found:
        raise NoImagesError("no images given")
    return found


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), upright by its EXIF orientation.

    The decoding of preparation (:mod:`transfer_lab.sources`): any PIL mode to RGB, 16-bit
    greys scaled down; a missing or corrupt file raises ``DatasetError`` naming it.
    """
    from PIL import ImageOps

    image = _open_image(Path(path))
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: keep the pixels as stored
        pass
    return np.array(_as_rgb(image), dtype=np.uint8)
