"""Repeats and label-efficiency subsets: seeds, draws, and what a metrics JSON keeps of them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_heads import config, few_threads, splits  # noqa: F401  (fixtures: one torch thread, Gaussian blobs)

from transfer_lab.bottleneck import Bottleneck
from transfer_lab.config import effective_repeats
from transfer_lab.heads import train_head
from transfer_lab.repeats import shot_indices, shot_subset, train_repeats


def test_shots_per_class_nested_and_the_same_for_every_caller():
    labels = np.repeat(np.arange(4), [30, 20, 3, 40])
    one, short_one = shot_indices(labels, 1, seed=0)
    five, short_five = shot_indices(labels, 5, seed=0)
    assert np.bincount(labels[one]).tolist() == [1, 1, 1, 1] and short_one == {}
    # Class 2 has 3 images: it contributes all of them, and says so.
    assert np.bincount(labels[five]).tolist() == [5, 5, 3, 5] and short_five == {2: 3}
    assert set(one) <= set(five)  # nested: the 5-shot images include the 1-shot ones
    again, _ = shot_indices(labels.copy(), 5, seed=0)
    np.testing.assert_array_equal(again, five)  # depends on labels, shots and seed only
    other, _ = shot_indices(labels, 5, seed=1)
    assert set(other) != set(five)


def test_a_short_class_is_logged_by_name(caplog):
    labels = np.repeat(np.arange(3), [10, 2, 10])
    train = Bottleneck(np.zeros((22, 4), np.float32), labels, ["stop", "yield", "give way"], {})
    with caplog.at_level(logging.WARNING):
        subset = shot_subset(train, 5, seed=3)
    assert len(subset.labels) == 12
    assert "5-shot subset (seed 3): 1 classes have fewer than 5 training images" in caplog.text
    assert "yield (2)" in caplog.text


def test_repeats_train_with_consecutive_seeds_and_keep_the_first_head(splits):  # noqa: F811
    cfg = config("mlp", epochs=3, seed=7)
    head_file, metrics = train_repeats(cfg, splits["train"], splits["validation"], splits["test"], repeats=3,
                                       device="cpu")
    assert [r["seed"] for r in metrics["repeats"]] == [7, 8, 9]
    assert metrics["shots"] is None and all(r["n_train"] == 60 for r in metrics["repeats"])
    first_file, first = train_head(cfg, splits["train"], splits["validation"], splits["test"], device="cpu")
    for key in first_file["state_dict"]:
        assert torch.equal(head_file["state_dict"][key], first_file["state_dict"][key])
    assert head_file["config"]["seed"] == 7
    assert metrics["accuracy"] == first["accuracy"]  # the top level is the first repeat's
    assert metrics["repeats"][0]["predictions"]["test"]["predicted"] == first["predictions"]["test"]["predicted"]
    assert metrics["labels"]["test"] == splits["test"].labels.tolist()
    probabilities = [r["predictions"]["test"]["probability"] for r in metrics["repeats"]]
    assert probabilities[0] != probabilities[1]  # other seeds, other weights
    assert metrics["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in metrics["repeats"]))


def test_shots_train_each_repeat_on_its_own_subset(splits):  # noqa: F811
    _, metrics = train_repeats(config("linear", epochs=3), splits["train"], splits["validation"], splits["test"],
                               repeats=2, shots=4, device="cpu")
    assert metrics["shots"] == 4
    assert [r["n_train"] for r in metrics["repeats"]] == [12, 12]  # 4 per class, 3 classes
    assert metrics["n"]["validation"] == 30 and metrics["n"]["test"] == 30  # evaluation sets stay whole


def test_zero_repeats_are_refused(splits):  # noqa: F811
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        train_repeats(config("linear"), splits["train"], splits["validation"], None, repeats=0, device="cpu")


def test_seedless_heads_on_the_full_set_are_trained_once():
    assert effective_repeats("logreg", None, 3) == 1
    assert effective_repeats("knn", None, 3) == 1
    assert effective_repeats("mlp", None, 3) == 3
    assert effective_repeats("logreg", 5, 3) == 3  # each repeat draws other images


@pytest.mark.parametrize("kind", ["logreg", "knn"])
def test_seedless_heads_really_ignore_the_seed(splits, kind):  # noqa: F811
    a = train_head(config(kind, seed=0), splits["train"], splits["validation"], splits["test"], device="cpu")[1]
    b = train_head(config(kind, seed=5), splits["train"], splits["validation"], splits["test"], device="cpu")[1]
    assert a["predictions"] == b["predictions"]


def test_a_shots_logreg_learns_from_its_subset_only(splits):  # noqa: F811
    """The full-data protocol refits on train + validation; on a subset that would hand the
    head every validation label, so it keeps its train-only fit."""
    cfg = config("logreg", c_grid=[0.01, 1.0])
    _, full = train_repeats(cfg, splits["train"], splits["validation"], splits["test"], repeats=1, device="cpu")
    _, few = train_repeats(cfg, splits["train"], splits["validation"], splits["test"], repeats=1, shots=2,
                           device="cpu")
    assert full["refit"] is True and full["curve"]
    assert few["refit"] is False and few["curve"] == []
    subset = shot_subset(splits["train"], 2, seed=0)
    expected = train_head(cfg, subset, splits["validation"], splits["test"], device="cpu", refit=False)[1]
    assert few["repeats"][0]["predictions"]["test"] == {k: expected["predictions"]["test"][k]
                                                        for k in ("predicted", "probability")}


def test_a_knn_head_on_a_subset_smaller_than_k_votes_over_the_whole_subset(splits):  # noqa: F811
    _, metrics = train_repeats(config("knn", k=[5, 50]), splits["train"], splits["validation"], splits["test"],
                               repeats=1, shots=2, device="cpu")
    assert [s["k"] for s in metrics["sweep"]] == [5, 6]  # 50 capped at the 6 images of the subset
    assert metrics["accuracy"]["test"] > 0.9
