"""Fine-tuning: the second method of transfer learning, beside feature extraction.

The backbone is built exactly as for extraction (same spec, same weights, same
preprocessing from the weights' metadata), a new linear classifier goes on its
penultimate features, and the whole network trains end to end: the backbone with a
lower learning rate than the new classifier, so the pretrained features are adjusted
rather than overwritten in the first steps. Batches are uint8 images from the prepared
dataset, preprocessed on the device by :class:`~transfer_lab.preprocess.DevicePreprocess`
(the :class:`~transfer_lab.extract.Extractor` supplies device, precision and
preprocessing, and runs the evaluation passes), so fine-tuned and feature-extraction
results differ only in what was trained.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import IO

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .config import FINETUNED
from .evaluation import classification_metrics
from .extract import Extractor
from .files import atomic_write
from .networks import Backbone, load_backbone
from .specs import NetworkSpec

Split = tuple[np.ndarray, np.ndarray]  # uint8 NHWC images, int64 labels


def build_classifier_net(backbone: nn.Module, feature_dim: int, n_classes: int) -> nn.Sequential:
    """The backbone followed by a new linear classifier, every parameter trainable.

    Named children (``backbone``, ``classifier``) give the state-dict keys the
    fine-tuned file stores and the two optimiser parameter groups.
    """
    net = nn.Sequential(OrderedDict(backbone=backbone, classifier=nn.Linear(feature_dim, n_classes)))
    return net.requires_grad_(True)


def param_groups(net: nn.Sequential, cfg: dict) -> list[dict]:
    """Backbone parameters at ``backbone_lr``, the new classifier's at ``lr``."""
    return [
        {"name": "backbone", "params": list(net.backbone.parameters()), "lr": cfg["backbone_lr"]},
        {"name": "classifier", "params": list(net.classifier.parameters()), "lr": cfg["lr"]},
    ]


def _train_mode(net: nn.Module, batchnorm: str) -> None:
    """``train()``, except that with ``batchnorm: frozen`` BatchNorm layers keep using (and
    keeping) the pretrained running statistics.

    A few epochs of small batches move the running statistics only part of the way to
    the new data's, while training sees batch statistics: the network evaluated in
    ``eval()`` mode is then not the one that was trained (measured on digits at 32 px:
    validation accuracy stayed at 15% while the training loss fell). Frozen statistics
    make training and evaluation the same function; their affine weights still train.
    """
    net.train()
    if batchnorm == "frozen":
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """A seeded shuffle cut into batches (each sorted, so a memory-mapped dataset is read
    forwards). A final batch of one image is dropped: BatchNorm cannot train on it."""
    order = torch.randperm(n, generator=gen).numpy()
    batches = [np.sort(order[i:i + batch_size]) for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) > 1] or batches


def _logits(extractor: Extractor, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """Logits of every image in eval mode (BatchNorm running statistics, no dropout)."""
    extractor.model.eval()
    return torch.from_numpy(extractor.run(images, batch_size))


def finetune(
    backbone: Backbone,
    spec: NetworkSpec,
    cfg: dict,
    splits: dict[str, Split],
    class_names: list[str],
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: IO[str] | None = None,
) -> tuple[dict, dict]:
    """Train ``backbone`` plus a new linear classifier end to end; keep the best epoch.

    ``spec`` is the network's spec (what :func:`load_backbone` built ``backbone``
    from): the fine-tuned file stores it so :func:`load_finetuned` can rebuild the same
    architecture. ``splits`` holds ``train`` and ``validation`` (and ``test`` where the
    dataset has one). The epoch with the lowest validation loss is kept. Returns the
    fine-tuned file's contents and its metrics (the head metrics' fields).
    """
    for name in ("train", "validation"):
        if name not in splits or len(splits[name][0]) == 0:
            raise ValueError(f"fine-tuning needs a non-empty {name!r} split; got {sorted(splits)}")
    n_classes = len(class_names)
    torch.manual_seed(cfg["seed"])  # the classifier's initialisation, dropout
    net = build_classifier_net(backbone.model, backbone.feature_dim, n_classes)
    # The Extractor moves the network to the device (channels_last on CUDA) and owns
    # preprocessing and precision; its run() gives logits, since the net outputs them.
    extractor = Extractor(Backbone(net, backbone.preprocess, n_classes), device, precision)
    dev = extractor.device
    opt = torch.optim.AdamW(param_groups(net, cfg), weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler(dev.type, enabled=extractor.precision == "fp16")
    images, labels = splits["train"]
    val_images, val_labels = splits["validation"]
    yva = torch.from_numpy(np.asarray(val_labels, dtype=np.int64))
    gen = torch.Generator(device="cpu").manual_seed(cfg["seed"])
    batch_size = cfg["batch_size"]

    curve: list[dict] = []
    best: tuple[float, int, dict] = (float("inf"), 0, {})
    bar = tqdm(total=cfg["epochs"] * len(images), unit="img", file=progress, disable=progress is None,
               mininterval=2.0)
    start = time.perf_counter()
    for epoch in range(1, cfg["epochs"] + 1):
        _train_mode(net, cfg["batchnorm"])
        total, seen = torch.zeros((), device=dev), 0
        for idx in _batches(len(images), batch_size, gen):
            x = extractor.to_device(images[idx])
            y = torch.from_numpy(np.asarray(labels[idx], dtype=np.int64)).to(dev, non_blocking=True)
            with extractor.autocast():
                loss = F.cross_entropy(net(extractor.network_input(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.detach() * len(idx)  # no host sync per batch
            seen += len(idx)
            bar.update(len(idx))
        train_loss = float(total) / seen
        if not np.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss is {train_loss} in epoch {epoch}; lower finetune.lr / finetune.backbone_lr "
                "or set extract.precision: fp32"
            )
        logits = _logits(extractor, val_images, batch_size)
        val_loss = F.cross_entropy(logits, yva).item()
        val_acc = (logits.argmax(1) == yva).float().mean().item()
        curve.append({"epoch": epoch, "train_loss": train_loss, "validation_loss": val_loss,
                      "validation_accuracy": val_acc})
        logging.info("epoch %d: train loss %.4f, validation loss %.4f, accuracy %.4f",
                     epoch, train_loss, val_loss, val_acc)
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(net.state_dict()))
    seconds = time.perf_counter() - start
    bar.close()
    net.load_state_dict(best[2])

    predictions = {
        name: (torch.softmax(_logits(extractor, split_images, batch_size), dim=1).numpy(), np.asarray(split_labels))
        for name, (split_images, split_labels) in splits.items()
    }
    metrics = {
        "method": "finetune",
        "head_kind": FINETUNED,
        "feature_dim": int(backbone.feature_dim),
        **classification_metrics(predictions, class_names),
        "best_epoch": best[1],
        "train_seconds": seconds,
        "device": str(dev),
        "precision": extractor.precision,
        "curve": curve,
    }
    finetuned = {
        "spec": spec.to_dict(),
        "config": dict(cfg),
        "class_names": list(class_names),
        "feature_dim": int(backbone.feature_dim),
        "preprocess": asdict(backbone.preprocess),
        "backbone": {k: v.detach().cpu() for k, v in net.backbone.state_dict().items()},
        "classifier": {k: v.detach().cpu() for k, v in net.classifier.state_dict().items()},
    }
    return finetuned, metrics


def save_finetuned(path: str | os.PathLike, finetuned: dict) -> None:
    with atomic_write(path) as f:
        torch.save(finetuned, f)


def is_finetuned(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a fine-tuned network rather than a head file.

    Memory-mapped (``weights_only``): telling the two apart does not read the backbone.
    """
    contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return isinstance(contents, dict) and {"spec", "backbone", "classifier"} <= set(contents)


def load_finetuned(path: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None) -> tuple[Backbone, dict]:
    """Rebuild a fine-tuned network from its file (``weights_only``: no code runs on load).

    The architecture is rebuilt with :func:`load_backbone` from the stored spec (so its
    pretrained weights must be loadable as for extraction, e.g. from ``checkpoint_dir``)
    and then overwritten with the fine-tuned ones: building it any other way could miss
    settings that are not in a state dict (torchvision's Inception-v3 ``transform_input``).
    The result is a :class:`Backbone` whose model outputs class logits
    (``feature_dim`` = the number of classes), in ``eval()`` mode, with the preprocessing
    it was trained with: ``Extractor(backbone).run(uint8_images)`` classifies images.
    """
    finetuned = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"spec", "class_names", "feature_dim", "preprocess", "backbone", "classifier"} - set(finetuned)
    if missing:
        raise ValueError(f"{path}: not a fine-tuned network file (missing {sorted(missing)})")
    spec = NetworkSpec(**finetuned["spec"])
    base = load_backbone(spec, checkpoint_dir)
    n_classes = len(finetuned["class_names"])
    net = build_classifier_net(base.model, finetuned["feature_dim"], n_classes)
    try:
        net.backbone.load_state_dict(finetuned["backbone"], strict=True)
        net.classifier.load_state_dict(finetuned["classifier"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {spec.arch}: {err}") from err
    # The stored spec rebuilds the preprocessing it was trained with (the file also keeps
    # it, under "preprocess", for readers without the project).
    return Backbone(net.eval().requires_grad_(False), base.preprocess, n_classes), finetuned
