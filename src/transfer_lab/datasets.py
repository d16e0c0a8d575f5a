"""Dataset sources and the prepared-array contract.

Every source, whatever its on-disk format, is turned once into
``results/datasets/{dataset}.npz``: uint8 NHWC RGB ``images``, int64 ``labels``,
int8 ``split`` (an index into :data:`SPLITS`) and ``class_names``. Extraction then
never decodes an image file again: it streams uint8 batches to the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .files import atomic_write

SPLITS = ("train", "validation", "test")


@dataclass
class RawDataset:
    """What a source yields: all images, and the official test split if it has one."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    is_test: np.ndarray | None = None  # bool (N,), None when the source ships no test split


@dataclass
class PreparedDataset:
    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: list[str]

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split, in their prepared order."""
        mask = self.split == SPLITS.index(split)
        return self.images[mask], self.labels[mask]

    def split_sizes(self) -> dict[str, int]:
        return {name: int((self.split == i).sum()) for i, name in enumerate(SPLITS)}


def load_digits_source(spec: dict) -> RawDataset:
    """scikit-learn's bundled 8x8 digits: real handwriting, no download, 1797 images.

    Pixel values 0..16 are scaled to 0..255 and the grey channel repeated to RGB so the
    images meet ImageNet-trained networks on their own terms.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    return RawDataset(
        images=np.ascontiguousarray(images),
        labels=digits.target.astype(np.int64),
        class_names=[str(n) for n in digits.target_names],
    )


SOURCES: dict[str, Callable[[dict], RawDataset]] = {
    "digits": load_digits_source,
}
# Sources that ship an official test split; the others get one carved out (test_fraction).
SOURCES_WITH_TEST: frozenset[str] = frozenset()


def splits_for(spec: dict, split_cfg: dict) -> list[str]:
    """The splits a dataset will have, known from the config alone (the DAG needs them)."""
    has_test = spec["source"] in SOURCES_WITH_TEST or split_cfg["test_fraction"] > 0
    return ["train", "validation"] + (["test"] if has_test else [])


def _stratified_holdout(labels: np.ndarray, pool: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Indices (from ``pool``) of a per-class ``fraction`` holdout, at least one per class."""
    picked = []
    for cls in np.unique(labels[pool]):
        members = pool[labels[pool] == cls]
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        if len(members) > 1:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        picked.append(members[:n])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def assign_splits(
    labels: np.ndarray,
    is_test: np.ndarray | None,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    train_per_class: int | None = None,
) -> np.ndarray:
    """Split ids per image, stratified by class and seeded; -1 marks images left out.

    The official test split is kept as published; otherwise ``test_fraction`` of every
    class is held out. Validation is carved out of what remains for training, so the
    test images never influence model selection.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    split = np.full(n, SPLITS.index("train"), dtype=np.int8)
    if is_test is not None:
        split[is_test] = SPLITS.index("test")
    elif test_fraction > 0:
        split[_stratified_holdout(labels, np.arange(n), test_fraction, rng)] = SPLITS.index("test")
    pool = np.flatnonzero(split == SPLITS.index("train"))
    split[_stratified_holdout(labels, pool, validation_fraction, rng)] = SPLITS.index("validation")
    if train_per_class is not None:
        for cls in np.unique(labels):
            members = np.flatnonzero((split == SPLITS.index("train")) & (labels == cls))
            drop = members[rng.permutation(len(members))][train_per_class:]
            split[drop] = -1
    return split


def prepare_dataset(spec: dict, split_cfg: dict) -> PreparedDataset:
    """Load a source and assign splits; images stay uint8, one array for all splits."""
    try:
        loader = SOURCES[spec["source"]]
    except KeyError:
        raise ValueError(
            f"unknown dataset source {spec['source']!r}; valid: {', '.join(sorted(SOURCES))}"
        ) from None
    raw = loader(spec)
    split = assign_splits(
        raw.labels,
        raw.is_test,
        split_cfg["validation_fraction"],
        split_cfg["test_fraction"],
        split_cfg["seed"],
        split_cfg.get("train_per_class"),
    )
    keep = split >= 0
    return PreparedDataset(
        images=np.ascontiguousarray(raw.images[keep]),
        labels=raw.labels[keep],
        split=split[keep],
        class_names=list(raw.class_names),
    )


def save_prepared(ds: PreparedDataset, path: str | os.PathLike) -> None:
    with atomic_write(path) as f:
        np.savez(
            f,
            images=ds.images,
            labels=ds.labels,
            split=ds.split,
            split_names=np.array(SPLITS),
            class_names=np.array(ds.class_names),
        )


def load_prepared(path: str | os.PathLike) -> PreparedDataset:
    """Read a prepared dataset without ever unpickling (``allow_pickle=False``)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        missing = {"images", "labels", "split", "class_names"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a prepared dataset (missing {sorted(missing)})")
        ds = PreparedDataset(
            images=z["images"],
            labels=z["labels"].astype(np.int64),
            split=z["split"],
            class_names=[str(c) for c in z["class_names"]],
        )
    if ds.images.dtype != np.uint8 or ds.images.ndim != 4 or ds.images.shape[-1] != 3:
        raise ValueError(
            f"{path}: images must be uint8 (N, H, W, 3), got {ds.images.dtype} {ds.images.shape}"
        )
    return ds
