"""scikit-learn's bundled 8x8 handwritten digits: real data with no file and no download."""

from __future__ import annotations

import numpy as np

from . import storage_size
from .base import DatasetSpec, RawDataset, Source, resize_all


def read(spec: DatasetSpec) -> RawDataset:
    """1797 images of 10 digits, every one a training image (splits are carved from them).

    Pixel values 0..16 are scaled to 0..255 and the grey channel repeated to RGB so the
    images meet ImageNet-trained networks on their own terms; with an ``image_size`` they are
    resized to it (squashed, PIL bicubic), as every source stores its images.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    return RawDataset(
        images=resize_all(np.ascontiguousarray(images), storage_size(spec)),
        labels=digits.target.astype(np.int64),
        class_names=[str(n) for n in digits.target_names],
    )


SOURCE = Source(
    name="digits",
    title="scikit-learn's bundled 8x8 handwritten digits (offline)",
    read=read,
    image_size=8,
    expects="nothing: the 1,797 images come with scikit-learn",
    needs_root=False,
)
