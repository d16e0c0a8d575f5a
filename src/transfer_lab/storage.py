"""The storage step of preparation: one decoded image -> its uint8 square, PIL only.

Kept apart from :mod:`transfer_lab.preprocess` (which holds the torch twin of this step,
for predict and export) because preparation decodes in worker processes: a worker that
imported torch would pay seconds and hundreds of MB for nothing.
"""

from __future__ import annotations

import numpy as np

from .images import as_rgb

# How an image is fit into its square storage size (a source's ``fit``).
FITS = ("squash", "crop")
# The storage resize of preparation, and of predict and export after it.
STORAGE_INTERPOLATION = "bicubic"
# JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale only while the decoded image keeps at
# least this many times the storage size on its shorter side: the bicubic resize after it
# then still averages over several decoded pixels per stored one (see draft_size).
DRAFT_MARGIN = 2


def check_fit(fit: str) -> None:
    if fit not in FITS:
        raise ValueError(f"storage fit must be one of {', '.join(FITS)}, not {fit!r}")


def draft_size(size: int) -> tuple[int, int]:
    """What to ask of ``PIL.Image.draft`` for a storage side of ``size``: both sides of the
    decoded image at least ``DRAFT_MARGIN * size`` (so its shorter side is, whatever the
    fit and the EXIF orientation)."""
    side = DRAFT_MARGIN * int(size)
    return side, side


def to_storage(image, size: int, fit: str = "squash") -> np.ndarray:
    """One image (a PIL image of any mode, or a uint8 (H, W, 3) array) as uint8 (size, size, 3) RGB.

    ``fit="squash"``: resized to size x size whatever its aspect (CIFAR, GTSRB, traffic
    pickles: tight, roughly square crops already). ``fit="crop"``: the shorter side
    resized to ``size``, then the centre size x size (photos of any aspect). Resizing is
    PIL BICUBIC; an image already at size x size is returned as it is. Every reader stores
    its images through this function.
    """
    from PIL import Image

    check_fit(fit)
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (size, size):
            return image
        image = Image.fromarray(np.ascontiguousarray(image))
    image = as_rgb(image)
    resample = Image.Resampling[STORAGE_INTERPOLATION.upper()]
    width, height = image.size
    if fit == "squash":
        if (width, height) != (size, size):
            image = image.resize((size, size), resample)
    else:
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)
