"""Image files: finding them and decoding them, for preparation and prediction alike.

No torch here: the workflow expands predict's image list when it is parsed (the files are
the predict rule's inputs, so adding or changing one reruns it), and the dataset readers
decode through these functions.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
# Smaller images hold no picture worth classifying: a 1x1 file in a downloaded folder is
# a placeholder or a web beacon. 8 is the side of the smallest real images here (digits).
MIN_IMAGE_SIDE = 8


class NoImagesError(ValueError):
    """A folder or pattern that names no image at all (surely a typo)."""


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (subfolders too, as torchvision's ImageFolder), hidden ones skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


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
            hits = image_files(path)
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


def open_image(path: Path, draft: tuple[int, int] | None = None):
    """A fully decoded PIL image, or a ``DatasetError`` naming the file.

    ``draft``: decode a JPEG at 1/2, 1/4 or 1/8 scale while both sides stay at least
    this (``PIL.Image.draft``; preparation checks first that it changes nothing that matters).
    """
    return _decoded(path, str(path), "replace or remove the file", draft)


def decode_image(data: bytes, where: str, draft: tuple[int, int] | None = None):
    """Image bytes (a Hugging Face ``Image`` column's ``bytes``) as :func:`open_upright` opens
    a file: fully decoded, upright by its EXIF orientation; a ``DatasetError`` naming
    ``where`` (the file and row that held them) when they are no readable image."""
    import io

    return _upright(_decoded(io.BytesIO(data), where, "replace or remove the row", draft))


def _decoded(source, where: str, remedy: str, draft: tuple[int, int] | None = None):
    """``source`` (a path, or a binary file object) opened and decoded, checked for size."""
    from PIL import Image

    image = None
    try:
        empty = source.stat().st_size == 0 if isinstance(source, Path) else not source.getbuffer().nbytes
        if empty:
            raise DatasetError(f"{where}: empty {'file' if isinstance(source, Path) else 'bytes'} (0 bytes), "
                               f"not an image; {remedy}")
        image = Image.open(source)
        if draft is not None and image.format == "JPEG":
            image.draft(None, draft)
        image.load()  # decodes, and closes the file of a single-frame image
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{where}: no such file") from None
    except Exception as err:  # PIL raises many types for corrupt or truncated files
        if image is not None:
            image.close()
        raise DatasetError(f"{where}: not a readable image ({type(err).__name__}: {err}); {remedy}") from err
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        image.close()
        raise DatasetError(
            f"{where}: a {width}x{height} image; images must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} "
            f"pixels (a placeholder or tracking pixel?); {remedy}"
        )
    return image


def open_upright(path: Path, draft: tuple[int, int] | None = None):
    """:func:`open_image`, turned upright by its EXIF orientation (photos from phones and cameras)."""
    return _upright(open_image(path, draft))


def _upright(image):
    from PIL import ImageOps

    try:
        # In place: the image was just decoded, and a copy of every photo costs preparation
        # about a fifth of its time.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a broken EXIF block: keep the pixels as stored
        pass
    return image


def as_rgb(image):
    """Any PIL mode as 8-bit RGB (16-bit greys scaled down, not clipped to white)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:  # 16-bit (or wider) grey
            values = values / 257.0
        grey = np.rint(values).clip(0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    if image.mode in ("P", "PA"):
        # Via RGBA so a palette transparency is resolved instead of warned about.
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), upright by its EXIF orientation.

    The decoding of preparation (the imagefolder source): any PIL mode to RGB, 16-bit
    greys scaled down; a missing or corrupt file raises ``DatasetError`` naming it.
    """
    return np.array(as_rgb(open_upright(Path(path))), dtype=np.uint8)
