"""A head trained several times, on all training images or on a few per class.

One training run says little about how much a result owes to its seed; ``repeats``
trains each head again with seeds ``seed, seed + 1, ...``. Label-efficiency curves
(``shots``) train on k images per class drawn from the cached training features, so a
new point on the curve costs head training only, never extraction; each repeat draws its
own subset. The draw depends on nothing but the training labels, the number of shots
and the seed: every network and every head with the same seed sees the same images (the
comparison between networks is paired on its training data too), and the subsets are
nested (the 5-shot images include the 1-shot ones).

A head whose fit does not depend on its seed (logreg's L-BFGS from zero, the kNN
probe) is trained once on the full training set, however many repeats are asked for:
its repeats would be copies (:func:`transfer_lab.config.effective_repeats`).
"""

from __future__ import annotations

import logging

import numpy as np

from .bottleneck import Bottleneck
from .evaluation import combine_repeats
from .heads import standardisation, standardise_in_place, train_head


def shot_indices(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, dict[int, int]]:
    """Sorted indices of ``shots`` images of each class, drawn without replacement.

    A class with fewer images contributes all it has; those classes are returned with
    the number they had (class index -> images), so the caller can say so.
    """
    rng = np.random.default_rng(seed)
    chosen, short = [], {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < shots:
            short[int(c)] = len(members)
        chosen.append(rng.permutation(members)[:shots])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64), short


def shot_subset(train: Bottleneck, shots: int, seed: int) -> Bottleneck:
    """The training features of ``shots`` images per class (:func:`shot_indices`); logs the
    classes that had fewer."""
    index, short = shot_indices(train.labels, shots, seed)
    if short:
        logging.warning(
            "%d-shot subset (seed %d): %d classes have fewer than %d training images and contribute all they "
            "have: %s", shots, seed, len(short), shots,
            ", ".join(f"{train.class_names[c]} ({n})" for c, n in sorted(short.items())))
    return Bottleneck(train.features[index], train.labels[index], train.class_names, train.meta)


def train_repeats(
    cfg: dict,
    train: Bottleneck,
    validation: Bottleneck,
    test: Bottleneck | None,
    repeats: int,
    shots: int | None = None,
    device: str = "auto",
    consume: bool = False,
) -> tuple[dict, dict]:
    """Train the head ``repeats`` times with seeds ``cfg["seed"] + r``; with ``shots``, each
    on its own subset of that many training images per class (drawn with the same seed).

    Returns the first run's head file (the one predict and export apply) and one metrics
    dict for all runs (:func:`transfer_lab.evaluation.combine_repeats`), with ``shots``.
    On a subset, logreg is not refitted on train + validation: the point of the subset is
    how few labelled images the head learned from.
    On the full training set the splits are standardised once for every run; ``consume``
    lets that happen in the caller's own arrays (which then change), so that training
    holds the features once, not twice (the train_head job, which reads them only for this).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seeds = [cfg["seed"] + r for r in range(repeats)]
    standardised = None
    if shots is None and cfg["kind"] != "knn":
        # Every run standardises with the full training split's statistics: done once, in
        # place, so the features are held once (a subset has its own, so copies are made).
        standardised = standardisation(train.features)

        def standardise(b: Bottleneck | None) -> Bottleneck | None:
            if b is None:
                return None
            features = standardise_in_place(b.features if consume else b.features.copy(), *standardised)
            return Bottleneck(features, b.labels, b.class_names, b.meta)

        train, validation, test = standardise(train), standardise(validation), standardise(test)
    fits, head_file = [], None
    for seed in seeds:
        subset = train if shots is None else shot_subset(train, shots, seed)
        run_file, metrics = train_head({**cfg, "seed": seed}, subset, validation, test, device, refit=shots is None,
                                       standardised=standardised)
        logging.info("seed %d: %d training images, accuracy %s, %.1f s", seed, len(subset.labels),
                     {k: round(v, 4) for k, v in metrics["accuracy"].items()}, metrics["train_seconds"])
        head_file = head_file or run_file
        fits.append(metrics)
    return head_file, {**combine_repeats(fits, seeds), "shots": shots}
