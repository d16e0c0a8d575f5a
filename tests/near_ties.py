"""Comparisons of float results that hold at near-ties, on any machine.

Two computations of one rule round differently: float32 in torch against a float64 NumPy
reference, or the same code blocked differently (another thread count, chunk or batch
size, BLAS, CPU). Here that moves a cosine similarity by about 2e-7 and a logit by less
than 1e-5. Where the rule meets a near-tie (two training images equally near a query at
the k-th place, two classes with nearly equal scores) rounding decides which side wins,
and an exact comparison of the outcome (the neighbours, the votes, the argmax) passes on
one machine and fails on the next.

These helpers compare exactly (argmax, and values within ``atol``) wherever the reference
is clearly decided, by a margin far above rounding, and at a near-tie accept the outcome
of any order of the tied candidates, and nothing else: a wrong vote, a wrong class or a
neighbour away from the edge still fails. Each also insists that most rows are clearly
decided, so that data made of ties cannot turn a test into one that cannot fail.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

# Similarities of unit vectors closer than this are a near-tie: float32 rounding moves them
# by ~2e-7 (measured on 1280-d features), so 1e-5 is far above it and still rare
# (1 to 3 of 150 digits queries at a given k).
SIMILARITY_TOLERANCE = 1e-5


def cosine_similarities(train: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(queries, train) cosine similarities in float64."""
    train = np.asarray(train, np.float64)
    queries = np.asarray(queries, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return queries @ train.T


def knn_reference(similarity: np.ndarray, train_labels: np.ndarray, n_classes: int, k: int, temperature: float,
                  nearest: np.ndarray | None = None) -> np.ndarray:
    """DINO's vote written out plainly, in float64: the k most similar training images (or
    the given ``nearest`` (queries, k) indices) each vote exp(similarity / T) for their
    class; votes normalised. Equal similarities: the earlier training image first."""
    if nearest is None:
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, axis=1) / temperature)
    votes = np.zeros((len(similarity), n_classes))
    np.add.at(votes, (np.arange(len(similarity))[:, None], np.asarray(train_labels)[nearest]), weights)
    return votes / votes.sum(axis=1, keepdims=True)


def edge_gaps(similarity: np.ndarray, k: int) -> np.ndarray:
    """Per query: its k-th largest similarity minus its (k+1)-th (infinite where k is the
    whole training set: no neighbour can swap in)."""
    if k >= similarity.shape[1]:
        return np.full(len(similarity), np.inf)
    ranked = -np.sort(-similarity, axis=1)
    return ranked[:, k - 1] - ranked[:, k]


def tie_orders(similarity: np.ndarray, k: int, tolerance: float = SIMILARITY_TOLERANCE,
               limit: int = 10_000) -> list[np.ndarray]:
    """Every set of k neighbours of one query (``similarity``: its row) that a tie order
    allows: the training images clearly above the k-th similarity, and each choice of the
    rest among those within ``tolerance`` of it."""
    edge = -np.sort(-similarity)[k - 1]
    sure = np.flatnonzero(similarity > edge + tolerance)
    band = np.flatnonzero(np.abs(similarity - edge) <= tolerance)
    count = math.comb(len(band), k - len(sure))
    if count > limit:
        raise AssertionError(f"{count} neighbour sets tie at k={k} ({len(band)} training images within "
                             f"{tolerance:g} of the k-th similarity): too many to try; make the data less tied")
    return [np.concatenate([sure, chosen]) for chosen in itertools.combinations(band, k - len(sure))]


def assert_same_class(ours: np.ndarray, reference: np.ndarray, margin: float, *, min_clear: float = 0.9,
                      err_msg: str = "") -> np.ndarray:
    """Our predicted classes against a reference's scores (probabilities or logits, any
    monotone score): equal wherever the reference's top class leads its runner-up by more
    than ``margin``; elsewhere ours must be one of the classes within ``margin`` of the top.

    ``ours``: predicted classes (n,) or scores (n, classes), whose argmax is taken. At least
    ``min_clear`` of the rows must be clear. Returns the mask of clear rows.
    """
    reference = np.asarray(reference, np.float64)
    ours = np.asarray(ours)
    predicted = ours.argmax(axis=1) if ours.ndim == 2 else ours.astype(np.int64)
    top = reference.max(axis=1)
    lead = top - np.sort(reference, axis=1)[:, -2] if reference.shape[1] > 1 else np.full(len(top), np.inf)
    clear = lead > margin
    prefix = f"{err_msg}: " if err_msg else ""
    assert clear.mean() >= min_clear, (f"{prefix}only {clear.sum()} of {len(clear)} rows have a top class "
                                       f"clear by {margin:g}: these data cannot test the prediction")
    expected = reference.argmax(axis=1)
    wrong = np.flatnonzero(clear & (predicted != expected))
    assert not len(wrong), (f"{prefix}{len(wrong)} rows predict another class than the reference's clear "
                            f"winner: rows {wrong[:10].tolist()}, ours {predicted[wrong[:10]].tolist()}, "
                            f"reference {expected[wrong[:10]].tolist()}")
    near = np.flatnonzero(~clear)
    chosen = reference[near, predicted[near]]
    wrong = near[chosen < top[near] - margin]
    assert not len(wrong), (f"{prefix}rows {wrong.tolist()} sit at a near-tie, but our class is not one of "
                            f"the tied ones (it trails the top by more than {margin:g})")
    return clear


def accuracy_bounds(scores: np.ndarray, labels: np.ndarray, margin: float) -> tuple[float, float]:
    """The accuracies another rounding of ``scores`` can give: each row whose top class
    leads by more than ``margin`` counts as it is; a row at a near-tie may go either way
    (right only where its label is among the tied classes)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    top = scores.max(axis=1)
    lead = top - np.sort(scores, axis=1)[:, -2]
    clear = lead > margin
    right = scores.argmax(axis=1) == labels
    may = ~clear & (scores[np.arange(len(labels)), labels] >= top - margin)
    return float((clear & right).sum() / len(labels)), float(((clear & right) | may).sum() / len(labels))


def assert_knn_votes_match(ours: np.ndarray, similarity: np.ndarray, train_labels: np.ndarray, n_classes: int,
                           k: int, temperature: float, *, atol: float = 1e-5,
                           tolerance: float = SIMILARITY_TOLERANCE, min_separated: float = 0.9,
                           err_msg: str = "") -> np.ndarray:
    """kNN votes (queries, classes) against the float64 rule on ``similarity`` (queries, train).

    Rows whose k-th and (k+1)-th reference similarities are more than ``tolerance`` apart
    have one right neighbour set: there the votes must equal the reference within
    ``atol`` and predict its class (:func:`assert_same_class`, margin 2 x atol). At a
    near-tie the votes must equal, within ``atol``, those of one of the neighbour sets
    :func:`tie_orders` allows. At least ``min_separated`` of the rows must be separated.
    Returns the mask of separated rows.
    """
    ours = np.asarray(ours, np.float64)
    prefix = f"{err_msg}: " if err_msg else f"k={k}: "
    expected = knn_reference(similarity, train_labels, n_classes, k, temperature)
    separated = edge_gaps(similarity, k) > tolerance
    assert separated.mean() >= min_separated, (
        f"{prefix}only {separated.sum()} of {len(separated)} queries have their k-th neighbour clear of the "
        f"next by {tolerance:g}: these data cannot test the votes")
    rows = np.flatnonzero(separated)
    np.testing.assert_allclose(ours[rows], expected[rows], rtol=0, atol=atol,
                               err_msg=f"{prefix}queries whose k nearest are clear (reference rows {rows.tolist()})")
    assert_same_class(ours[rows], expected[rows], 2 * atol, min_clear=0.5 if len(rows) > 1 else 0,
                      err_msg=f"{prefix}queries whose k nearest are clear")
    for row in np.flatnonzero(~separated):
        sets = tie_orders(similarity[row], k, tolerance)
        candidates = [knn_reference(similarity[row:row + 1], train_labels, n_classes, k, temperature, s[None])[0]
                      for s in sets]
        if not any(np.abs(ours[row] - c).max() <= atol for c in candidates):
            raise AssertionError(
                f"{prefix}query {row} sits at a near-tie (gap {edge_gaps(similarity[row:row + 1], k)[0]:.2e}), "
                f"but its votes {np.round(ours[row], 6).tolist()} are those of none of the {len(sets)} neighbour "
                f"sets a tie order allows (the first gives {np.round(candidates[0], 6).tolist()})")
    return separated
