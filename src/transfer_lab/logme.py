"""LogME: how well frozen features explain the labels, without training a head.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning" (ICML 2021). Each class c is a regression target y = [label == c] (one against
the rest) fitted by Bayesian linear regression on the features F (N x D): a weight prior
w ~ N(0, I / alpha) and noise ~ N(0, 1 / beta). The evidence p(y | F, alpha, beta) has a
closed form; alpha and beta are set to maximise it by MacKay's fixed point updates
(Algorithm 1 of the paper), written on the eigen-decomposition of F^T F so every update
costs O(D), not a matrix inverse. The score is the maximised log evidence divided by N,
averaged over classes: higher means the labels are closer to a linear function of the
features, which is what a head on frozen features can use.

With A = alpha I + beta F^T F (eigenvalues alpha + beta sigma_i, sigma_i those of F^T F)
and m = beta A^-1 F^T y the posterior mean:

    log p(y | F, alpha, beta) = D/2 log alpha + N/2 log beta - 1/2 log|A|
                                - beta/2 ||y - F m||^2 - alpha/2 ||m||^2 - N/2 log 2 pi

    gamma = sum_i beta sigma_i / (alpha + beta sigma_i)
    alpha <- gamma / ||m||^2        beta <- (N - gamma) / ||y - F m||^2

The iteration and its stop are those of the authors' ``LogME._fit_icml`` (thuml/LogME,
the ICML version): at most 11 updates, stopping once alpha / beta moves by less than 1%,
1e-5 added to both denominators, and the evidence evaluated with the last update's alpha
and beta and the m that produced it. So the values equal theirs (tests/test_logme.py
compares) and published LogME numbers stay comparable. Their library's default since
2021, ``_fit_fixed_point``, leaves out the D - rank zero eigenvalues of F^T F from
log|A| when features outnumber images (thuml/LogME issue #23, open): it differs from
the paper there, so it is not what this module reproduces.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-5  # added to ||m||^2 and ||y - F m||^2, as the authors' code does
MAX_UPDATES = 11
RELATIVE_STOP = 0.01  # stop when alpha / beta changes by less than this share
# Eigenvalues of the Gram matrix below this share of the largest are taken as zero
# (directions the features do not span; they still count in log|A| as log alpha).
RANK_TOLERANCE = 1e-12
# Rows converted to float64 at a time when N >= D: the Gram matrix is summed block by
# block, so a 50,000 x 2,048 float32 matrix never has an 800 MB float64 copy.
BLOCK_ROWS = 4096


def _projections(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero eigenvalues sigma (r,) of F^T F, the targets' coordinates z = U^T Y
    (r, C) in an orthonormal basis U of F's column space (F V = U sqrt(sigma)), and each
    target's squared norm outside that space (C,).

    The Gram matrix of the smaller side is decomposed (min(N, D)^2 x max(N, D) work), as
    the authors' ``truncated_svd`` does for N > D: a thin SVD of a 50,000 x 2,048 matrix
    costs several times more than its 2,048 x 2,048 Gram matrix and an eigh. For N >= D,
    z = V^T F^T Y / sqrt(sigma) and the outside part is ||Y||^2 - ||z||^2, so U (N x r) is
    never formed.
    """
    n, d = features.shape
    if n >= d:
        gram, fty = np.zeros((d, d)), np.zeros((d, targets.shape[1]))
        for lo in range(0, n, BLOCK_ROWS):
            block = features[lo:lo + BLOCK_ROWS].astype(np.float64)
            gram += block.T @ block
            fty += block.T @ targets[lo:lo + BLOCK_ROWS]
        sigma, v = np.linalg.eigh(gram)
        keep = sigma > RANK_TOLERANCE * max(float(sigma[-1]), 0.0)
        sigma, v = sigma[keep], v[:, keep]
        z = (v.T @ fty) / np.sqrt(sigma)[:, None]
        outside = np.maximum(np.sum(targets ** 2, axis=0) - np.sum(z ** 2, axis=0), 0.0)
        return sigma, z, outside
    features = features.astype(np.float64)
    sigma, u = np.linalg.eigh(features @ features.T)
    keep = sigma > RANK_TOLERANCE * max(float(sigma[-1]), 0.0)
    sigma, u = sigma[keep], u[:, keep]
    z = u.T @ targets
    return sigma, z, np.sum((targets - u @ z) ** 2, axis=0)


def class_evidence(z: np.ndarray, outside: float, sigma: np.ndarray, n: int, d: int) -> float:
    """The maximised log evidence per image of one target, given its coordinates ``z`` in
    F's column space and squared norm ``outside`` it (:func:`_projections`), the nonzero
    eigenvalues ``sigma`` of F^T F, the number of images ``n`` and the dimension ``d``.

    In F's eigenbasis the posterior mean is m_i = beta s_i z_i / (alpha + beta sigma_i),
    with s_i = sqrt(sigma_i); the residual ||y - F m||^2 is ``outside`` plus
    sum_i (alpha z_i / (alpha + beta sigma_i))^2. Zero eigenvalues add nothing to gamma or
    m and log(alpha) each to log|A|.
    """
    s = np.sqrt(sigma)
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    for _ in range(MAX_UPDATES):
        gamma = float(np.sum(sigma / (sigma + lam)))
        shrink = alpha + beta * sigma
        m = beta * s * z / shrink
        alpha_de = float(np.sum(m * m))
        beta_de = float(outside) + float(np.sum((alpha * z / shrink) ** 2))
        alpha = gamma / (alpha_de + EPSILON)
        beta = (n - gamma) / (beta_de + EPSILON)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < RELATIVE_STOP:
            break
        lam = new_lam
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * np.log(alpha)
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * log_det
                - beta / 2.0 * (beta_de + EPSILON) - alpha / 2.0 * (alpha_de + EPSILON)
                - n / 2.0 * np.log(2 * np.pi))
    return float(evidence / n)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (N, D) for integer ``labels`` (N,): the mean over classes
    0 .. max(labels) of each one-against-the-rest target's maximised log evidence per image.

    Computed in float64 whatever the features' type (float32 Gram matrices lose the small
    eigenvalues the evidence depends on). Raises ValueError on mismatched or empty input.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels) or len(labels) == 0:
        raise ValueError(f"logme needs features (N, D) and labels (N,) with N > 0; got shapes "
                         f"{features.shape} and {labels.shape}")
    n, d = features.shape
    targets = (labels[:, None] == np.arange(int(labels.max()) + 1)[None, :]).astype(np.float64)
    sigma, z, outside = _projections(features, targets)
    return float(np.mean([class_evidence(z[:, c], outside[c], sigma, n, d) for c in range(targets.shape[1])]))
