"""Choosing among many networks by successive halving on nested subsets of the training images.

At rung k every surviving candidate gets features for a stratified, seeded subset of the
training split holding a share ``fractions[k]`` of each class (rung k's subset contains
rung k-1's, so each rung only extracts the new images), plus the whole validation split
once. A screening probe is trained on the subset and scored on validation (never test);
LogME and the kNN accuracy are reported beside it; the best share ``keep`` of the
candidates goes on, ranked by the probe or by one of the cheap scores. A rung at 1.0 is
screened but not cut: its candidates are the finalists, which get full features, heads
and comparison rows as ordinary networks.

Everything here is numpy in, plain dicts, lists and floats out (what the rule scripts
write as JSON); nothing knows about Snakemake. torch is imported only by the probes, so
the jobs that draw subsets or cut import numpy alone. :func:`halving` replays the whole
procedure from a function giving a candidate's record at a rung, which is how the
benchmark measures it on features already extracted for every candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np

from .logme import logme
from .uncertainty import wilson_interval

PROBES = ("logreg", "knn")
# rank_by -> the record's key it ranks by (higher is better for each).
RANK_KEYS = {"probe": "accuracy", "logme": "logme", "knn": "knn_accuracy"}
# The logreg probe's fixed inverse regularisation (scikit-learn's C, on standardised
# features): no sweep, because a C chosen on validation and scored on validation flatters
# each candidate by its luckiest C, and a sweep on a split of a small subset is noisy and
# costs one fit per C. One C for every candidate ranks them under the same rules; the
# finalists' heads sweep C as usual. Measured on the quickstart digits (EfficientNet-Lite0/1/2
# and a random Lite0, rungs of 110, 342 and 1151 images, 287 validation images): C in
# {0.01, 0.1, 1} moved a probe's accuracy by at most 1.8 points; 0.1 was best or tied in 7
# of the 12 cases.
PROBE_C = 0.1
PROBE_MAX_ITER = 300
PROBE_TOL = 1e-3
KNN_K = 20
# Products of a fraction and a count are rounded to this many decimals before floor or
# ceil: 0.29 * 100 is 28.999999999999996 in floating point, and must give 29 images.
_DECIMALS = 9


def check_rungs(fractions: Sequence[float]) -> list[float]:
    """The rungs as floats, or ValueError naming ``selection.rungs``: the list must be
    non-empty, each fraction in (0, 1], strictly increasing (each rung adds images)."""
    values = list(fractions) if isinstance(fractions, (list, tuple, np.ndarray)) else None
    if not values:
        raise ValueError(f"selection.rungs: {fractions!r} gives no rung; give increasing fractions of the "
                         "training images, e.g. [0.1, 0.3, 1.0]")
    values = [float(f) for f in values]
    outside = [f for f in values if not 0.0 < f <= 1.0]
    if outside:
        raise ValueError(f"selection.rungs: {', '.join(f'{f:g}' for f in outside)} is not a fraction of the "
                         f"training images in (0, 1]; got {values}")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"selection.rungs: {values} must increase strictly (each rung adds images to the "
                         "last), e.g. [0.1, 0.3, 1.0]")
    return values


def kept_count(n_candidates: int, keep: float) -> int:
    """How many of ``n_candidates`` a cut keeps: ceil(keep * n), at least 1 for any keep > 0
    (so the only share that leaves nobody is keep <= 0, which :func:`check_keep` refuses)."""
    return max(1, math.ceil(round(keep * n_candidates, _DECIMALS)))


def check_keep(keep: float, n_candidates: int | None = None) -> float:
    """``keep`` as a float, or ValueError naming ``selection.keep``: a share in (0, 1].

    A share above 0 always keeps ceil(keep * n) >= 1 candidates (:func:`kept_count`);
    ``n_candidates``, when given, must be at least 1.
    """
    keep = float(keep)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"selection.keep: {keep:g} is not a share of the candidates in (0, 1]"
                         f"{' (it would keep nobody)' if keep <= 0 else ''}; e.g. 0.34 keeps a third per rung")
    if n_candidates is not None and n_candidates < 1:
        raise ValueError("selection: there are no candidates to select from; configure networks or zoo")
    return keep


def _count(fraction: float, n: int) -> int:
    """floor(fraction * n), immune to products like 0.29 * 100 = 28.999999999999996."""
    return n if fraction >= 1.0 else math.floor(round(fraction * n, _DECIMALS))


def _smallest_fraction(n: int) -> str:
    """The smallest fraction, rounded up to two significant digits, that gives a class of
    ``n`` images one image (as a user would write it in the config)."""
    exact = 1.0 / n
    scale = 10.0 ** (math.floor(math.log10(exact)) - 1)
    return f"{math.ceil(round(exact / scale, _DECIMALS)) * scale:.2g}"


def rung_subsets(labels: np.ndarray, fractions: Sequence[float], seed: int,
                 class_names: Sequence[str] | None = None, dataset: str | None = None) -> list[np.ndarray]:
    """For each rung, the sorted indices (int64) of its training images.

    Per class (in label order), one permutation of the class's rows drawn from
    ``np.random.default_rng(seed)`` (the same on every machine); rung k takes the first
    floor(fractions[k] * n_c) of them, so every rung holds each class in proportion and
    contains the rungs before it. A class that a rung would leave without an image is
    refused, naming the smallest fraction that gives every class one (and ``dataset``,
    the class by its name in ``class_names``, where given).
    """
    fractions = check_rungs(fractions)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    orders = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for f in fractions:
        empty = [(n, c) for c, n in zip(classes, sizes, strict=True) if _count(f, int(n)) == 0]
        if empty:
            n, c = min(empty)
            name = class_names[int(c)] if class_names is not None else str(c)
            where = f"dataset '{dataset}'" if dataset else "this dataset"
            raise ValueError(f"selection.rungs: {f:g} of the {len(labels)} training images of {where} gives "
                             f"class '{name}' ({n} image{'s' if n != 1 else ''}) no image; the smallest rung must keep at least one image "
                             f"per class: at least {_smallest_fraction(int(sizes.min()))}")
    return [np.sort(np.concatenate([order[:_count(f, len(order))] for order in orders])).astype(np.int64)
            for f in fractions]


def _n_classes(*labels: np.ndarray) -> int:
    return int(max(int(np.max(y)) for y in labels)) + 1


def knn_accuracy(train_f: np.ndarray, train_y: np.ndarray, val_f: np.ndarray, val_y: np.ndarray,
                 k: int = KNN_K) -> dict:
    """Validation accuracy of the kNN probe (:mod:`transfer_lab.knn`: cosine similarity,
    votes weighted by exp(similarity / 0.07)) with a fixed ``k``, capped at the training
    subset's size; k is not chosen on validation, which would flatter the score.

    Returns {"accuracy", "k" (the k used), "correct": a bool per validation image}.
    """
    import torch
    from torch.nn import functional as F

    from .knn import knn_votes

    k_used = min(int(k), len(train_f))
    bank = F.normalize(torch.from_numpy(np.asarray(train_f, dtype=np.float32)), dim=1)
    votes = knn_votes(torch.from_numpy(np.asarray(val_f, dtype=np.float32)), bank,
                      torch.from_numpy(np.asarray(train_y)).long(), _n_classes(train_y, val_y), [k_used])[k_used]
    correct = (votes.argmax(1).numpy() == np.asarray(val_y))
    return {"accuracy": float(correct.mean()), "k": k_used, "correct": correct.tolist()}


def _logreg_correct(train_f: np.ndarray, train_y: np.ndarray, val_f: np.ndarray, val_y: np.ndarray,
                    n_classes: int, C: float) -> np.ndarray:
    """Per validation image, whether the logreg probe (the logreg head's fit, at a fixed C,
    on features standardised with the training subset's statistics) classifies it right."""
    import torch

    from .heads import fit_logreg, standardisation, standardise_in_place

    train_f = np.ascontiguousarray(train_f, dtype=np.float32)
    mean, std = standardisation(train_f)
    x = torch.from_numpy(standardise_in_place(train_f.copy(), mean, std))
    xv = torch.from_numpy(standardise_in_place(np.array(val_f, dtype=np.float32), mean, std))
    head = fit_logreg(x, torch.from_numpy(np.asarray(train_y)).long(), n_classes, C, PROBE_MAX_ITER, PROBE_TOL)
    with torch.no_grad():
        return head(xv).argmax(1).numpy() == np.asarray(val_y)


def probe_accuracy(train_f: np.ndarray, train_y: np.ndarray, val_f: np.ndarray, val_y: np.ndarray,
                   n_classes: int, probe: str = "logreg", seed: int = 0, C: float = PROBE_C,
                   k: int = KNN_K) -> dict:
    """The screening probe trained on a rung's subset and scored on validation.

    ``logreg``: L2-regularised multinomial logistic regression (:func:`heads.fit_logreg`,
    deterministic L-BFGS from zeros) at the fixed ``C`` (:data:`PROBE_C`, why there);
    ``knn``: :func:`knn_accuracy` at a fixed ``k``. ``seed`` is accepted for probes that
    draw random numbers; neither does. Returns {"probe", "accuracy", "low", "high" (95%
    Wilson interval), "n_train", "n_validation", "correct" (a bool per validation image)}
    and the probe's setting ("C" or "k").
    """
    if probe not in PROBES:
        raise ValueError(f"selection.probe: {probe!r} is not one of {', '.join(PROBES)}")
    if probe == "knn":
        result = knn_accuracy(train_f, train_y, val_f, val_y, k)
        correct, setting = np.asarray(result["correct"]), {"k": result["k"]}
    else:
        correct, setting = _logreg_correct(train_f, train_y, val_f, val_y, n_classes, C), {"C": float(C)}
    low, high = wilson_interval(float(correct.sum()), len(correct))
    return {"probe": probe, **setting, "accuracy": float(correct.mean()), "low": low, "high": high,
            "n_train": int(len(train_f)), "n_validation": int(len(val_f)), "correct": correct.tolist()}


def screen(train_f: np.ndarray, train_y: np.ndarray, val_f: np.ndarray, val_y: np.ndarray, n_classes: int,
           probe: str = "logreg", k: int = KNN_K, C: float = PROBE_C) -> dict:
    """Everything a rung record holds for one candidate: the probe's accuracy and interval
    (:func:`probe_accuracy`, without the per-image list), LogME of the subset's features
    (:func:`transfer_lab.logme.logme`) and the kNN accuracy. Plain floats and ints."""
    result = probe_accuracy(train_f, train_y, val_f, val_y, n_classes, probe, C=C, k=k)
    result.pop("correct")
    knn = result["accuracy"] if probe == "knn" else knn_accuracy(train_f, train_y, val_f, val_y, k)["accuracy"]
    return {**result, "logme": logme(train_f, train_y), "knn_accuracy": knn}


def _rank_key(rank_by: str) -> str:
    if rank_by not in RANK_KEYS:
        raise ValueError(f"selection.rank_by: {rank_by!r} is not one of {', '.join(RANK_KEYS)}")
    return RANK_KEYS[rank_by]


def rank(records: list[dict], rank_by: str = "probe") -> list[str]:
    """The networks of ``records``, best first by the ``rank_by`` score; equal scores in
    the order of their names and missing (NaN) scores last, so the order is total."""
    key = _rank_key(rank_by)
    names = [r["network"] for r in records]
    if len(set(names)) != len(names):
        raise ValueError(f"selection: a network appears twice among the records: {sorted(names)}")

    def order(r: dict) -> tuple:
        score = float(r[key])
        return (math.isnan(score), -score if not math.isnan(score) else 0.0, r["network"])

    return [r["network"] for r in sorted(records, key=order)]


def cut(records: list[dict], keep: float, rank_by: str = "probe") -> dict:
    """The cut after a rung: ``records`` (one per candidate, each with "network",
    "accuracy", "logme", "knn_accuracy") ranked by ``rank_by`` (:func:`rank`) and the
    first :func:`kept_count` kept.

    Returns {"rank_by", "ranked", "kept", "cut", "leader", "gaps": {network: the leader's
    score minus its own, in the rank_by score}, "accuracy_gaps": {network: the leader's
    probe accuracy minus its own, as a share (0.012 = 1.2 points); negative where a
    network ranked below the leader by LogME or kNN has the better probe accuracy}}.
    """
    if not records:
        raise ValueError("selection: no candidates at this rung")
    keep = check_keep(keep, len(records))
    ranked = rank(records, rank_by)
    key, by_name = RANK_KEYS[rank_by], {r["network"]: r for r in records}
    leader = by_name[ranked[0]]
    n = kept_count(len(ranked), keep)
    return {"rank_by": rank_by, "ranked": ranked, "kept": ranked[:n], "cut": ranked[n:], "leader": ranked[0],
            "gaps": {name: float(leader[key]) - float(by_name[name][key]) for name in ranked},
            "accuracy_gaps": {name: float(leader["accuracy"]) - float(by_name[name]["accuracy"]) for name in ranked}}


def halving_cost(n_train: int, n_validation: int, n_test: int, rung_sizes: list[int], survivors: list[int],
                 n_finalists: int) -> dict:
    """Forward passes (images through a network) spent by halving, against trying every candidate.

    Convention, as the workflow spends them: rung k extracts only the images its subset
    adds to rung k-1's, for each of its ``survivors[k]`` candidates; every screened
    candidate extracts validation once; each finalist then gets full features of train,
    validation and test (the comparison needs them), screening features not reused. A
    last rung of the whole training set (``rung_sizes[-1] == n_train``) IS the finalists'
    full extraction, so its own screening term is not counted again (its candidates must
    be the finalists). Exhaustive: every candidate's full features of the three splits.

    Returns {"spent", "exhaustive", "share" (spent / exhaustive), "screening" (the rungs'
    subsets and validation), "finalists" (their full features)}.
    """
    if len(rung_sizes) != len(survivors) or not rung_sizes:
        raise ValueError(f"halving_cost: {len(rung_sizes)} rung sizes and {len(survivors)} survivor counts")
    if any(b <= a for a, b in pairwise(rung_sizes)) or rung_sizes[0] < 1 or rung_sizes[-1] > n_train:
        raise ValueError(f"halving_cost: rung sizes {rung_sizes} must increase within 1..{n_train}")
    if any(b > a for a, b in pairwise(survivors)) or n_finalists > survivors[-1]:
        raise ValueError(f"halving_cost: survivors {survivors} and {n_finalists} finalists must not grow")
    whole = rung_sizes[-1] == n_train
    if whole and n_finalists != survivors[-1]:
        raise ValueError(f"halving_cost: a last rung of the whole training set screens the finalists; "
                         f"{survivors[-1]} screened there, {n_finalists} finalists")
    sizes, counts = [0, *map(int, rung_sizes)], [int(s) for s in survivors]
    screened = len(counts) - 1 if whole else len(counts)
    screening = sum(counts[k] * (sizes[k + 1] - sizes[k]) for k in range(screened)) + counts[0] * int(n_validation)
    everything = int(n_train) + int(n_validation) + int(n_test)
    finalists = int(n_finalists) * everything
    exhaustive = counts[0] * everything
    return {"spent": screening + finalists, "exhaustive": exhaustive,
            "share": (screening + finalists) / exhaustive, "screening": screening, "finalists": finalists}


def halving(scores_at: Callable[[int, str], dict], candidates: list[str], fractions: Sequence[float],
            keep: float, rank_by: str = "probe") -> dict:
    """Replay successive halving: ``scores_at(k, network)`` gives the network's record at
    rung k (:func:`screen`'s dict); every rung but one at 1.0 is followed by :func:`cut`.

    A rung at 1.0 is screened (the selection table shows its numbers) and ranked, but cuts
    nobody: its candidates are the finalists. If the last rung is below 1.0, the last
    cut's survivors are the finalists. Returns {"rungs": [{"rung", "fraction", "records",
    "decision" (cut's dict; at a 1.0 rung everyone kept)}], "finalists", "leader" (the
    last rung's leader), "eliminated": {network: the rung after which it was cut}}.
    """
    fractions = check_rungs(fractions)
    keep = check_keep(keep, len(candidates))
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"selection: candidates repeat a name: {sorted(candidates)}")
    alive, rungs, eliminated = list(candidates), [], {}
    for k, fraction in enumerate(fractions):
        records = [{**scores_at(k, name), "network": name} for name in alive]
        decision = cut(records, 1.0 if fraction >= 1.0 else keep, rank_by)
        eliminated.update({name: k for name in decision["cut"]})
        rungs.append({"rung": k, "fraction": fraction, "records": records, "decision": decision})
        alive = decision["kept"]
    return {"rungs": rungs, "finalists": alive, "leader": rungs[-1]["decision"]["leader"], "eliminated": eliminated}


def weighted_tau(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Weighted Kendall tau (scipy's ``weightedtau``, hyperbolic weigher, higher = better)
    between a ranking's scores and the reference scores (the exhaustive answer) of the same
    candidates: agreement near the top weighs most, as transferability papers report it."""
    from scipy.stats import weightedtau

    if len(scores) != len(reference) or len(scores) < 2:
        raise ValueError(f"weighted_tau needs two equally long lists of at least 2 scores; got "
                         f"{len(scores)} and {len(reference)}")
    return float(weightedtau(np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)).statistic)
