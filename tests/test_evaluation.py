"""Shared classification metrics: the fields every metrics JSON carries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from transfer_lab.evaluation import (
    classification_metrics,
    combine_repeats,
    confusion_matrix,
    correct_matrix,
    repeat_scores,
    split_metrics,
    top_k_accuracy,
)


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


def _noisy(n_classes: int, n: int, seed: int, imbalanced: bool = False):
    """Labels (optionally very unbalanced, as GTSRB's, the rare classes the hard ones), noisy
    probabilities and their argmax."""
    rng = np.random.default_rng(seed)
    weights = np.geomspace(1, 30, n_classes) if imbalanced else np.ones(n_classes)
    signal = np.linspace(0.5, 3.0, n_classes) if imbalanced else np.full(n_classes, 2.0)
    labels = rng.choice(n_classes, size=n, p=weights / weights.sum())
    logits = rng.normal(size=(n, n_classes)) + signal[labels, None] * np.eye(n_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities, probabilities.argmax(axis=1)


@pytest.mark.parametrize("imbalanced", [False, True])
def test_balanced_accuracy_and_macro_f1_match_scikit_learn(imbalanced):
    from sklearn.metrics import balanced_accuracy_score, f1_score

    labels, _, predicted = _noisy(8, 600, seed=int(imbalanced), imbalanced=imbalanced)
    m = split_metrics(predicted, labels, [str(i) for i in range(8)])
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-12)
    if imbalanced:  # the point of the balanced metrics: they differ from accuracy here
        assert abs(m["balanced_accuracy"] - m["accuracy"]) > 0.01


def test_balanced_metrics_with_absent_and_never_predicted_classes_match_scikit_learn():
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score

    # Class 3 never occurs; class 2 occurs but is never predicted; class 4 is predicted but absent.
    labels = np.array([0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 4, 0, 1])
    m = split_metrics(predicted, labels, list("abcde"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
        assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_top5_accuracy_matches_scikit_learn_and_only_above_five_classes():
    from sklearn.metrics import top_k_accuracy_score

    labels, probabilities, predicted = _noisy(12, 500, seed=3)
    m = split_metrics(predicted, labels, [str(i) for i in range(12)], probabilities)
    assert m["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probabilities, k=5, labels=range(12)))
    assert m["top5_accuracy"] > m["accuracy"]
    labels5, probabilities5, predicted5 = _noisy(5, 100, seed=4)
    assert "top5_accuracy" not in split_metrics(predicted5, labels5, list("abcde"), probabilities5)


def test_a_class_with_zero_probability_is_never_a_top5_hit():
    probabilities = np.zeros((1, 8))
    probabilities[0, :2] = [0.6, 0.4]  # a kNN vote: two classes got every neighbour
    assert top_k_accuracy(probabilities, np.array([1])) == 1.0
    assert top_k_accuracy(probabilities, np.array([5])) == 0.0


def test_classification_metrics_from_probabilities_keep_per_image_predictions():
    labels, probabilities, predicted = _noisy(7, 40, seed=5)
    out = classification_metrics({"train": (probabilities, labels), "test": (probabilities[:30], labels[:30])},
                                 [str(i) for i in range(7)])
    assert set(out["predictions"]) == {"test"}  # train predictions are never kept
    kept = out["predictions"]["test"]
    assert kept["label"] == labels[:30].tolist()
    assert kept["predicted"] == predicted[:30].tolist()
    np.testing.assert_allclose(kept["probability"], probabilities[:30].max(axis=1), atol=1e-6)
    assert out["accuracy"]["test"] == pytest.approx((predicted[:30] == labels[:30]).mean())
    assert set(out["top5_accuracy"]) == {"train", "test"}
    assert set(out["balanced_accuracy"]) == set(out["macro_f1"]) == {"train", "test"}
    json.dumps(out)  # plain JSON types


def _fit(seed: int, correct_on: int, n_train: int = 10) -> dict:
    labels = np.array([0, 1, 1, 0])
    probabilities = np.full((4, 2), 0.2)
    predicted = labels.copy()
    predicted[correct_on:] = 1 - labels[correct_on:]
    probabilities[np.arange(4), predicted] = 0.8
    out = classification_metrics({"train": (probabilities, labels), "test": (probabilities, labels)}, ["a", "b"])
    out["n"]["train"] = n_train
    return {**out, "best_epoch": seed + 1, "train_seconds": 1.5}


def test_combine_repeats_keeps_the_first_fit_on_top_and_every_repeat_below():
    fits = [_fit(0, correct_on=4), _fit(1, correct_on=2, n_train=12)]
    m = combine_repeats(fits, [7, 8])
    assert m["accuracy"] == fits[0]["accuracy"] and m["best_epoch"] == 1  # the first fit, the kept head
    assert "predictions" not in m
    assert m["labels"] == {"test": [0, 1, 1, 0]}
    assert [r["seed"] for r in m["repeats"]] == [7, 8]
    assert [r["n_train"] for r in m["repeats"]] == [10, 12]
    assert [r["best_epoch"] for r in m["repeats"]] == [1, 2]
    assert m["train_seconds"] == 3.0
    np.testing.assert_array_equal(correct_matrix(m, "test"), [[True] * 4, [True, True, False, False]])
    np.testing.assert_array_equal(repeat_scores(m, "accuracy", "test"), [1.0, 0.5])
    assert np.isnan(repeat_scores(m, "top5_accuracy", "test")).all()  # 2 classes: no top-5
    assert correct_matrix(m, "validation").shape == (0, 0)
    json.dumps(m)


def test_combine_repeats_refuses_repeats_on_other_images():
    a, b = _fit(0, 4), _fit(1, 4)
    b["predictions"]["test"]["label"] = [1, 1, 1, 0]
    with pytest.raises(ValueError, match="different images"):
        combine_repeats([a, b], [0, 1])
