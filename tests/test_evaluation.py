"""Shared classification metrics: the fields every metrics JSON carries."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from transfer_lab.evaluation import classification_metrics, confusion_matrix, split_metrics


def test_confusion_matrix_matches_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=300)
    predicted = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 5, size=300))
    ours = confusion_matrix(predicted, labels, 5)
    np.testing.assert_array_equal(ours, sk_confusion_matrix(labels, predicted, labels=range(5)))


def test_per_class_accuracy_is_recall_and_none_for_an_absent_class():
    labels = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 0])
    m = split_metrics(predicted, labels, ["cat", "dog", "eel"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"cat": 0.75, "dog": 0.5, "eel": None}
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_classification_metrics_keys_by_split():
    out = classification_metrics(
        {"train": (np.array([0, 1]), np.array([0, 1])), "test": (np.array([1, 1, 0]), np.array([0, 1, 0]))},
        ["a", "b"],
    )
    assert out["class_names"] == ["a", "b"]
    assert out["n"] == {"train": 2, "test": 3}
    assert out["accuracy"] == {"train": 1.0, "test": pytest.approx(2 / 3)}
    assert out["confusion_matrix"]["test"] == [[1, 1], [0, 1]]
    assert out["per_class_accuracy"]["test"] == {"a": 0.5, "b": 1.0}


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        confusion_matrix(np.array([0, 1, 1]), np.array([0, 1]), 2)
