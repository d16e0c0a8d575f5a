"""The bottleneck pickle: the cache contract shared with the classic lab.

A plain dict that the lab's ``pickle.load(f)['features']`` reads: ``features`` float32
(N, D), ``labels`` int64 (N,), ``class_names`` (list of str) and ``meta`` (str, int and
float values only). Readers go through the restricted unpickler.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from .files import atomic_write, load_pickle

META_TYPES = (str, int, float)


@dataclass
class Bottleneck:
    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    meta: dict


def write_bottleneck(path: str | os.PathLike, b: Bottleneck) -> None:
    bad = {k: type(v).__name__ for k, v in b.meta.items() if not isinstance(v, META_TYPES)}
    if bad:
        raise TypeError(f"meta values must be str, int or float; got {bad}")
    if len(b.features) != len(b.labels):
        raise ValueError(f"{len(b.features)} feature rows but {len(b.labels)} labels")
    payload = {
        "features": np.ascontiguousarray(b.features, dtype=np.float32),
        "labels": np.asarray(b.labels, dtype=np.int64),
        "class_names": [str(c) for c in b.class_names],
        "meta": dict(b.meta),
    }
    with atomic_write(path) as f:
        pickle.dump(payload, f, protocol=4)


def read_bottleneck(path: str | os.PathLike) -> Bottleneck:
    """Load and check a bottleneck pickle, naming the file in every complaint."""
    data = load_pickle(path)
    if not isinstance(data, dict) or "features" not in data or "labels" not in data:
        raise ValueError(f"{path}: expected a dict with 'features' and 'labels'")
    features = np.asarray(data["features"])
    labels = np.asarray(data["labels"])
    if features.ndim != 2:
        raise ValueError(f"{path}: features must be 2-D (N, D), got shape {features.shape}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise ValueError(
            f"{path}: {len(features)} feature rows but labels of shape {labels.shape}"
        )
    finite = np.isfinite(features)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise ValueError(
            f"{path}: features contain NaN or infinite values ({len(bad)} values, first in row {bad[0][0]}); "
            "regenerate the file"
        )
    class_names = [str(c) for c in data.get("class_names", [])] or [
        str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)
    ]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"{path}: labels range {labels.min()}..{labels.max()} but {len(class_names)} classes"
        )
    return Bottleneck(features.astype(np.float32, copy=False), labels.astype(np.int64),
                      class_names, dict(data.get("meta", {})))
