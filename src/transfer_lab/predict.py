"""Apply a trained head to new images: uint8 RGB pixels of any size in, class probabilities out.

One module, :class:`Classifier`, does every step a training image went through (the
storage resize of preparation, the network's own resize/crop/normalisation, the frozen
backbone, the head's standardisation and the head) and then a softmax; a fine-tuned
network (rule finetune) is applied the same way, its own classifier as the head.
``predict`` runs it eagerly and ``export`` (:mod:`transfer_lab.export`) saves the very same module with
``torch.export``, so an exported file gives predict's probabilities, not an approximation.

The storage resize is PIL's bicubic resize written as two matrix products whose weights
are computed *inside* the module from the input's height and width: the exported graph
takes any image size, and stays exact to PIL's integer arithmetic (float64, Pillow's
22-bit coefficients), which :func:`transfer_lab.sources.to_storage` applied at
preparation.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .config import FINETUNED
from .devices import resolve_device
from .extract import DevicePreprocess
from .finetune import is_finetuned, load_finetuned
from .heads import load_head
from .images import read_image
from .networks import load_backbone
from .specs import NetworkSpec

# How an image is fit into its square storage size (transfer_lab.sources.storage_fit).
FITS = ("squash", "crop")
_PIL_ONE = float(1 << 22)  # Pillow's fixed-point precision (Resample.c: PRECISION_BITS)


class PredictError(ValueError):
    """A head file, image list or request that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Storage:
    """The square storage size images were resized to at preparation, and how they were fit."""

    size: int
    fit: str  # "squash" | "crop"


def storage_for(dataset_spec: dict) -> Storage:
    """The storage step of a dataset's config entry (``image_size`` or its source's default)."""
    from .sources import storage_fit, storage_size

    return Storage(storage_size(dataset_spec), storage_fit(dataset_spec))


def bicubic_rows(in_size: int, out_index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rows ``out_index`` of PIL's bicubic resize matrix (float64, Pillow's 22-bit weights).

    ``scale`` is in_size / out_size as a float64 0-d tensor. The twin of
    :func:`transfer_lab.extract.resize_matrix` in torch operations only, so that
    ``torch.export`` can keep ``in_size`` symbolic (tested equal to it).
    """
    a = -0.5
    device = out_index.device
    filterscale = torch.clamp(scale, min=1.0)
    support = 2.0 * filterscale
    center = (out_index.to(torch.float64) + 0.5) * scale
    lo = torch.clamp(torch.trunc(center - support + 0.5), min=0.0)
    j = torch.arange(in_size, dtype=torch.float64, device=device)[None, :]
    # (no float(in_size): that would fix the size of an exported graph)
    hi = torch.minimum(torch.trunc(center + support + 0.5), torch.full_like(center, in_size))
    x = ((j - center[:, None] + 0.5) / filterscale).abs()
    zero = torch.zeros_like(x)
    k = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1, torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, zero))
    k = torch.where((j >= lo[:, None]) & (j < hi[:, None]), k, zero)
    m = k / k.sum(dim=1, keepdim=True)
    return torch.trunc(m * _PIL_ONE + torch.copysign(torch.full_like(m, 0.5), m)) / _PIL_ONE


class StorageResize(nn.Module):
    """:func:`transfer_lab.sources.to_storage` for one uint8 (H, W, 3) tensor of any size.

    ``squash`` resizes to size x size; ``crop`` resizes the shorter side to ``size`` and
    keeps the centre square (only the kept rows and columns are computed). Horizontal
    pass, then vertical, each rounded to uint8 levels as Pillow does.
    """

    def __init__(self, storage: Storage):
        super().__init__()
        if storage.fit not in FITS:
            raise PredictError(f"storage fit must be one of {', '.join(FITS)}, not {storage.fit!r}")
        self.size = int(storage.size)
        self.crop = storage.fit == "crop"

    def _axis(self, n: int, shorter: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(size, n) matrix taking one axis of n pixels to its ``size`` stored pixels."""
        size = self.size
        n_t = torch.full((), n, dtype=torch.float64, device=device)
        index = torch.arange(size, device=device, dtype=torch.float64)
        if self.crop:
            # to_storage: scale = size / min(w, h); new = max(size, round(n * scale)); offset = (new - size) // 2
            new = torch.clamp(torch.round(n_t * (size / shorter)), min=float(size))
            offset = torch.div(new - size, 2, rounding_mode="floor")
            return bicubic_rows(n, index + offset, n_t / new)
        return bicubic_rows(n, index, n_t / size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[0], image.shape[1]
        device = image.device
        shorter = torch.minimum(
            torch.full((), height, dtype=torch.float64, device=device),
            torch.full((), width, dtype=torch.float64, device=device),
        )
        rows = self._axis(height, shorter, device)
        cols = self._axis(width, shorter, device)
        # float64 products of 8-bit pixels and 22-bit weights are exact: Pillow's integer sums.
        x = image.permute(2, 0, 1).to(torch.float64)
        x = torch.floor(x @ cols.T + 0.5).clamp(0, 255)
        x = torch.floor(rows @ x + 0.5).clamp(0, 255)
        return x.permute(1, 2, 0).to(torch.uint8)


class Classifier(nn.Module):
    """Storage resize, the network's preprocessing, backbone, standardisation, head, softmax.

    ``forward`` takes one uint8 RGB (H, W, 3) image of any size and returns float32
    probabilities (n_classes,); ``classify`` takes a batch already at the storage size.
    """

    def __init__(self, backbone: nn.Module, preprocess: DevicePreprocess, head: nn.Module,
                 mean: torch.Tensor, std: torch.Tensor, storage: Storage):
        super().__init__()
        self.storage = StorageResize(storage)
        self.preprocess = preprocess
        # The preprocessing matrices for the storage size, computed once, so an exported
        # graph holds them as constants.
        preprocess.matrices(storage.size, storage.size, torch.device("cpu"))
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    def classify(self, stored: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.preprocess(stored)).float()
        return torch.softmax(self.head((features - self.mean) / self.std), dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classify(self.storage(image).unsqueeze(0))[0]


def trained_network(meta: dict, where: str) -> NetworkSpec:
    """The spec of the network a head (or fine-tuned file) was made with, from its network meta."""
    if "network_spec" not in meta:
        raise PredictError(f"{where}: the file's network_meta lacks network_spec; rebuild it with this "
                           "version of the workflow (snakemake reruns it)")
    return NetworkSpec.from_json(meta["network_spec"])


@dataclass
class Predictor:
    model: Classifier
    class_names: list[str]
    storage: Storage
    meta: dict  # the head's network meta: network, arch, weights, input size, dataset, ...
    head_path: str
    head_kind: str
    device: torch.device


def resolve_storage(meta: dict, config: dict | None, where: str) -> Storage:
    """The storage step of the dataset a head was trained on.

    From the head's network meta when it records it (``storage_size``/``storage_fit``),
    else from the config's entry for that dataset (``image_size`` and source).
    """
    if meta.get("storage_size") is not None:
        return Storage(int(meta["storage_size"]), str(meta.get("storage_fit", "squash")))
    dataset = meta.get("dataset")
    spec = ((config or {}).get("datasets") or {}).get(dataset)
    if spec is None:
        raise PredictError(
            f"{where}: cannot tell the storage size of dataset {dataset!r} the head was trained on: "
            f"the config has no datasets.{dataset} entry. Run from the workflow folder (config.yaml), "
            "pass --config, or give --image-size and --fit"
        )
    return storage_for(spec)


def load_predictor(
    head_path: str | os.PathLike,
    network: str | None = None,
    config: dict | None = None,
    storage: Storage | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> Predictor:
    """A head file plus the backbone it was trained on, or a fine-tuned network, as one
    :class:`Classifier`.

    ``head_path`` is a head file (rule train_head) or a fine-tuned network (rule
    finetune, ``results/finetune/*.pt``): the latter's own classifier is the head, on
    unstandardised features. ``network`` is the config name the caller asked for,
    ``config`` the workflow's config (``networks`` and ``datasets``; either may be absent).
    A head trained on another network's features, or on a network whose config entry has
    changed since, is refused naming both, rather than producing confident nonsense.
    ``storage`` overrides the storage step otherwise taken from the file's meta or the
    config.
    """
    where = str(head_path)
    if not Path(head_path).is_file():
        raise PredictError(f"{where}: no such head file; train it first (snakemake {where})")
    try:
        finetuned = is_finetuned(head_path)
    except Exception as err:  # truncated, another format, or refused by weights_only
        first_line = (str(err).splitlines() or [""])[0]
        raise PredictError(
            f"{where}: not a head file or fine-tuned network ({type(err).__name__}: {first_line}); "
            f"expected results/heads/*.pt or results/finetune/*.pt saved by the workflow: rebuild it "
            f"(snakemake {where})"
        ) from err
    if finetuned:
        backbone, trained_file = load_finetuned(head_path, checkpoint_dir)
        n_classes = len(trained_file["class_names"])
        # The fine-tuned classifier takes the backbone's features as they are.
        head, mean, std = nn.Identity(), torch.zeros(n_classes), torch.ones(n_classes)
    else:
        head, trained_file = load_head(head_path)
        mean, std = trained_file["mean"], trained_file["std"]
    meta = dict(trained_file.get("network_meta") or {})
    trained = trained_network(meta, where)
    if network is not None and meta["network"] != network:
        raise PredictError(
            f"{where} was trained on the features of network {meta['network']!r} ({trained.describe()}), "
            f"not of the requested network {network!r}; use results/heads/{network}_<dataset>_<head>.pt "
            f"or request network {meta['network']!r}"
        )
    entry = ((config or {}).get("networks") or {}).get(network) if network else None
    requested = NetworkSpec.from_config(entry) if entry is not None else trained
    if requested != trained:
        raise PredictError(
            f"{where} was trained on network {network!r} as {trained.describe()}, but the config's "
            f"network {network!r} is now {requested.describe()}; rebuild the head (snakemake reruns it) "
            "or restore the network's config entry"
        )
    storage = storage or resolve_storage(meta, config, where)
    if not finetuned:
        backbone = load_backbone(trained, checkpoint_dir=checkpoint_dir)
        if backbone.feature_dim != trained_file["feature_dim"]:
            raise PredictError(
                f"{where}: the head takes {trained_file['feature_dim']}-d features but {trained.describe()} "
                f"gives {backbone.feature_dim}-d; the head file does not belong to this network"
            )
    dev = resolve_device(device)
    model = Classifier(backbone.model, DevicePreprocess(backbone.preprocess), head, mean, std,
                       storage).to(dev).eval()
    kind = FINETUNED if finetuned else str(trained_file.get("kind", ""))
    return Predictor(model, [str(c) for c in trained_file["class_names"]], storage, meta, where, kind, dev)


# --- predictions ---------------------------------------------------------------------------


def columns(top_k: int) -> list[str]:
    return ["path", "predicted", "probability"] + [
        c for i in range(1, top_k + 1) for c in (f"class_{i}", f"probability_{i}")] + ["error"]


def predict_files(predictor: Predictor, paths: Iterable[str | os.PathLike], top_k: int = 3,
                  batch_size: int = 32) -> list[dict]:
    """One row per path, in order: predicted class, its probability, the top-k, or an error.

    An unreadable file gets its ``error`` and no prediction; the others go on.
    """
    from .sources import DatasetError

    paths = [str(p) for p in paths]
    top_k = max(1, min(int(top_k), len(predictor.class_names)))
    model, dev = predictor.model, predictor.device
    rows: list[dict] = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            stored, good = [], []
            for path in paths[start:start + batch_size]:
                row = {c: "" for c in columns(top_k)}
                row["path"] = path
                rows.append(row)
                try:
                    image = torch.from_numpy(read_image(path)).to(dev)
                except (DatasetError, OSError, ValueError) as err:
                    row["error"] = str(err)
                    continue
                stored.append(model.storage(image))
                good.append(row)
            if not stored:
                continue
            probs = model.classify(torch.stack(stored)).cpu()
            values, indices = probs.topk(top_k, dim=1)
            for row, p, v, i in zip(good, probs, values.tolist(), indices.tolist()):
                row["predicted"], row["probability"] = predictor.class_names[i[0]], v[0]
                row["probabilities"] = p.numpy()  # all classes, for callers; not written out
                for rank, (cls, prob) in enumerate(zip(i, v), start=1):
                    row[f"class_{rank}"], row[f"probability_{rank}"] = predictor.class_names[cls], prob
    return rows


def to_csv(rows: list[dict], top_k: int) -> str:
    """The rows as CSV text: probabilities with 6 decimals, an empty error when all went well."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(top_k), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def to_table(rows: list[dict], top_k: int) -> str:
    """The rows for people: path, prediction with its probability, the runners-up, or the error."""
    lines = [("image", "predicted", "probability", "runners-up" if top_k > 1 else "")]
    for row in rows:
        if row["error"]:
            lines.append((row["path"], "-", "-", f"error: {row['error']}"))
            continue
        others = ", ".join(f"{row[f'class_{i}']} {row[f'probability_{i}']:.1%}" for i in range(2, top_k + 1)
                           if f"class_{i}" in row and row[f"class_{i}"] != "")
        lines.append((row["path"], row["predicted"], f"{row['probability']:.1%}", others))
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip() for a, b, c, d in lines) + "\n"
