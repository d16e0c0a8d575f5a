"""LogME (transfer_lab.logme) against the authors' implementation and the Gaussian evidence it maximises."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from transfer_lab import logme as logme_module
from transfer_lab.logme import logme


def synthetic(seed: int, n: int, d: int, classes: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels in a seeded order; features = unit noise + ``signal`` x a class centre."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    centres = rng.normal(size=(classes, d))
    f = rng.normal(size=(n, d)) + signal * centres[y]
    return f.astype(np.float32), y


# Computed once with the authors' LogME.py (github.com/thuml/LogME at commit
# 56551ca94a3295bcc37e6a01b1291911af985f07), numba's njit replaced by the identity, as
# LogME()._fit_icml(f.astype(np.float64), y) on synthetic(*setting): the ICML 2021 version.
# (Their default, _fit_fixed_point, gives the same to ~3e-4 for N > D but 2.536 for the
# D > N case, where it leaves the zero eigenvalues out of log|A|: their issue #23.)
AUTHORS = [
    ((0, 200, 32, 3, 0.0), -0.8675156861915863),  # no class signal
    ((0, 200, 32, 5, 1.0), 0.23777500107918),
    ((1, 200, 300, 4, 0.5), 0.2938394791442894),  # more features than images
    ((2, 150, 64, 3, 2.0), 0.9655890132321305),
]


@pytest.mark.parametrize("setting,expected", AUTHORS)
def test_logme_equals_the_authors_implementation(setting, expected):
    assert logme(*synthetic(*setting)) == pytest.approx(expected, rel=1e-6)


def test_logme_on_rank_deficient_features_equals_the_authors_implementation():
    """40 columns of rank 20: the zero eigenvalues of F^T F count in log|A| (value as above)."""
    f, y = synthetic(5, 200, 20, 3, 1.0)
    assert logme(np.concatenate([f, 2 * f], axis=1), y) == pytest.approx(0.09196025565055038, rel=1e-6)


def test_logme_sums_the_gram_matrix_block_by_block(monkeypatch):
    f, y = synthetic(2, 150, 64, 3, 2.0)
    whole = logme(f, y)
    monkeypatch.setattr(logme_module, "BLOCK_ROWS", 7)
    assert logme(f, y) == pytest.approx(whole, rel=1e-9)


def test_logme_is_the_maximised_gaussian_evidence():
    """Per class, y ~ N(0, I / beta + F F^T / alpha) (the weights integrated out): LogME is
    that log density, maximised over alpha and beta, per image and averaged over classes.
    Maximised here by a general optimiser on the density itself, not the fixed point."""
    f, y = synthetic(3, 60, 8, 3, 1.0)
    f = f.astype(np.float64)

    def negative(log_ab: np.ndarray, target: np.ndarray) -> float:
        alpha, beta = np.exp(log_ab)
        cov = np.eye(len(target)) / beta + f @ f.T / alpha
        return -multivariate_normal(mean=np.zeros(len(target)), cov=cov).logpdf(target)

    best = [-minimize(negative, [0.0, 0.0], args=((y == c).astype(float),), method="Nelder-Mead",
                      options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 2000}).fun / len(y) for c in range(3)]
    # The fixed point stops once alpha / beta moves by less than 1%: close to the maximum, not past it.
    assert logme(f, y) == pytest.approx(np.mean(best), abs=1e-3)
    assert logme(f, y) <= np.mean(best) + 1e-9


def test_logme_ignores_the_order_of_images():
    f, y = synthetic(0, 200, 32, 5, 1.0)
    order = np.random.default_rng(1).permutation(len(y))
    assert logme(f[order], y[order]) == pytest.approx(logme(f, y), rel=1e-9)


@pytest.mark.parametrize("d", [32, 300])
def test_more_informative_features_score_higher(d):
    scores = [logme(*synthetic(4, 200, d, 4, signal)) for signal in (0.0, 0.5, 1.0, 3.0)]
    assert scores == sorted(scores) and scores[0] < scores[-1] - 0.5


def test_logme_refuses_mismatched_input():
    with pytest.raises(ValueError, match="features"):
        logme(np.zeros((5, 3)), np.zeros(4, dtype=int))
