"""Classification metrics shared by every way of training a classifier here.

Heads trained on bottleneck features and fine-tuned networks write the same metrics
fields, so the comparison and the report read both without knowing which made them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class (scikit-learn's convention)."""
    predicted = np.asarray(predicted, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.shape[0]} predictions for {labels.shape[0]} labels")
    flat = labels * n_classes + predicted
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def split_metrics(predicted: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, per-class accuracy (recall; None for a class absent from the split) and the
    confusion matrix of one split, as plain JSON types."""
    cm = confusion_matrix(predicted, labels, len(class_names))
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    return {"accuracy": accuracy, "per_class_accuracy": per_class, "confusion_matrix": cm.tolist()}


def classification_metrics(
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]
) -> dict:
    """The metrics JSON fields for ``{split: (predicted, labels)}``:
    ``accuracy``, ``per_class_accuracy`` and ``confusion_matrix``, each keyed by split,
    plus ``n`` (images per split) and ``class_names`` (the matrices' row/column order)."""
    out: dict = {"class_names": list(class_names), "n": {}, "accuracy": {},
                 "per_class_accuracy": {}, "confusion_matrix": {}}
    for split, (predicted, labels) in predictions.items():
        m = split_metrics(predicted, labels, class_names)
        out["n"][split] = int(len(labels))
        for key in ("accuracy", "per_class_accuracy", "confusion_matrix"):
            out[key][split] = m[key]
    return out
