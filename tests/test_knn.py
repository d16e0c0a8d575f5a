"""The kNN probe: equal to a plain NumPy implementation of DINO's rule, on real features.

The reference computes in float64, the probe in float32: where two training images are
equally near a query at the k-th place, rounding picks one, so the comparisons go through
tests/near_ties.py (exact where the k nearest are clear, any tie order at a near-tie).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from near_ties import assert_knn_votes_match, cosine_similarities, knn_reference

from transfer_lab.bottleneck import Bottleneck
from transfer_lab.heads import build_head, load_head, save_head, train_head
from transfer_lab.knn import KNNHead, capped, check_k, knn_votes, nearest, neighbour_counts

T = 0.07


@pytest.fixture(scope="module")
def digits_features() -> dict[str, Bottleneck]:
    """Real features of real digits: the quickstart's pretrained EfficientNet-Lite0 (at 32 px,
    to keep it quick) on 900 of scikit-learn's digits, split 600 / 150 / 150."""
    from sklearn.datasets import load_digits

    from transfer_lab.extract import Extractor
    from transfer_lab.networks import load_backbone
    from transfer_lab.specs import NetworkSpec

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # on the shared 2-core machine, 2 threads were slower
    digits = load_digits()
    images = np.repeat(np.round(digits.images[:900] * 255 / 16).astype(np.uint8)[..., None], 3, axis=3)
    backbone = load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=32))
    features = Extractor(backbone, "cpu", "fp32").run(images, 300)
    torch.set_num_threads(before)
    labels = digits.target[:900].astype(np.int64)
    names = [str(i) for i in range(10)]
    cuts = {"train": slice(0, 600), "validation": slice(600, 750), "test": slice(750, 900)}
    return {split: Bottleneck(features[cut], labels[cut], names, {}) for split, cut in cuts.items()}


def _votes(train: Bottleneck, queries: np.ndarray, ks, **kw) -> dict[int, np.ndarray]:
    bank = torch.nn.functional.normalize(torch.from_numpy(train.features), dim=1)
    out = knn_votes(torch.from_numpy(queries), bank, torch.from_numpy(train.labels), 10, ks, T, **kw)
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("k", [1, 10, 20, 100, 200])
def test_votes_equal_the_numpy_reference_on_real_digits_features(digits_features, k):
    """Exact (the class, the votes within 1e-5) on every query whose k-th and (k+1)-th
    neighbours are clearly apart (at least 90% of them; 147 to 150 of 150 here); at a
    near-tie (row 123 at k = 100: 5e-8 apart, a different 100th image in float32 on one
    machine), the votes of one of the orders of the tied images."""
    train, test = digits_features["train"], digits_features["test"]
    similarity = cosine_similarities(train.features, test.features)
    ours = _votes(train, test.features, [k])[k]
    separated = assert_knn_votes_match(ours, similarity, train.labels, 10, k, T, atol=1e-5)
    assert separated.sum() >= 0.9 * len(separated)
    assert (ours.argmax(axis=1) == test.labels).mean() > 0.6  # 8x8 digits at 32 px; chance is 10%


def test_one_pass_gives_every_k_and_chunks_change_only_float_rounding(digits_features):
    train, test = digits_features["train"], digits_features["test"]
    similarity = cosine_similarities(train.features, test.features)
    together = _votes(train, test.features, [10, 20, 100])
    # 7 queries per chunk (4,200 similarities) instead of all 150 at once.
    chunked = _votes(train, test.features, [10, 20, 100], chunk_elements=7 * 600)
    for k in (10, 20, 100):
        # The same products, the top 100 read at k: the same votes, bit for bit.
        np.testing.assert_array_equal(together[k], _votes(train, test.features, [k])[k])
        # The products are blocked differently: float32 rounding (~1e-7), the same classes,
        # wherever the k nearest are clear; at a near-tie either order of the tied images.
        for votes in (together[k], chunked[k]):
            separated = assert_knn_votes_match(votes, similarity, train.labels, 10, k, T, atol=1e-5)
        np.testing.assert_array_equal(chunked[k][separated].argmax(axis=1), together[k][separated].argmax(axis=1))
        np.testing.assert_allclose(chunked[k][separated], together[k][separated], rtol=0, atol=1e-6)


def test_k_beyond_the_training_set_is_refused_and_capped_on_request():
    bank = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    with pytest.raises(ValueError, match="between 1 and the 8 training images"):
        knn_votes(torch.randn(2, 4), bank, torch.zeros(8, dtype=torch.long), 2, [5, 10])
    assert capped([10, 20, 100, 200], 50) == [10, 20, 50]
    # The full training set: the workflow refuses, naming the config key, before training.
    with pytest.raises(ValueError, match=r"heads\.probe\.k: k = 100, 200 is larger than the training set \(50 images\)"):
        check_k([10, 20, 100, 200], 50, "heads.probe.k")
    check_k(20, 50, "heads.probe.k")
    assert neighbour_counts(20) == [20] and neighbour_counts([200, 10, 20, 10]) == [10, 20, 200]


def knn_config(**over) -> dict:
    return {"kind": "knn", "k": [1, 10, 20, 100, 200], "temperature": T, "seed": 0, **over}


def test_knn_head_chooses_k_on_validation_and_scores_test_as_the_reference(digits_features):
    """The sweep scores the probe's own votes, which equal the reference (tie-aware); the
    smallest of the equally accurate k wins; test is classified with the votes of that k."""
    train, validation, test = (digits_features[s] for s in ("train", "validation", "test"))
    head_file, metrics = train_head(knn_config(), train, validation, test, device="cpu")
    assert [s["k"] for s in metrics["sweep"]] == [1, 10, 20, 100, 200]
    on_validation = cosine_similarities(train.features, validation.features)
    accuracy = {}
    for s in metrics["sweep"]:
        votes = _votes(train, validation.features, [s["k"]])[s["k"]]
        assert_knn_votes_match(votes, on_validation, train.labels, 10, s["k"], T, atol=1e-5)
        accuracy[s["k"]] = (votes.argmax(1) == validation.labels).mean()
        assert s["validation_accuracy"] == pytest.approx(accuracy[s["k"]])
    best = max(accuracy.values())
    assert metrics["k"] == min(k for k, a in accuracy.items() if a == best)
    ours = _votes(train, test.features, [metrics["k"]])[metrics["k"]]
    assert_knn_votes_match(ours, cosine_similarities(train.features, test.features), train.labels, 10, metrics["k"],
                           T, atol=1e-5)
    assert metrics["predictions"]["test"]["predicted"] == ours.argmax(1).tolist()
    np.testing.assert_allclose(metrics["predictions"]["test"]["probability"], ours.max(1), atol=1e-6)
    assert metrics["accuracy"]["test"] == pytest.approx((ours.argmax(1) == test.labels).mean())
    assert "train" not in metrics["accuracy"] and metrics["n"]["train"] == 600
    assert metrics["curve"] == [] and "top5_accuracy" in metrics
    # Cosine similarity on the features as they are: the head file standardises nothing.
    assert head_file["mean"].abs().max() == 0 and (head_file["std"] == 1).all()


def test_knn_head_file_round_trips_and_gives_the_votes_through_a_softmax(digits_features, tmp_path):
    train, validation, test = (digits_features[s] for s in ("train", "validation", "test"))
    head_file, metrics = train_head(knn_config(k=[10, 20]), train, validation, test, device="cpu")
    save_head(tmp_path / "knn.pt", head_file)
    head, loaded = load_head(tmp_path / "knn.pt")
    assert isinstance(head, KNNHead) and head.neighbours == metrics["k"]
    assert head.features.shape == (600, train.features.shape[1])
    with torch.no_grad():
        probabilities = torch.softmax(head(torch.from_numpy(test.features)), dim=1).numpy()
    similarity = cosine_similarities(train.features, test.features)
    assert_knn_votes_match(probabilities, similarity, train.labels, 10, metrics["k"], T, atol=1e-5)
    # The module exports (predict's Classifier is exported with its head inside); one query
    # is multiplied alone, so its rounding is its own: compared tie-aware too.
    program = torch.export.export(head, (torch.from_numpy(test.features[:1]),))
    exported = torch.softmax(program.module()(torch.from_numpy(test.features[:1])), 1).numpy()
    assert_knn_votes_match(exported, similarity[:1], train.labels, 10, metrics["k"], T, atol=1e-5, min_separated=0)
    assert isinstance(build_head(loaded["config"], 1280, 10), KNNHead)


def _half_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors of 8 floats with four entries +-0.5 and the rest 0: every product and
    every sum of a cosine similarity between two is exact in float32, in any order, so
    similarities in {-1, -0.75, ..., 1} tie exactly, on every machine, in both precisions."""
    rows = np.zeros((n, 8), np.float32)
    for row in rows:
        row[rng.choice(8, size=4, replace=False)] = rng.choice([-0.5, 0.5], size=4)
    return rows


def test_equal_similarities_go_to_the_earlier_training_image_whatever_k_chunks_or_device():
    """torch.topk leaves the order of equal values open (on the CPU it differs with k; on a
    GPU it differs again): the probe orders equal similarities by training index, as the
    reference's stable sort does, so a vote depends on neither k, nor chunks, nor device."""
    rng = np.random.default_rng(0)
    train, queries = _half_vectors(40, rng), _half_vectors(25, rng)
    train[20:] = train[:20]  # and every image twice, under another label
    labels = rng.integers(0, 4, size=40)
    labels[20:] = (labels[:20] + 1) % 4
    similarity = queries.astype(np.float64) @ train.T.astype(np.float64)
    assert np.array_equal(similarity, queries @ train.T)  # exact in float32 too
    bank = torch.from_numpy(train)
    args = (torch.from_numpy(labels), 4)
    ks = list(range(1, 41))
    together = knn_votes(torch.from_numpy(queries), bank, *args, ks, T)
    chunked = knn_votes(torch.from_numpy(queries), bank, *args, ks, T, chunk_elements=3 * 40)
    ranked = -np.sort(-similarity, axis=1)
    crossing = sum(int((ranked[:, k - 1] == ranked[:, k]).sum()) for k in ks[:-1])
    assert crossing > 500  # ties across the k-th place, for most queries at most k
    for k in ks:
        np.testing.assert_allclose(together[k].numpy(), knn_reference(similarity, labels, 4, k, T), rtol=1e-6,
                                   atol=1e-7, err_msg=f"k={k}")
        assert torch.equal(knn_votes(torch.from_numpy(queries), bank, *args, [k], T)[k], together[k]), k
        assert torch.equal(chunked[k], together[k]), k
    # nearest() itself: the order of NumPy's stable argsort, for every k.
    sim = torch.from_numpy(queries @ train.T)
    for k in (1, 7, 20, 39, 40):
        top, index = nearest(sim.clone(), k)
        np.testing.assert_array_equal(index.numpy(), np.argsort(-similarity, axis=1, kind="stable")[:, :k])
        assert torch.equal(top, sim.gather(1, index))
