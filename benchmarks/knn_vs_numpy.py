"""The kNN probe against a plain NumPy implementation of the same rule, measured in one run.

    python benchmarks/knn_vs_numpy.py                                   # 40,000 x 2048 train, 10,000 test, CPU
    python benchmarks/knn_vs_numpy.py --device cuda                     # the probe on a GPU
    python benchmarks/knn_vs_numpy.py --n-train 2000 --n-test 500 --dim 128 --threads 2   # CI-sized

Features are synthetic but shaped like a pooled CNN's (benchmarks/heads_vs_sklearn.py
makes them). Both sides classify every test image at every k of the list (DINO's
10, 20, 100, 200) with the same rule: cosine similarity, the k most similar training
images voting exp(similarity / 0.07) for their class.

  knn     transfer_lab.knn: torch on --device; the top max(k) neighbours found once per
          chunk of queries, so similarities never exceed chunk x training set
  numpy   the rule in NumPy (its BLAS for the products, argpartition for the neighbours),
          over the same chunks, so that memory does not decide the race

Prints both times, their ratio, the memory one chunk of similarities takes (against the
whole test x train matrix), and how often the two agree on the predicted class: on every
test image, and on those clear of a near-tie, where rounding cannot decide the class (the
k-th and (k+1)-th similarities more than 1e-5 apart, the two largest votes more than
1e-4 apart). The two round their float32 products differently, so at a near-tie either
may let in the other neighbour, or pick the other class; clear of one, they must agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from heads_vs_sklearn import parse_run_arguments, synthetic_features

SIMILARITY_TIE = 1e-5  # float32 similarities of unit vectors round by ~1e-7
VOTE_TIE = 1e-4


def numpy_votes(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray, n_classes: int,
                ks: list[int], temperature: float, rows: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The same rule in NumPy, float32, chunk by chunk. Also returns, per k, each query's
    k-th similarity minus its (k+1)-th (infinite where k is the whole training set)."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    gaps: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    k_max = max(ks)
    ranked = min(k_max + 1, len(train))  # one more, for the gap at k_max
    for start in range(0, len(queries), rows):
        q = queries[start:start + rows]
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        similarity = q @ train.T
        nearest = np.argpartition(-similarity, ranked - 1, axis=1)[:, :ranked]
        top = np.take_along_axis(similarity, nearest, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        nearest, top = np.take_along_axis(nearest, order, axis=1), np.take_along_axis(top, order, axis=1)
        weights = np.exp(top / temperature)
        for k in ks:
            votes = np.zeros((len(q), n_classes), np.float32)
            np.add.at(votes, (np.arange(len(q))[:, None], train_labels[nearest[:, :k]]), weights[:, :k])
            out[k].append(votes / votes.sum(axis=1, keepdims=True))
            gaps[k].append(top[:, k - 1] - top[:, k] if k < ranked else np.full(len(q), np.inf))
    return {k: np.concatenate(v) for k, v in out.items()}, {k: np.concatenate(v) for k, v in gaps.items()}


def clear_of_a_tie(votes: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """The queries whose class rounding cannot decide: the k-th neighbour clear of the next,
    the largest vote clear of the runner-up."""
    ranked = np.sort(votes, axis=1)
    return (gaps > SIMILARITY_TIE) & (ranked[:, -1] - ranked[:, -2] > VOTE_TIE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=40_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200])
    parser.add_argument("--temperature", type=float, default=0.07)
    args = parse_run_arguments(parser)

    from transfer_lab.knn import CHUNK_ELEMENTS, KNNHead

    x, y = synthetic_features(args.n_train + args.n_test, args.dim, args.classes, args.seed)
    xtr, ytr, xte, yte = x[: args.n_train], y[: args.n_train], x[args.n_train:], y[args.n_train:]
    rows = min(max(1, CHUNK_ELEMENTS // args.n_train), args.n_test)
    print(f"train {args.n_train:,} x {args.dim}, test {args.n_test:,}, {args.classes} classes, k {args.k}, "
          f"torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"memory: one chunk of similarities {rows * args.n_train * 4 / 2**20:.0f} MiB ({rows} queries); "
          f"the whole test x train matrix would be {args.n_test * args.n_train * 4 / 2**20:,.0f} MiB")

    device = torch.device(args.device)
    KNNHead(torch.from_numpy(xtr[:256]).to(device), torch.from_numpy(ytr[:256]).to(device), args.classes,
            max(args.k)).votes(torch.from_numpy(xte[:8]).to(device), args.k)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    head = KNNHead(torch.from_numpy(xtr).to(device), torch.from_numpy(ytr).to(device), args.classes, max(args.k),
                   args.temperature)
    ours = head.votes(torch.from_numpy(xte).to(device), args.k)
    ours = {k: v.cpu().numpy() for k, v in ours.items()}
    ours_seconds = time.perf_counter() - start
    print(f"knn        {ours_seconds:8.2f} s")

    start = time.perf_counter()
    theirs, gaps = numpy_votes(xtr, ytr, xte, args.classes, args.k, args.temperature, rows)
    numpy_seconds = time.perf_counter() - start
    print(f"numpy      {numpy_seconds:8.2f} s")

    for k in args.k:
        same = ours[k].argmax(1) == theirs[k].argmax(1)
        clear = clear_of_a_tie(theirs[k], gaps[k])
        print(f"k={k:<4} test accuracy {100 * float((ours[k].argmax(1) == yte).mean()):.2f}%  "
              f"predictions agree {100 * float(same.mean()):.2f}% (clear of a near-tie: {int(clear.sum())} images, "
              f"agree {100 * float(same[clear].mean()):.2f}%)  max probability difference "
              f"{float(np.abs(ours[k] - theirs[k]).max()):.1e}")
    print(f"ratio numpy/knn time        {numpy_seconds / ours_seconds:.2f}x")
    print(f"knn throughput              {args.n_test / ours_seconds:,.0f} queries/s "
          f"({2 * args.n_test * args.n_train * args.dim / ours_seconds / 1e9:.0f} GFLOP/s in the products)")


if __name__ == "__main__":
    main()
