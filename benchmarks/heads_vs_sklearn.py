"""Head training time against scikit-learn, measured in one run, at equal accuracy.

    python benchmarks/heads_vs_sklearn.py                          # 40,000 x 2048, 10 classes, CPU
    python benchmarks/heads_vs_sklearn.py --device cuda            # the same head on a GPU
    python benchmarks/heads_vs_sklearn.py --n 2000 --dim 256       # CI-sized

Features are synthetic but shaped like a pooled CNN's: non-negative (after a ReLU),
correlated through a low-dimensional class structure, float32. Both sides get the same
standardised features (the head's own standardisation) and the same C, so they minimise
the same objective; accuracy is scored on a held-out quarter.

  sklearn   LogisticRegression(solver="lbfgs", C=C, tol=--tol), scikit-learn's defaults otherwise
  logreg    transfer_lab.heads.fit_logreg: full-batch L-BFGS in torch, float32, on --device,
            at the head's default tol (1e-3) and at scikit-learn's (1e-4)

Prints the times, the accuracies, the speed-up of the head's default (target >= 5x on
CPU) and its accuracy difference (target within 0.5 point).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch


def synthetic_features(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class structure in a 64-d latent space, lifted to ``dim`` and passed through a ReLU."""
    rng = np.random.default_rng(seed)
    latent = 64
    centres = rng.normal(size=(n_classes, latent)) * 0.4  # ~90% accuracy: not trivially separable
    lift = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    labels = rng.integers(0, n_classes, size=n)
    z = centres[labels] + rng.normal(size=(n, latent))
    x = np.maximum(z @ lift + 0.3 * rng.normal(size=(n, dim)), 0.0)
    return x.astype(np.float32), labels.astype(np.int64)


def parse_run_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Add what every benchmark here takes (--device, --threads, --seed), parse, and set the
    torch threads."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40_000, help="training images")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--tol", type=float, default=1e-4, help="scikit-learn's tol (its default)")
    parser.add_argument("--head-tol", type=float, default=1e-3, help="the logreg head's tol (its default)")
    parser.add_argument("--max-iter", type=int, default=300, help="both: L-BFGS iterations at most")
    args = parse_run_arguments(parser)

    from sklearn.linear_model import LogisticRegression

    from transfer_lab.heads import fit_logreg, standardisation

    x, y = synthetic_features(args.n + args.n // 4, args.dim, args.classes, args.seed)
    xtr, ytr, xte, yte = x[: args.n], y[: args.n], x[args.n:], y[args.n:]
    mean, std = standardisation(xtr)
    xtr, xte = ((xtr - mean) / std).astype(np.float32), ((xte - mean) / std).astype(np.float32)
    print(f"features {xtr.shape[0]:,} x {xtr.shape[1]} float32, {args.classes} classes, C={args.C}, "
          f"torch threads {torch.get_num_threads()}, device {args.device}")

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk = LogisticRegression(C=args.C, solver="lbfgs", tol=args.tol, max_iter=args.max_iter).fit(xtr, ytr)
    sk_seconds = time.perf_counter() - start
    sk_acc = float((sk.predict(xte) == yte).mean())
    converged = not any("converge" in str(w.message).lower() for w in caught)
    print(f"sklearn    {sk_seconds:8.2f} s  test accuracy {100 * sk_acc:.2f}%  iterations {int(sk.n_iter_[0])}"
          f"{'' if converged else ' (did not converge)'}")

    device = torch.device(args.device)
    xt, yt = torch.from_numpy(xtr).to(device), torch.from_numpy(ytr).to(device)
    fit_logreg(xt[:256], yt[:256], args.classes, args.C, 5)  # warm-up: kernels, allocator
    results = {}
    for label, tol in (("logreg", args.head_tol), ("logreg@sk", args.tol)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        evaluations: list[float] = []
        start = time.perf_counter()
        head = fit_logreg(xt, yt, args.classes, args.C, args.max_iter, tol=tol, history=evaluations)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            pred = head(torch.from_numpy(xte).to(device)).argmax(1).cpu().numpy()
        results[label] = (seconds, float((pred == yte).mean()))
        print(f"{label:<10} {seconds:8.2f} s  test accuracy {100 * results[label][1]:.2f}%  "
              f"evaluations {len(evaluations)}  (tol {tol:g})")

    ours_seconds, ours_acc = results["logreg"]
    print(f"ratio sklearn/logreg time   {sk_seconds / ours_seconds:.2f}x (target >= 5 on CPU)")
    print(f"ratio sklearn/logreg@sk     {sk_seconds / results['logreg@sk'][0]:.2f}x (same stopping rule)")
    print(f"accuracy difference         {100 * (ours_acc - sk_acc):+.2f} points (target within 0.5)")


if __name__ == "__main__":
    main()
