"""Small classification heads trained on cached bottleneck features.

Features are few and small, so training keeps every tensor resident on the device
and batches by indexing: no DataLoader. Features are standardised with the training
split's statistics, which the head file stores so it can be applied later; the kNN
probe (:mod:`transfer_lab.knn`) takes them as they are, since cosine similarity is its
protocol (its file stores mean 0 and scale 1).
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .bottleneck import Bottleneck
from .devices import resolve_device
from .evaluation import classification_metrics
from .files import atomic_write
from .knn import empty_knn_head, fit_knn

HEAD_KINDS = ("linear", "logreg", "mlp", "knn")


def hidden_sizes(cfg: dict) -> list[int]:
    """``hidden: 512`` is one hidden layer, ``hidden: [512, 256]`` two."""
    hidden = cfg["hidden"]
    return [int(hidden)] if isinstance(hidden, int) else [int(h) for h in hidden]


def build_head(cfg: dict, in_dim: int, n_classes: int) -> nn.Module:
    """``linear`` and ``logreg``: one dense softmax layer (trained by Adam, or by L-BFGS as
    regularised logistic regression). ``mlp``: one or more hidden ReLU layers, each
    followed by dropout. ``knn``: an empty neighbour bank, to load a head file into."""
    kind = cfg["kind"]
    if kind == "knn":
        return empty_knn_head(cfg, in_dim, n_classes)
    if kind in ("linear", "logreg"):
        return nn.Linear(in_dim, n_classes)
    if kind == "mlp":
        layers: list[nn.Module] = []
        for width in hidden_sizes(cfg):
            layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(cfg["dropout"])]
            in_dim = width
        return nn.Sequential(*layers, nn.Linear(in_dim, n_classes))
    raise ValueError(f"unknown head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale from the training split.

    The scale is floored at the median feature std: ReLU units that are almost never
    active on the training images would otherwise be divided by ~0 and explode on the
    first validation image that activates them (measured on the quickstart: an MLP fell
    from 94% to 83% test accuracy with a 1e-6 floor).
    """
    n, rows = len(features), _block_rows(features)
    mean = _column_sum(features[lo:lo + rows] for lo in range(0, n, rows))
    np.true_divide(mean, n, out=mean, casting="unsafe")
    squares = _column_sum(np.square(features[lo:lo + rows] - mean) for lo in range(0, n, rows))
    std = np.sqrt(squares / n)
    floor = max(float(np.median(std)), 1e-6)
    return mean, np.maximum(std, floor)


# Bytes per block of rows when a whole feature matrix is reduced or standardised: the
# temporaries are a block, not the matrix (heads hold their features about once).
BLOCK_BYTES = 4 << 20


def _block_rows(features: np.ndarray) -> int:
    return max(1, BLOCK_BYTES // max(1, features[:1].nbytes))


def _column_sum(blocks) -> np.ndarray:
    """Column sums of row blocks, accumulated row after row as numpy's axis-0 sum of the
    whole matrix does: ``features.mean(axis=0)`` and ``.std(axis=0)`` bit for bit (tested),
    without their matrix-sized temporary."""
    total = None
    for block in blocks:
        total = np.add.reduce(block if total is None else np.concatenate([total[None], block]), axis=0)
    return total


def standardise_in_place(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(features - mean) / std`` written over ``features``, block by block: the same
    float32 values as the expression, without its two matrix-sized temporaries."""
    if not features.flags.writeable:
        raise ValueError("features to standardise in place must be writeable")
    rows = _block_rows(features)
    for lo in range(0, len(features), rows):
        block = features[lo:lo + rows]
        np.subtract(block, mean, out=block)
        np.divide(block, std, out=block)
    return features


def _evaluate(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    head.eval()
    with torch.no_grad():
        logits = head(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def _fit_adam(head: nn.Module, cfg: dict, xtr, ytr, xva, yva) -> tuple[int, list[dict]]:
    """Mini-batches by indexing resident tensors; keep the epoch with the lowest validation loss."""
    gen = torch.Generator(device="cpu").manual_seed(cfg["seed"])
    opt = torch.optim.Adam(head.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    curve: list[dict] = []
    best = (float("inf"), 0, copy.deepcopy(head.state_dict()))
    for epoch in range(1, cfg["epochs"] + 1):
        head.train()
        order = torch.randperm(len(xtr), generator=gen).to(xtr.device)
        total = 0.0
        for i in range(0, len(order), cfg["batch_size"]):
            idx = order[i:i + cfg["batch_size"]]
            loss = F.cross_entropy(head(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss, val_acc = _evaluate(head, xva, yva)
        curve.append({"epoch": epoch, "train_loss": total / len(xtr),
                      "validation_loss": val_loss, "validation_accuracy": val_acc})
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    return best[1], curve


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    C: float,
    max_iter: int,
    tol: float = 1e-3,
    init: nn.Linear | None = None,
    history: list[float] | None = None,
) -> nn.Linear:
    """Multinomial logistic regression with an L2 penalty on the weights, by full-batch L-BFGS.

    The objective is scikit-learn's ``C * sum(cross-entropy) + ||W||^2 / 2`` divided by
    ``C * n`` (same minimum, better scaled, the scaling scikit-learn itself uses): the bias
    is not penalised. ``tol`` bounds the largest gradient component at the stop, as
    scikit-learn's ``tol`` does; accuracy settles long before the objective does
    (benchmarks/heads_vs_sklearn.py measures the difference). ``init`` warm-starts from a
    neighbouring C's solution; ``history`` receives the objective at every evaluation.
    """
    head = nn.Linear(x.shape[1], n_classes).to(x.device)
    with torch.no_grad():
        if init is None:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        else:
            head.load_state_dict(init.state_dict())
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=tol, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    n = len(x)
    l2 = 1.0 / (2.0 * C * n)
    rows = torch.arange(n, device=x.device)

    def closure() -> torch.Tensor:
        # The gradient by hand rather than by autograd: the backward of a linear layer forms
        # x^T @ grad, an orientation that ran 5x slower on the CPU than grad^T @ x below
        # (torch 2.14, 40,000 x 2048 features), and this product is most of each evaluation.
        with torch.no_grad():
            log_p = torch.log_softmax(torch.addmm(head.bias, x, head.weight.T), dim=1)
            loss = -log_p[rows, y].mean() + l2 * head.weight.pow(2).sum()
            residual = log_p.exp_()
            residual[rows, y] -= 1.0
            residual /= n
            head.weight.grad = residual.T @ x + (2.0 * l2) * head.weight
            head.bias.grad = residual.sum(dim=0)
        if history is not None:
            history.append(loss.item())
        return loss

    opt.step(closure)
    return head


def _fit_logreg_swept(cfg: dict, xtr, ytr, xva, yva, n_classes: int,
                      refit: bool = True) -> tuple[nn.Linear, float, nn.Linear, list[dict], list[float]]:
    """The linear-probe protocol: pick C on validation, then refit on train + validation.

    The sweep runs from the strongest regularisation up, each fit warm-started from the
    previous one (neighbouring Cs have neighbouring solutions). Returns the refitted head,
    the chosen C, the train-only fit at that C (the refitted head has seen validation, so
    validation is scored with this one), the sweep and the refit's objective per evaluation.
    Without ``refit`` the train-only fit is the head (and the objective empty).
    """
    grid = [cfg["C"]] if cfg.get("C") is not None else sorted(cfg["c_grid"])
    sweep, best, previous = [], None, None
    for C in grid:
        head = fit_logreg(xtr, ytr, n_classes, C, cfg["max_iter"], cfg["tol"], init=previous)
        val_loss, val_acc = _evaluate(head, xva, yva)
        sweep.append({"C": C, "validation_loss": val_loss, "validation_accuracy": val_acc})
        if best is None or val_acc > best[1]:
            best = (C, val_acc, head)
        previous = head
    if not refit:
        return best[2], best[0], best[2], sweep, []
    objective: list[float] = []
    final = fit_logreg(torch.cat([xtr, xva]), torch.cat([ytr, yva]), n_classes, best[0], cfg["max_iter"],
                       cfg["tol"], init=best[2], history=objective)
    return final, best[0], best[2], sweep, objective


def _probabilities(head: nn.Module, x: torch.Tensor) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return torch.softmax(head(x), dim=1).cpu().numpy()


def train_head(
    cfg: dict,
    train: Bottleneck,
    validation: Bottleneck,
    test: Bottleneck | None = None,
    device: str = "auto",
    refit: bool = True,
    standardised: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict, dict]:
    """Train a head on standardised features resident on the device (no DataLoader).

    Returns the head file's contents (everything needed to apply the head) and its
    metrics (scores per split, the per-image predictions on validation and test, the
    training curve, C sweep or k sweep, seconds). A kNN head is not scored on its own
    training images, each of which would find itself as its nearest neighbour.
    ``refit: False`` keeps logreg from refitting on train + validation: a head meant to
    have seen few labelled images (label efficiency) must not learn from validation's.
    ``standardised``: the (mean, std) the features were already standardised with, in place
    (:func:`train_repeats` does so to hold them once); otherwise they are standardised here,
    into copies.
    """
    if train.features.shape[1] != validation.features.shape[1]:
        raise ValueError("train and validation features have different dimensions")
    dev = resolve_device(device)
    n_classes = len(train.class_names)
    knn = cfg["kind"] == "knn"
    if knn:
        dim = train.features.shape[1]
        mean, std = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    elif standardised is not None:
        mean, std = standardised
    else:
        mean, std = standardisation(train.features)

    def tensors(b: Bottleneck) -> tuple[torch.Tensor, torch.Tensor]:
        x = b.features if knn or standardised is not None else standardise_in_place(b.features.copy(), mean, std)
        return torch.from_numpy(x).float().to(dev), torch.from_numpy(b.labels).long().to(dev)

    xtr, ytr = tensors(train)
    xva, yva = tensors(validation)
    torch.manual_seed(cfg["seed"])
    start = time.perf_counter()
    outputs = {}
    if knn:
        head, sweep, validation_votes = fit_knn(cfg, xtr, ytr, xva, yva, n_classes)
        curve, best = [], {"k": head.neighbours, "sweep": sweep}
        outputs["validation"] = (validation_votes.cpu().numpy(), validation.labels)
    elif cfg["kind"] == "logreg":
        head, C, validation_head, sweep, objective = _fit_logreg_swept(cfg, xtr, ytr, xva, yva, n_classes, refit)
        curve = [{"iteration": i, "train_loss": v} for i, v in enumerate(objective, 1)]
        best = {"C": C, "sweep": sweep, "refit": refit}
    else:
        head = build_head(cfg, xtr.shape[1], n_classes).to(dev)
        best_epoch, curve = _fit_adam(head, cfg, xtr, ytr, xva, yva)
        validation_head = head
        best = {"best_epoch": best_epoch}
    seconds = time.perf_counter() - start  # fitting (for kNN: choosing k on validation), not scoring
    if not knn:
        outputs["train"] = (_probabilities(head, xtr), train.labels)
        outputs["validation"] = (_probabilities(validation_head, xva), validation.labels)
    if test is not None:
        outputs["test"] = (_probabilities(head, tensors(test)[0]), test.labels)

    scores = classification_metrics(outputs, train.class_names)
    scores["n"] = {"train": int(len(train.labels)), **scores["n"]}
    metrics = {
        "method": "features",
        "head_kind": cfg["kind"],
        "feature_dim": int(xtr.shape[1]),
        **scores,
        **best,
        "train_seconds": seconds,
        "device": str(dev),
        "curve": curve,
    }
    head_file = {
        "kind": cfg["kind"],
        "config": dict(cfg),
        "state_dict": {k: v.cpu() for k, v in head.state_dict().items()},
        "mean": torch.from_numpy(mean.astype(np.float32)),
        "std": torch.from_numpy(std.astype(np.float32)),
        "class_names": list(train.class_names),
        "feature_dim": int(xtr.shape[1]),
        "network_meta": dict(train.meta),
    }
    return head_file, metrics


def save_head(path: str | os.PathLike, head_file: dict) -> None:
    with atomic_write(path) as f:
        torch.save(head_file, f)


def load_head(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a trained head from its file (``weights_only``: no code runs on load)."""
    head_file = torch.load(path, map_location="cpu", weights_only=True)
    head = build_head(head_file["config"], head_file["feature_dim"], len(head_file["class_names"]))
    head.load_state_dict(head_file["state_dict"])
    return head.eval(), head_file
