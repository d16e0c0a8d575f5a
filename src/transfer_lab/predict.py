"""Apply a trained head to new images: uint8 RGB pixels of any size in, class probabilities out.

One module, :class:`Classifier`, does every step a training image went through (the
storage resize of preparation, the network's own resize/crop/normalisation, the frozen
backbone, the head's standardisation and the head) and then a softmax; for a dataset kept
as its files (``store: files``) there was no storage resize, and there is none here: each
file is decoded as extraction decodes it and goes straight to the network's resize. A fine-tuned
network (rule finetune) is applied the same way, its own classifier as the head.
``predict`` runs it eagerly and ``export`` (:mod:`transfer_lab.export`) saves the very same module with
``torch.export``, so an exported file gives predict's probabilities, not an approximation.

The storage resize (:class:`transfer_lab.preprocess.StorageResize`) is PIL's bicubic resize
written as two matrix products whose weights are computed *inside* the module from the
input's height and width: the exported graph takes any image size, and stays exact to
PIL's integer arithmetic (float64, Pillow's 22-bit coefficients), which
:func:`transfer_lab.storage.to_storage` applied at preparation.
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
from .decode import read_raw
from .devices import resolve_device
from .errors import DatasetError
from .finetune import is_finetuned, load_finetuned
from .heads import load_head
from .images import read_image
from .networks import load_backbone
from .preprocess import AS_FILES, DevicePreprocess, Storage, StorageResize, storage_for
from .sources import dataset_spec
from .specs import NetworkSpec, largest_resize


class PredictError(ValueError):
    """A head file, image list or request that cannot be used; the message says which and why."""


class Classifier(nn.Module):
    """Storage resize, the network's preprocessing, backbone, standardisation, head, softmax.

    ``forward`` takes one uint8 RGB (H, W, 3) image of any size and returns float32
    probabilities (n_classes,); ``classify`` takes a batch already at the storage size (for
    :data:`~transfer_lab.preprocess.AS_FILES`, a batch of decoded images of one size).
    """

    def __init__(self, backbone: nn.Module, preprocess: DevicePreprocess, head: nn.Module,
                 mean: torch.Tensor, std: torch.Tensor, storage: Storage):
        super().__init__()
        self.storage = StorageResize(storage)
        self.preprocess = preprocess
        # Kept as files: images come in any size, and the resize matrices are computed in the
        # graph from it (as DevicePreprocess.matrices computes them at extraction).
        self.any_size = storage.as_files
        if not self.any_size:
            # The preprocessing matrices for the storage size, computed once, so an exported
            # graph holds them as constants.
            preprocess.matrices(storage.size, storage.size, torch.device("cpu"))
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())

    def classify(self, stored: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.preprocess(stored, traced=self.any_size)).float()
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

    From the head's network meta when it records it (``storage_size``/``storage_fit``, or
    ``store: files``: none), else from the config's entry for that dataset (``image_size``,
    source and store; for a photo source without image_size, the largest resize of the
    config's networks).
    """
    if meta.get("store") == "files":
        return AS_FILES
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
    networks = [NetworkSpec.from_config(entry) for entry in ((config or {}).get("networks") or {}).values()]
    return storage_for(dataset_spec({**spec, "network_resize": largest_resize(networks)}))


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
                    image = read_as_trained(path, predictor.storage).to(dev)
                except (DatasetError, OSError, ValueError) as err:
                    row["error"] = str(err)
                    continue
                stored.append(model.storage(image))
                good.append(row)
            if not stored:
                continue
            probs = _classify(model, stored).cpu()
            # Equal probabilities (a kNN head gives 0 to every class no neighbour voted for)
            # in class order, the first of equal ones first, as evaluation's argmax takes
            # it: topk leaves their order open, and it changes with top_k and the device.
            values, indices = (t[:, :top_k] for t in probs.sort(dim=1, descending=True, stable=True))
            for row, p, v, i in zip(good, probs, values.tolist(), indices.tolist(), strict=True):
                row["predicted"], row["probability"] = predictor.class_names[i[0]], v[0]
                row["probabilities"] = p.numpy()  # all classes, for callers; not written out
                for rank, (cls, prob) in enumerate(zip(i, v, strict=True), start=1):
                    row[f"class_{rank}"], row[f"probability_{rank}"] = predictor.class_names[cls], prob
    return rows


def read_as_trained(path: str | os.PathLike, storage: Storage) -> torch.Tensor:
    """An image file as uint8 RGB (H, W, 3), upright, decoded as the training images were:
    as preparation decodes (PIL), or for a dataset kept as its files as extraction decodes
    them on the CPU (JPEGs by torchvision's decoder, :func:`transfer_lab.decode.read_raw`)."""
    if storage.as_files:
        return read_raw(str(path), gpu_jpeg=False).pixels.permute(1, 2, 0)
    return torch.from_numpy(read_image(path))


def _classify(model: Classifier, images: list[torch.Tensor]) -> torch.Tensor:
    """Probabilities of ``images`` (after the storage step), in order: one batch per image size
    (stored squares are all one size; files kept as they are come in many)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(k)
    out: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for members in groups.values():
        for k, probs in zip(members, model.classify(torch.stack([images[k] for k in members])), strict=True):
            out[k] = probs
    return torch.stack(out)


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
