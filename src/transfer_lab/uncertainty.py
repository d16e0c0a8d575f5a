"""How sure an accuracy is, and whether two classifiers really differ.

Everything here works on *correctness matrices*: bool (repeats, images), True where a
repeat of a classifier got an image right (:func:`transfer_lab.evaluation.correct_matrix`).

- :func:`summarise_accuracy`: mean and sd over repeats, and a percentile bootstrap
  interval of the mean that resamples test images *and* repeats, so it holds both the
  test set's sampling error and the spread between training runs (seeds, subsets). With
  one repeat it is the plain percentile bootstrap over images. Where every image was
  right (or every one wrong) resampling cannot move the estimate; the Wilson score
  interval is used there instead.
- :func:`paired_difference`: the same bootstrap for the difference between two
  classifiers scored on the same images, resampling the *same* images for both: the
  shared difficulty of an image cancels, which is what makes a paired interval narrower
  than two separate ones.
- :func:`mcnemar_exact`: McNemar's exact test on the images where exactly one of two
  classifiers is right (a two-sided binomial test with p = 1/2 on the discordant pairs).
- :func:`verdict`: both together, in words.
- :func:`holm`: Holm's step-down adjustment of several p-values, for a dataset whose best
  classifier is compared with more than one other (:func:`transfer_lab.ranking.add_verdicts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Bool elements of (repeats, resamples, images) drawn at once: bounds the bootstrap's memory.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Bootstrap:
    """Settings of every interval: resamples, confidence level, seed of the resampling."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


BOOTSTRAP = Bootstrap()  # the defaults: 1,000 resamples, 95%, seed 0


@dataclass(frozen=True)
class AccuracySummary:
    mean: float   # over repeats, each the fraction of images right
    sd: float     # over repeats (ddof 1); NaN for a single repeat
    low: float
    high: float
    repeats: int


@dataclass(frozen=True)
class Difference:
    mean: float   # accuracy of the first minus the second, each averaged over its repeats
    low: float
    high: float


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: sensible at 0 and 1, where the
    normal approximation and the bootstrap collapse to a point."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _chunks(shape: tuple[int, int], resamples: int) -> list[int]:
    """Resamples per chunk so that (repeats x chunk x images) stays under the element budget."""
    repeats, images = shape
    size = max(1, _CHUNK_ELEMENTS // max(1, repeats * images))
    return [min(size, resamples - start) for start in range(0, resamples, size)]


def _resampled_means(correct: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Accuracy averaged over a resample of repeats, on each resample of images.

    ``images`` (resamples, n) are image indices; each resample also draws as many
    repeats as there are, with replacement (nothing to draw with one repeat)."""
    per_repeat = correct[:, images].mean(axis=2)  # (repeats, resamples)
    n_repeats = correct.shape[0]
    if n_repeats == 1:
        return per_repeat[0]
    drawn = rng.integers(0, n_repeats, size=(images.shape[0], n_repeats))
    return np.take_along_axis(per_repeat.T, drawn, axis=1).mean(axis=1)


def _check(correct: np.ndarray) -> np.ndarray:
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim == 1:
        correct = correct[None, :]
    if correct.ndim != 2:
        raise ValueError(f"expected a (repeats, images) correctness matrix, got shape {correct.shape}")
    return correct


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarise_accuracy(correct: np.ndarray, bootstrap: Bootstrap = BOOTSTRAP) -> AccuracySummary:
    """Mean and sd of the accuracy over repeats, and its bootstrap interval (see the module)."""
    correct = _check(correct)
    n_repeats, n_images = correct.shape
    if n_repeats == 0 or n_images == 0:
        nan = float("nan")
        return AccuracySummary(nan, nan, nan, nan, n_repeats)
    accuracies = correct.mean(axis=1)
    sd = float(accuracies.std(ddof=1)) if n_repeats > 1 else float("nan")
    mean = float(accuracies.mean())
    if correct.all() or not correct.any():
        low, high = wilson_interval(mean * n_images, n_images, bootstrap.confidence)
        return AccuracySummary(mean, sd, low, high, n_repeats)
    rng = np.random.default_rng(bootstrap.seed)
    means = np.concatenate([
        _resampled_means(correct, rng.integers(0, n_images, size=(size, n_images)), rng)
        for size in _chunks(correct.shape, bootstrap.resamples)
    ])
    low, high = _percentiles(means, bootstrap.alpha)
    return AccuracySummary(mean, sd, low, high, n_repeats)


def paired_difference(first: np.ndarray, second: np.ndarray, bootstrap: Bootstrap = BOOTSTRAP) -> Difference:
    """Accuracy of ``first`` minus ``second`` on the same images, with the paired bootstrap
    interval: each resample draws one set of images for both, and repeats for each."""
    first, second = _check(first), _check(second)
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"a paired comparison needs the same images: {first.shape[1]} against {second.shape[1]}")
    n_images = first.shape[1]
    mean = float(first.mean(axis=1).mean() - second.mean(axis=1).mean()) if n_images else float("nan")
    if n_images == 0 or not len(first) or not len(second):
        return Difference(mean, float("nan"), float("nan"))
    rng = np.random.default_rng(bootstrap.seed)
    shape = (max(len(first), len(second)), n_images)
    differences = []
    for size in _chunks(shape, bootstrap.resamples):
        images = rng.integers(0, n_images, size=(size, n_images))
        differences.append(_resampled_means(first, images, rng) - _resampled_means(second, images, rng))
    low, high = _percentiles(np.concatenate(differences), bootstrap.alpha)
    return Difference(mean, low, high)


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided p-value of McNemar's exact test: under "equally accurate", each image that
    exactly one of the two gets right is a fair coin flip between them.

    ``first`` and ``second`` are bool per image. Exact integer arithmetic, so it holds for
    any number of discordant images (no normal approximation, no underflow).
    """
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"a paired test needs the same images: {first.shape} against {second.shape}")
    only_first = int(np.sum(first & ~second))
    only_second = int(np.sum(~first & second))
    n = only_first + only_second
    smaller = min(only_first, only_second)
    term, tail = 1, 1  # C(n, 0); the running sum of C(n, i) for i <= smaller
    for i in range(smaller):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Verdict:
    """``first`` against ``second`` on the same test images: accuracy difference
    (first minus second) with its paired interval, McNemar's p, and the outcome for
    ``first``: ``better``, ``worse`` or ``tied``."""

    first: str
    second: str
    difference: Difference
    p: float
    outcome: str
    sentence: str


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _points(v: float) -> str:
    return f"{100 * v + 0.0:.1f}"  # + 0.0: no "-0.0"


def sentence(first: str, second: str, difference: Difference, p: float, outcome: str) -> str:
    """The verdict in words; ``outcome`` is ``first``'s: ``better``, ``worse`` or ``tied``."""
    d = difference
    if outcome == "better":
        return (f"{first} beats {second} by {_points(d.mean)} points [{_points(d.low)}, {_points(d.high)}] "
                f"({format_p(p)})")
    if outcome == "worse":
        return (f"{second} beats {first} by {_points(-d.mean)} points [{_points(-d.high)}, {_points(-d.low)}] "
                f"({format_p(p)})")
    return (f"{first} and {second} are tied (difference {_points(d.mean)} "
            f"[{_points(d.low)}, {_points(d.high)}], {format_p(p)})")


def verdict(first: str, second: str, correct_first: np.ndarray, correct_second: np.ndarray,
            bootstrap: Bootstrap = BOOTSTRAP) -> Verdict:
    """Whether ``first`` beats ``second``, loses to it or is tied with it.

    One beats the other when the paired interval of the difference excludes 0 *and*
    McNemar's test rejects equal accuracy at the same level (p < 1 - confidence); anything
    less is a tie. The interval pools every repeat; McNemar's test compares the first
    repeats (the head files that predict and export apply), since it needs one
    prediction per image.
    """
    correct_first, correct_second = _check(correct_first), _check(correct_second)
    d = paired_difference(correct_first, correct_second, bootstrap)
    p = mcnemar_exact(correct_first[0], correct_second[0])
    result = outcome(d, p, bootstrap.alpha)
    return Verdict(first, second, d, p, result, sentence(first, second, d, p, result))


def outcome(difference: Difference, p: float, alpha: float) -> str:
    """``better``, ``worse`` or ``tied`` for the first of a pair: a win needs both p < alpha
    and the paired interval on one side of 0 (see :func:`verdict`). Kept apart so that a
    p-value adjusted for several comparisons (:func:`holm`) decides with the same rule."""
    significant = p < alpha
    if significant and difference.low > 0:
        return "better"
    if significant and difference.high < 0:
        return "worse"
    return "tied"


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order given.

    With m p-values sorted ascending, the i-th smallest (i from 1) becomes
    max over j <= i of min(1, (m - j + 1) p_(j)): monotone in the raw p, capped at 1, and
    rejecting "adjusted p < alpha" keeps the chance of any false "better" or "worse" among
    the m comparisons at most alpha, without assuming them independent (a dataset's
    comparisons share its best classifier, so they are not). Equal raw p-values get equal
    adjusted ones whatever their order; NaN (no test) stays NaN and is not counted in m.
    With one p-value the adjustment is the identity.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    if not len(finite):
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(1.0, stepped)
    return adjusted
