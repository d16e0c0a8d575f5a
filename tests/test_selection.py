"""Successive halving (transfer_lab.selection): subsets, refusals, probes, cuts, replay, cost, tau."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transfer_lab.selection import (
    check_keep,
    check_rungs,
    cut,
    halving,
    halving_cost,
    kept_count,
    knn_accuracy,
    probe_accuracy,
    rung_subsets,
    screen,
    weighted_tau,
)


def unbalanced_labels(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Labels with ``sizes[c]`` images of class c, in a seeded order (classes interleaved)."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(labels)


# --- rung subsets ---------------------------------------------------------------------------

def test_subsets_are_nested_stratified_sorted_and_end_with_everything():
    sizes = [37, 50, 13, 100]
    labels = unbalanced_labels(sizes)
    fractions = [0.1, 0.35, 0.7, 1.0]
    subsets = rung_subsets(labels, fractions, seed=3)
    assert len(subsets) == len(fractions)
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert set(small) < set(large)
    for subset, f in zip(subsets, fractions, strict=True):
        assert subset.dtype == np.int64 and np.all(np.diff(subset) > 0)
        counts = np.bincount(labels[subset], minlength=len(sizes))
        for count, n in zip(counts, sizes, strict=True):
            assert abs(count - f * n) < 1 and count == math.floor(f * n + 1e-9)
    assert np.array_equal(subsets[-1], np.arange(len(labels)))


def test_subsets_count_as_written_not_as_floating_point_rounds():
    """0.29 * 100 is 28.999999999999996 in floating point: the rung still takes 29 images."""
    labels = np.zeros(100, dtype=int)
    assert len(rung_subsets(labels, [0.29], seed=0)[0]) == 29


def test_subsets_are_seeded():
    labels = unbalanced_labels([40, 40, 40])
    first = rung_subsets(labels, [0.2, 0.5], seed=7)
    again = rung_subsets(labels, [0.2, 0.5], seed=7)
    other = rung_subsets(labels, [0.2, 0.5], seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_subsets_are_the_same_on_every_machine():
    """Pinned: numpy's PCG64 stream and Generator.permutation are platform-independent; a
    numpy that drew differently would silently change every rung's images."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    assert rung_subsets(labels, [0.5, 1.0], seed=0)[0].tolist() == [0, 2, 6, 7, 9]


def test_a_rung_that_leaves_a_class_without_images_is_refused_with_the_smallest_fraction():
    sizes = [109, 109, 109, 100, 108, 108, 108, 109, 109, 109]  # 1078 images, class '3' the smallest
    labels = unbalanced_labels(sizes)
    names = [f"digit {c}" for c in range(10)]
    with pytest.raises(ValueError) as error:
        rung_subsets(labels, [0.009, 0.5, 1.0], seed=0, class_names=names)
    message = str(error.value)
    assert message.startswith("selection.rungs: 0.009 of the 1078 training images")
    assert "class 'digit 3' (100 images) no image" in message and message.endswith("at least 0.01")
    with pytest.raises(ValueError, match="^selection.rungs: 0.009 of the 1078 training images of dataset 'digits' "):
        rung_subsets(labels, [0.009], seed=0, dataset="digits")
    subset = rung_subsets(labels, [0.01, 1.0], seed=0)[0]  # the suggestion works
    assert np.all(np.bincount(labels[subset], minlength=10) >= 1)


@pytest.mark.parametrize("n", [1, 3, 7, 108, 333, 999, 12345])
def test_the_suggested_smallest_fraction_gives_every_class_an_image(n):
    labels = np.array([0] * n + [1] * (n + 5))
    with pytest.raises(ValueError, match="at least") as error:
        rung_subsets(labels, [0.5 / (n + 5)], seed=0)
    suggested = float(str(error.value).rsplit("at least ", 1)[1])
    assert 1 / n <= suggested < 1.1 / n + 1e-12  # rounded up to two significant digits
    assert all(len(s) for s in rung_subsets(labels, [min(suggested, 1.0)], seed=0))


# --- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("rungs,fragment", [
    ([], "gives no rung"),
    ([0.0, 0.5], "not a fraction"),
    ([0.5, 1.2], "not a fraction"),
    ([-0.1], "not a fraction"),
    ([0.3, 0.3, 1.0], "increase strictly"),
    ([0.5, 0.2], "increase strictly"),
])
def test_bad_rungs_are_refused_naming_the_setting(rungs, fragment):
    with pytest.raises(ValueError, match=f"^selection.rungs: .*{fragment}"):
        check_rungs(rungs)


def test_good_rungs_pass():
    assert check_rungs([0.1, 0.3, 1.0]) == [0.1, 0.3, 1.0]
    assert check_rungs((0.5,)) == [0.5]


@pytest.mark.parametrize("keep", [0, -0.2, 1.5])
def test_bad_keep_is_refused_naming_the_setting(keep):
    with pytest.raises(ValueError, match="^selection.keep: "):
        check_keep(keep, 5)


def test_no_candidates_is_refused():
    with pytest.raises(ValueError, match="no candidates"):
        check_keep(0.5, 0)


def test_kept_count_is_the_ceiling_and_never_nobody():
    assert kept_count(9, 0.34) == 4 and kept_count(4, 0.34) == 2 and kept_count(3, 0.34) == 2
    assert kept_count(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004 in floating point
    assert kept_count(5, 0.01) == 1 and kept_count(5, 1.0) == 5


# --- probes ----------------------------------------------------------------------------------

def clusters(n_per_class: int, d: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around well separated centres (positive, so cosine kNN sees them too)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    centres = 5 * np.eye(classes, d) + 1.0
    return (centres[y] + spread * rng.normal(size=(len(y), d))).astype(np.float32), y


@pytest.mark.parametrize("probe", ["logreg", "knn"])
def test_probe_on_separable_features_is_right_everywhere(probe):
    xtr, ytr = clusters(15, 8, 3, 0.3, seed=0)
    xva, yva = clusters(10, 8, 3, 0.3, seed=1)
    result = probe_accuracy(xtr, ytr, xva, yva, 3, probe=probe)
    assert result["accuracy"] == 1.0 and result["correct"] == [True] * 30
    assert result["n_train"] == 45 and result["n_validation"] == 30 and result["probe"] == probe
    assert 0.85 < result["low"] < 1.0 and result["high"] == 1.0
    json.dumps(result)


def test_probe_on_features_without_signal_is_near_chance():
    rng = np.random.default_rng(0)
    xtr, xva = rng.normal(size=(90, 16)), rng.normal(size=(300, 16))
    ytr, yva = np.arange(90) % 3, rng.integers(0, 3, 300)
    result = probe_accuracy(xtr, ytr, xva, yva, 3)
    assert result["low"] < 1 / 3 < result["high"] and result["accuracy"] < 0.45


def test_unknown_probe_is_refused():
    xtr, ytr = clusters(5, 4, 2, 0.3, seed=0)
    with pytest.raises(ValueError, match="selection.probe: 'svm'"):
        probe_accuracy(xtr, ytr, xtr, ytr, 2, probe="svm")


def test_knn_k_is_capped_at_the_subset():
    xtr, ytr = clusters(3, 4, 2, 0.3, seed=0)
    xva, yva = clusters(4, 4, 2, 0.3, seed=1)
    result = knn_accuracy(xtr, ytr, xva, yva, k=20)
    assert result["k"] == 6 and len(result["correct"]) == 8


def test_screen_is_a_json_record_with_every_score():
    xtr, ytr = clusters(20, 8, 3, 1.0, seed=0)
    xva, yva = clusters(10, 8, 3, 1.0, seed=1)
    record = screen(xtr, ytr, xva, yva, 3)
    assert {"accuracy", "low", "high", "n_train", "n_validation", "logme", "knn_accuracy", "C"} <= set(record)
    assert "correct" not in record
    assert json.loads(json.dumps(record)) == record
    noisy = screen(*clusters(20, 8, 3, 4.0, seed=0), *clusters(10, 8, 3, 4.0, seed=1), 3)
    assert noisy["logme"] < record["logme"]


# --- cut and replay --------------------------------------------------------------------------

def record(name: str, accuracy: float, logme: float = 0.0, knn: float = 0.0) -> dict:
    return {"network": name, "accuracy": accuracy, "logme": logme, "knn_accuracy": knn}


def test_cut_ranks_by_score_then_name_and_reports_gaps():
    records = [record("b", 0.8, 1.0), record("a", 0.8, 2.0), record("c", 0.9, 0.5), record("d", 0.5, 3.0),
               record("e", 0.7, float("nan"))]
    decision = cut(records, 0.34, "probe")
    assert decision["ranked"] == ["c", "a", "b", "e", "d"]
    assert decision["kept"] == ["c", "a"] and decision["cut"] == ["b", "e", "d"] and decision["leader"] == "c"
    assert decision["gaps"]["d"] == pytest.approx(0.4) and decision["gaps"]["c"] == 0.0
    by_logme = cut(records, 0.34, "logme")
    assert by_logme["ranked"] == ["d", "a", "b", "c", "e"]  # a missing score ranks last
    assert by_logme["gaps"]["c"] == pytest.approx(2.5)
    assert by_logme["accuracy_gaps"]["c"] == pytest.approx(-0.4)  # better probe accuracy than the leader
    assert cut(records, 1.0, "knn")["ranked"] == ["a", "b", "c", "d", "e"]  # all tied: by name
    json.dumps(decision)


def test_cut_refuses_bad_input():
    with pytest.raises(ValueError, match="selection.rank_by: 'speed'"):
        cut([record("a", 0.5)], 0.5, "speed")
    with pytest.raises(ValueError, match="twice"):
        cut([record("a", 0.5), record("a", 0.6)], 0.5)
    with pytest.raises(ValueError, match="selection.keep"):
        cut([record("a", 0.5)], 0.0)


# Nine candidates: "late" is worst on small subsets and best on the whole training set;
# "early" the opposite; the rest in the order of their number.
def synthetic_accuracy(rung: int, name: str) -> float:
    if name == "late":
        return [0.72, 0.86, 0.99][rung]
    if name == "early":
        return [0.90, 0.78, 0.78][rung]
    return 0.5 + 0.05 * int(name[1:]) + 0.05 * rung  # n0 .. n6: n6 best


CANDIDATES = ["early", "late"] + [f"n{i}" for i in range(7)]


def test_halving_replays_the_procedure():
    calls = []

    def scores_at(rung, name):
        calls.append((rung, name))
        return {"accuracy": synthetic_accuracy(rung, name), "logme": 0.0, "knn_accuracy": 0.0}

    result = halving(scores_at, CANDIDATES, [0.1, 0.3, 1.0], keep=0.34)
    # Rung 0 (9 screened, keep ceil(0.34 * 9) = 4): early .90, n6 .80, n5 .75, late .72; n4 .70 and below cut.
    assert result["rungs"][0]["decision"]["kept"] == ["early", "n6", "n5", "late"]
    # Rung 1 (4 screened, keep ceil(0.34 * 4) = 2): late .86, n6 .85; n5 .80, early .78 cut.
    assert result["rungs"][1]["decision"]["kept"] == ["late", "n6"]
    # Rung 2 at 1.0: screened and ranked, nobody cut: both are finalists; late leads.
    assert result["rungs"][2]["decision"]["cut"] == [] and result["finalists"] == ["late", "n6"]
    assert result["leader"] == "late"
    assert result["eliminated"] == {"n4": 0, "n3": 0, "n2": 0, "n1": 0, "n0": 0, "early": 1, "n5": 1}
    assert [len(r["records"]) for r in result["rungs"]] == [9, 4, 2] and len(calls) == 15
    assert {name for rung, name in calls if rung == 2} == {"late", "n6"}
    json.dumps(result)


def test_halving_without_a_whole_rung_ends_with_the_last_cut():
    def scores_at(rung, name):
        return {"accuracy": synthetic_accuracy(rung, name), "logme": -synthetic_accuracy(rung, name),
                "knn_accuracy": 0.0}

    result = halving(scores_at, CANDIDATES, [0.1, 0.3], keep=0.34)
    assert result["finalists"] == ["late", "n6"] and len(result["rungs"]) == 2
    by_logme = halving(scores_at, CANDIDATES, [0.1, 0.3], keep=0.34, rank_by="logme")
    # LogME here is minus the accuracy: the worst probes go on.
    assert by_logme["rungs"][0]["decision"]["kept"] == ["n0", "n1", "n2", "n3"]
    assert by_logme["finalists"] == ["n0", "n1"]


def test_halving_refuses_repeated_candidates_and_bad_settings():
    def scores_at(rung, name):
        return record(name, 0.5)

    with pytest.raises(ValueError, match="repeat"):
        halving(scores_at, ["a", "a"], [1.0], 0.5)
    with pytest.raises(ValueError, match="selection.rungs"):
        halving(scores_at, ["a", "b"], [0.5, 0.5], 0.5)


# --- cost ------------------------------------------------------------------------------------

def test_cost_with_a_whole_last_rung_counts_the_finalists_once():
    # 9 candidates; rungs of 100, 300 and all 1000 training images; 4 then 2 survive.
    cost = halving_cost(1000, 200, 300, [100, 300, 1000], [9, 4, 2], n_finalists=2)
    screening = 9 * 100 + 4 * (300 - 100) + 9 * 200  # subsets' new images, validation once each
    finalists = 2 * (1000 + 200 + 300)  # the 1.0 rung is their full extraction
    assert cost == {"spent": screening + finalists, "exhaustive": 9 * 1500,
                    "share": (screening + finalists) / (9 * 1500), "screening": screening, "finalists": finalists}


def test_cost_with_a_partial_last_rung_counts_every_rung():
    cost = halving_cost(1000, 200, 300, [100, 300, 600], [9, 4, 2], n_finalists=1)
    assert cost["screening"] == 9 * 100 + 4 * 200 + 2 * 300 + 9 * 200
    assert cost["finalists"] == 1500 and cost["spent"] == 4100 + 1500 and cost["exhaustive"] == 13500


@pytest.mark.parametrize("sizes,survivors,finalists", [
    ([100, 100], [9, 4], 2),  # sizes not increasing
    ([100, 1200], [9, 4], 2),  # more than the training set
    ([100, 300], [4, 9], 2),  # survivors grow
    ([100, 1000], [9, 4], 2),  # a whole last rung screens exactly the finalists
    ([100], [9, 4], 2),  # lengths differ
])
def test_cost_refuses_inconsistent_counts(sizes, survivors, finalists):
    with pytest.raises(ValueError, match="halving_cost"):
        halving_cost(1000, 200, 300, sizes, survivors, finalists)


# --- weighted tau ----------------------------------------------------------------------------

def test_weighted_tau_is_one_for_the_same_order_and_negative_reversed():
    reference = [0.91, 0.85, 0.80, 0.62, 0.55]
    assert weighted_tau([5, 4, 3, 2, 1], reference) == pytest.approx(1.0)
    assert weighted_tau([1, 2, 3, 4, 5], reference) < 0
    # Swapping the top two costs more than swapping the bottom two: the top weighs most.
    assert weighted_tau([4, 5, 3, 2, 1], reference) < weighted_tau([5, 4, 3, 1, 2], reference) < 1


def test_weighted_tau_refuses_mismatched_lists():
    with pytest.raises(ValueError, match="weighted_tau"):
        weighted_tau([1, 2], [1, 2, 3])


def test_drawing_subsets_and_cutting_import_no_torch():
    """The jobs that draw a rung's subset or cut after it import numpy alone (torch: ~1 s a job)."""
    code = ("import sys, numpy as np; from transfer_lab import selection as s; "
            "s.rung_subsets(np.arange(20) % 2, [0.5, 1.0], 0); "
            "s.cut([{'network': 'a', 'accuracy': 0.5, 'logme': 0.0, 'knn_accuracy': 0.5}], 0.5); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
