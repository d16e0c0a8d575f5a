"""The k-nearest-neighbour probe on frozen features, as DINO evaluates its features.

Features are L2-normalised, so a dot product is the cosine similarity; each query's k
most similar training images vote for their class with weight ``exp(similarity / T)``
(T = 0.07 in DINO, which sharpens the vote towards the closest neighbours); the class
with the largest vote wins, and the votes, normalised to sum to 1, are its class
probabilities. Nothing is trained: the "head" is the normalised training features.

Queries go through in chunks, so memory holds one chunk x training set block of
similarities at a time, never queries x training set; one pass gives the votes of every
k in a list (the top max(k) neighbours are found once), so choosing k on validation
costs one pass, not one per k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_K = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
# Similarities held at once: 2^25 float32 = 128 MiB (840 queries against 40,000 images).
CHUNK_ELEMENTS = 1 << 25


def neighbour_counts(k: int | Sequence[int]) -> list[int]:
    """A head config's ``k`` (one value or a list) as a sorted list without repeats."""
    return sorted({int(k)} if isinstance(k, int) else {int(v) for v in k})


def capped(ks: Sequence[int], n_train: int) -> list[int]:
    """``ks`` with every k above the training set's size replaced by that size (a vote over
    every training image): what a small label-efficiency subset can take."""
    return sorted({min(int(k), n_train) for k in ks})


def check_k(k: int | Sequence[int], n_train: int, key: str) -> None:
    """Refuse k values above the full training set's size, naming the config ``key``."""
    too_many = [v for v in neighbour_counts(k) if v > n_train]
    if too_many:
        raise ValueError(f"{key}: k = {', '.join(map(str, too_many))} is larger than the training set "
                         f"({n_train} images); use values of at most {n_train}")


def nearest(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest similarities of each row, most similar first, and their columns.

    Equal similarities (a training image stored twice, say) are ordered by column, the
    earlier training image first, as NumPy's stable argsort orders them: ``torch.topk``
    leaves the order of ties open, and it differs between devices and between values of k,
    so a vote would otherwise depend on which k was asked for with it, or where it ran.
    """
    n = similarity.shape[1]
    top, index = similarity.topk(min(k + 1, n), dim=1)
    # A tie across the k-th place: topk chose among the equal similarities as it pleased.
    # Export traces the general case (it cannot branch on the values).
    crossing = k < n and (torch.compiler.is_compiling() or bool((top[:, k] == top[:, k - 1]).any()))
    top, index = top[:, :k], index[:, :k]
    if crossing:
        index = _earliest_at_the_edge(similarity, top[:, k - 1:], index)
    # Inside the k: equal similarities by column (a stable sort by similarity of the column order).
    index, order = index.sort(dim=1)
    top, order = top.gather(1, order).sort(dim=1, descending=True, stable=True)
    return top, index.gather(1, order)


def _earliest_at_the_edge(similarity: torch.Tensor, edge: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``index`` (each row's k nearest columns, most similar first) with the places at the
    k-th similarity ``edge`` given to the earliest columns that have it."""
    n, k = similarity.shape[1], index.shape[1]
    above = (similarity > edge).sum(1, keepdim=True)  # the places taken by larger similarities
    columns = torch.arange(n, 0, -1, device=similarity.device, dtype=torch.int32)  # earlier = larger
    earliest = torch.where(similarity == edge, columns, 0).topk(k, dim=1).indices  # the tied, earliest first
    place = torch.arange(k, device=index.device)
    return torch.where(place < above, index, earliest.gather(1, (place - above).clamp(min=0)))


def knn_votes(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    n_classes: int,
    ks: Sequence[int],
    temperature: float = DEFAULT_TEMPERATURE,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[int, torch.Tensor]:
    """Class probabilities (queries, n_classes) for each k: the normalised weighted votes.

    ``bank`` holds the training features, already L2-normalised (:class:`KNNHead` stores
    them so); ``queries`` are normalised here. Computed on the device ``bank`` is on.
    """
    ks = sorted(set(ks))
    if not ks or ks[0] < 1 or ks[-1] > len(bank):
        raise ValueError(f"k must lie between 1 and the {len(bank)} training images; got {ks}")
    rows = max(1, chunk_elements // max(1, len(bank)))
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for chunk in F.normalize(queries.to(bank.device, bank.dtype), dim=1).split(rows):
        top, index = nearest(chunk @ bank.T, ks[-1])
        weights = (top / temperature).exp_()
        labels = bank_labels[index]
        for k in ks:
            votes = torch.zeros(len(chunk), n_classes, dtype=weights.dtype, device=bank.device)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            out[k].append(votes / votes.sum(dim=1, keepdim=True))
    return {k: torch.cat(parts) for k, parts in out.items()}


class KNNHead(nn.Module):
    """The training features (normalised), their labels and the chosen k, as a module.

    ``forward`` returns the log of the class probabilities, so the softmax that every head's
    output goes through in predict and export gives the votes back exactly. The buffers
    take their shapes from the state dict they are loaded from (a head file).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int, k: int,
                 temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        self.register_buffer("features", F.normalize(features.float(), dim=1))
        self.register_buffer("labels", labels.long())
        self.register_buffer("k", torch.tensor(int(k)))
        self.n_classes = int(n_classes)
        self.temperature = float(temperature)
        self.neighbours = int(k)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("features", "labels"):
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=self.features.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.neighbours = int(self.k)

    def votes(self, x: torch.Tensor, ks: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        return knn_votes(x, self.features, self.labels, self.n_classes, ks or [self.neighbours], self.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.votes(x)[self.neighbours].log()


def empty_knn_head(cfg: dict, in_dim: int, n_classes: int) -> KNNHead:
    """A head to load a state dict into (what :func:`transfer_lab.heads.build_head` returns)."""
    return KNNHead(torch.zeros(0, in_dim), torch.zeros(0, dtype=torch.long), n_classes, 1, cfg["temperature"])


def fit_knn(cfg: dict, xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor,
            n_classes: int) -> tuple[KNNHead, list[dict], torch.Tensor]:
    """Choose k on validation (the first of equally accurate k, so the smallest).

    Returns the head, the sweep (validation accuracy per k) and the validation
    probabilities at the chosen k, so validation is not classified twice. k values above
    the training set's size are capped at it (:func:`capped`).
    """
    ks = capped(neighbour_counts(cfg["k"]), len(xtr))
    head = KNNHead(xtr, ytr, n_classes, ks[0], cfg["temperature"])
    votes = head.votes(xva, ks)
    sweep = [{"k": k, "validation_accuracy": (votes[k].argmax(1) == yva).float().mean().item()} for k in ks]
    best = max(sweep, key=lambda s: s["validation_accuracy"])  # max keeps the first of equal ones
    head.neighbours = best["k"]
    head.k.fill_(best["k"])
    return head, sweep, votes[best["k"]]
