"""Classification metrics shared by every way of training a classifier here.

Heads trained on bottleneck features and fine-tuned networks write the same metrics
fields, so the comparison and the report read both without knowing which made them.
Every fit also keeps its per-image predictions on validation and test: intervals,
paired tests between networks and averages over repeats are computed from them later,
by the comparison, without retraining anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# The splits whose per-image predictions a metrics JSON keeps (train is never reported).
KEPT_SPLITS = ("validation", "test")
TOP_K = 5
# Scalar metrics recorded per split, per repeat.
SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy")
# What a head reports it chose on validation (epochs, logreg's C, kNN's k).
CHOICES = ("best_epoch", "C", "k")


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class (scikit-learn's convention)."""
    predicted = np.asarray(predicted, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.shape[0]} predictions for {labels.shape[0]} labels")
    flat = labels * n_classes + predicted
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the split (scikit-learn's
    ``balanced_accuracy_score``): every class counts the same however rare it is."""
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur as truth or prediction (scikit-learn's
    ``f1_score(average="macro")``; a class with no true positive scores 0)."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    seen = (support > 0) | (predicted > 0)
    if not seen.any():
        return float("nan")
    denominator = support + predicted  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1[seen].mean())


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> float:
    """Fraction of images whose true class is among the k most probable.

    Ties count in the image's favour; a class given probability 0 (a kNN head's class
    that no neighbour voted for) is never a hit, whatever its rank.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return float("nan")
    true = probabilities[np.arange(len(labels)), labels]
    higher = (probabilities > true[:, None]).sum(axis=1)
    return float(np.mean((higher < k) & (true > 0)))


def split_metrics(
    predicted: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    probabilities: np.ndarray | None = None,
) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class accuracy (recall; None for a class
    absent from the split) and the confusion matrix of one split, as plain JSON types;
    top-5 accuracy too where ``probabilities`` are given and there are more than 5 classes."""
    cm = confusion_matrix(predicted, labels, len(class_names))
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    out = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy(cm), "macro_f1": macro_f1(cm),
           "per_class_accuracy": per_class, "confusion_matrix": cm.tolist()}
    if probabilities is not None and len(class_names) > TOP_K:
        out["top5_accuracy"] = top_k_accuracy(probabilities, labels, TOP_K)
    return out


def classification_metrics(
    outputs: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]
) -> dict:
    """The metrics JSON fields for ``{split: (predicted, labels)}``, where ``predicted`` is
    either the predicted classes (N,) or class probabilities (N, n_classes).

    Keyed by split: ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``per_class_accuracy``, ``confusion_matrix`` and, from probabilities with more than 5
    classes, ``top5_accuracy``; plus ``n`` (images per split), ``class_names`` (the
    matrices' row/column order) and, from probabilities, ``predictions``: each kept split's
    ``label``, ``predicted`` class and its ``probability`` per image, in split order.
    """
    out: dict = {"class_names": list(class_names), "n": {}, "predictions": {}}
    for split, (predicted, labels) in outputs.items():
        predicted, labels = np.asarray(predicted), np.asarray(labels, dtype=np.int64)
        probabilities = predicted if predicted.ndim == 2 else None
        if probabilities is not None:
            predicted = probabilities.argmax(axis=1)
        m = split_metrics(predicted, labels, class_names, probabilities)
        out["n"][split] = int(len(labels))
        for key, value in m.items():
            out.setdefault(key, {})[split] = value
        if probabilities is not None and split in KEPT_SPLITS:
            out["predictions"][split] = {
                "label": labels.tolist(),
                "predicted": predicted.astype(np.int64).tolist(),
                "probability": np.round(probabilities.max(axis=1).astype(float), 6).tolist(),
            }
    return out


def combine_repeats(fits: Sequence[dict], seeds: Sequence[int]) -> dict:
    """One metrics JSON for a classifier trained once per seed.

    The first fit is the one whose weights are kept (the head file predict and export
    apply): its fields stay at the top level, as a single fit's do. ``labels`` holds each
    kept split's true classes once; ``repeats`` holds, for every fit in order, its seed,
    training-set size, scores per split, what it chose on validation, its seconds and
    its per-image ``predictions`` (class and probability). ``train_seconds`` is the sum.
    """
    if not fits or len(fits) != len(seeds):
        raise ValueError(f"{len(fits)} fits for {len(seeds)} seeds")
    first = fits[0]
    labels = {split: p["label"] for split, p in first["predictions"].items()}
    repeats = []
    for fit, seed in zip(fits, seeds, strict=True):
        if {s: p["label"] for s, p in fit["predictions"].items()} != labels:
            raise ValueError("repeats were scored on different images")
        repeats.append({
            "seed": int(seed),
            "n_train": fit["n"]["train"],
            **{key: fit[key] for key in SCORES if key in fit},
            **{key: fit[key] for key in CHOICES if key in fit},
            "train_seconds": fit["train_seconds"],
            "predictions": {split: {"predicted": p["predicted"], "probability": p["probability"]}
                            for split, p in fit["predictions"].items()},
        })
    combined = {k: v for k, v in first.items() if k != "predictions"}
    combined.update(labels=labels, repeats=repeats, train_seconds=float(sum(f["train_seconds"] for f in fits)))
    return combined


def correct_matrix(metrics: dict, split: str) -> np.ndarray:
    """Whether each repeat classified each image of ``split`` correctly: bool (repeats, images).

    Empty (0, 0) where the metrics keep no predictions for the split (a dataset without
    a test split)."""
    labels = (metrics.get("labels") or {}).get(split)
    if labels is None:
        return np.zeros((0, 0), dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    return np.stack([np.asarray(r["predictions"][split]["predicted"], dtype=np.int64) == labels
                     for r in metrics["repeats"]])


def repeat_scores(metrics: dict, key: str, split: str) -> np.ndarray:
    """One score (``accuracy``, ``balanced_accuracy``, ...) of ``split`` for every repeat;
    NaN where a repeat did not record it. A single fit's metrics (no ``repeats``) are one repeat."""
    return np.array([float((r.get(key) or {}).get(split, np.nan)) for r in metrics.get("repeats") or [metrics]])
