"""The tie-aware comparisons of tests/near_ties.py, on data built to hold near-ties.

An exact comparison of float32 results with a float64 reference fails wherever rounding
decides a near-tie (test_knn's k = 100 on one CI machine: the 100th and 101st neighbours
5e-8 apart). These data hold such ties on purpose, the same on every machine, and show
that the helpers (a) pass on them, where (b) the exact comparison the kNN test used to make
fails, and (c) still fail on a genuine disagreement: a wrong vote, a wrong class, a
neighbour that is not at the edge, the wrong k or temperature.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from near_ties import (
    SIMILARITY_TOLERANCE,
    accuracy_bounds,
    assert_knn_votes_match,
    assert_same_class,
    cosine_similarities,
    edge_gaps,
    knn_reference,
    tie_orders,
)

from transfer_lab.knn import knn_votes

T = 0.07
DIM, TIED = 24, 8
N_CLASSES = 4


def _pair(c: float, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Two (along, across) float32 rows of unit length to float32 rounding: ``b`` is one
    float32 step further along than ``a``, so float32 ranks it first against the axis, but
    enough steps further across that, renormalised in float64, ``a`` is the nearer."""
    a = np.array([c, s], np.float32)
    b = np.array([np.nextafter(a[0], np.float32(2)), s], np.float32)
    while b[0] / np.hypot(*b.astype(np.float64)) >= a[0] / np.hypot(*a.astype(np.float64)):
        b[1] = np.nextafter(b[1], np.float32(2))
    return a, b


def near_tie_data(seed: int = 0):
    """Training rows (float32), their labels, and queries.

    Queries 0-7 are the axes e_j: against them a float32 similarity is one entry of a
    training row, exact in any summation order on any BLAS, so the ties are the same on
    every machine. Along each e_j lie ``j % 3`` clearly nearest rows (label 2), then a
    pair that float32 and float64 order differently (``_pair``: label 0 nearer in float64,
    label 1 in float32), so query j sits at a near-tie at k = j % 3 + 1 and is clear at
    the other k up to 3. Then 40 random rows (labels 0-3), and 24 random queries in the
    last 8 dimensions, which the rows along the axes leave at 0: clear at every k up to 3.
    """
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for j in range(TIED):
        for i in range(j % 3):
            row = np.zeros(DIM, np.float32)
            row[j], row[TIED + j] = 0.99 - 0.004 * i, np.sqrt(1 - (0.99 - 0.004 * i) ** 2)
            rows.append(row)
            labels.append(2)
        for (along, across), label in zip(_pair(0.96, 0.28), (0, 1), strict=True):
            row = np.zeros(DIM, np.float32)
            row[j], row[TIED + j] = along, across
            rows.append(row)
            labels.append(label)
    far = rng.normal(size=(40, DIM))
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    train = np.concatenate([np.stack(rows), far.astype(np.float32)])
    labels = np.concatenate([labels, rng.integers(0, N_CLASSES, size=len(far))]).astype(np.int64)
    random_queries = np.zeros((24, DIM), np.float32)
    random_queries[:, 2 * TIED:] = rng.normal(size=(24, DIM - 2 * TIED))
    queries = np.concatenate([np.eye(DIM, dtype=np.float32)[:TIED], random_queries])
    return train, labels, queries


def _ours(train, labels, queries, k, temperature=T) -> np.ndarray:
    """The probe's votes, the bank taken as it is (unit length to float32 rounding)."""
    return knn_votes(torch.from_numpy(queries), torch.from_numpy(train), torch.from_numpy(labels), N_CLASSES, [k],
                     temperature)[k].numpy()


def _exact_comparison(ours, expected) -> None:
    """What test_knn compared before: every argmax, every vote within 1e-5."""
    np.testing.assert_array_equal(ours.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.fixture(scope="module")
def data():
    train, labels, queries = near_tie_data()
    return train, labels, queries, cosine_similarities(train, queries)


def test_the_data_hold_the_near_ties_they_promise(data):
    train, labels, queries, similarity = data
    assert np.array_equal(queries[:TIED] @ train.T, train[:, :TIED].T)  # one entry per similarity: exact
    for k in (1, 2, 3):
        tied_axes = [j for j in range(TIED) if j % 3 + 1 == k]
        # The axes built to tie at this k, and no other query: the random ones are clear.
        assert np.flatnonzero(edge_gaps(similarity, k) <= SIMILARITY_TOLERANCE).tolist() == tied_axes
        for j in tied_axes:
            assert 0 < edge_gaps(similarity[j:j + 1], k)[0] < 1e-7  # a float32 step apart, or less
            assert len(tie_orders(similarity[j], k)) == 2  # the pair: either one at the k-th place
            # float32 puts the label-1 member first, float64 the label-0 one.
            order32 = np.argsort(-(queries[j] @ train.T), kind="stable")
            assert labels[order32[k - 1]] == 1 and labels[np.argsort(-similarity[j], kind="stable")[k - 1]] == 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tie_aware_comparison_passes_where_the_exact_one_fails(data, k):
    train, labels, queries, similarity = data
    ours = _ours(train, labels, queries, k)
    expected = knn_reference(similarity, labels, N_CLASSES, k, T)
    # (a) the helper: exact on the clear queries, either order of the pair at the tied ones.
    separated = assert_knn_votes_match(ours, similarity, labels, N_CLASSES, k, T, min_separated=0.75)
    tied_axes = [j for j in range(TIED) if j % 3 + 1 == k]
    assert not separated[tied_axes].any()
    # (b) the old exact comparison fails, on exactly those queries: float32 let the pair's
    # other member (the other label) in.
    with pytest.raises(AssertionError):
        _exact_comparison(ours, expected)
    apart = np.flatnonzero(np.abs(ours - expected).max(axis=1) > 1e-5)
    assert apart.tolist() == tied_axes
    np.testing.assert_allclose(ours[separated], expected[separated], atol=1e-5)
    # Where both of the pair are in, their two labels' votes tie instead (to ~1e-8): the
    # votes agree, the argmax may not, and the helper takes either of the two classes.
    flipped = np.flatnonzero(ours.argmax(axis=1) != expected.argmax(axis=1))
    assert set(flipped) <= set(range(TIED))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_tie_aware_comparison_fails_on_a_genuine_disagreement(data, k):
    train, labels, queries, similarity = data
    ours = _ours(train, labels, queries, k)
    separated = assert_knn_votes_match(ours, similarity, labels, N_CLASSES, k, T, min_separated=0.75)
    check = dict(similarity=similarity, train_labels=labels, n_classes=N_CLASSES, k=k, temperature=T,
                 min_separated=0.75)
    # (c) a wrong vote on the clear query with the clearest class: its two largest classes swapped.
    ranked = np.sort(ours, axis=1)
    row = np.flatnonzero(separated)[np.argmax((ranked[:, -1] - ranked[:, -2])[separated])]
    wrong = ours.copy()
    top2 = np.argsort(wrong[row])[-2:]
    wrong[row, top2] = wrong[row, top2[::-1]]
    with pytest.raises(AssertionError):
        assert_knn_votes_match(wrong, **check)
    # A vote 2e-5 off on one clear query (beyond atol, far below any neighbour's weight).
    off = ours.copy()
    off[row] += np.array([2e-5, -2e-5, 0, 0])
    with pytest.raises(AssertionError):
        assert_knn_votes_match(off, **check)
    # At a tied query, a neighbour set no tie order gives: the pair both in, the clearly
    # nearer row (k > 1) or the k-th row (k = 1) out.
    j = next(j for j in range(TIED) if j % 3 + 1 == k)
    order = np.argsort(-similarity[j], kind="stable")  # k - 1 clear rows, then the pair
    wrong_set = order[1:k + 1] if k > 1 else order[[2]]
    assert not any(set(wrong_set) == set(s) for s in tie_orders(similarity[j], k))
    at_tie = ours.copy()
    at_tie[j] = knn_reference(similarity[j:j + 1], labels, N_CLASSES, k, T, wrong_set[None])[0]
    with pytest.raises(AssertionError, match=f"query {j} sits at a near-tie"):
        assert_knn_votes_match(at_tie, **check)
    # The wrong k; the wrong temperature (k = 1 gives one vote, whatever the temperature).
    with pytest.raises(AssertionError):
        assert_knn_votes_match(_ours(train, labels, queries, k + 1), **check)
    if k > 1:
        with pytest.raises(AssertionError):
            assert_knn_votes_match(_ours(train, labels, queries, k, temperature=0.1), **check)


def test_data_made_of_ties_cannot_pass_for_a_test(data):
    train, labels, queries, similarity = data
    tied_axes = [j for j in range(TIED) if j % 3 == 0]  # tied at k = 1
    ours = _ours(train, labels, queries[tied_axes], 1)
    with pytest.raises(AssertionError, match="these data cannot test the votes"):
        assert_knn_votes_match(ours, similarity[tied_axes], labels, N_CLASSES, 1, T)


def test_same_class_at_a_near_tie_and_not_elsewhere():
    reference = np.array([[0.5 + 1e-9, 0.5 - 1e-9, 0.0],  # a near-tie between classes 0 and 1
                          [0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    ours = np.array([1, 0, 2, 1])  # rounding picked class 1 at the tie
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(ours, reference.argmax(axis=1))  # the exact comparison
    clear = assert_same_class(ours, reference, 1e-6, min_clear=0.75)
    assert clear.tolist() == [False, True, True, True]
    assert_same_class(reference + 1e-8, reference, 1e-6, min_clear=0.75)  # scores are taken too
    with pytest.raises(AssertionError, match="another class than the reference's clear winner"):
        assert_same_class(np.array([1, 0, 1, 1]), reference, 1e-6, min_clear=0.75)
    with pytest.raises(AssertionError, match="not one of the tied ones"):
        assert_same_class(np.array([2, 0, 2, 1]), reference, 1e-6, min_clear=0.75)
    with pytest.raises(AssertionError, match="cannot test the prediction"):
        assert_same_class(ours, reference, 1e-6)  # 3 of 4 clear: below the default 90%


def test_accuracy_bounds_count_a_near_tie_either_way():
    scores = np.array([[0.5 + 1e-9, 0.5 - 1e-9, 0.0], [0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.4 + 1e-9, 0.2]])
    labels = np.array([1, 0, 1, 2])
    # Row 0 may go to its label, row 1 is right, row 2 wrong, row 3 is tied between two other classes.
    assert accuracy_bounds(scores, labels, 1e-6) == (0.25, 0.5)
    assert accuracy_bounds(scores, labels, 1e-12) == (0.25, 0.25)
