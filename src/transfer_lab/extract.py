"""Bottleneck feature extraction: uint8 batches in, float32 penultimate features out.

The hot path does no per-image Python work: a batch of prepared uint8 images goes to
the device as is, and resizing, cropping, normalisation and the network run there.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from .networks import Backbone, Preprocess


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("extract.device is 'cuda' but torch sees no CUDA device")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DevicePreprocess(nn.Module):
    """The weights' eval transform, applied to a whole uint8 NHWC batch on the device."""

    def __init__(self, p: Preprocess):
        super().__init__()
        self.p = p
        self.interpolation = InterpolationMode(p.interpolation)
        self.register_buffer("mean", torch.tensor(p.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(p.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        x = TF.resize(x, [self.p.resize], interpolation=self.interpolation, antialias=True)
        x = TF.center_crop(x, [self.p.crop, self.p.crop])
        # PIL clamps bicubic overshoot to the uint8 range; match it.
        x = x.clamp_(0.0, 1.0)
        return (x - self.mean) / self.std


@dataclass
class ExtractionResult:
    features: np.ndarray  # float32 (N, D)
    seconds: float
    images_per_second: float
    device: str
    precision: str


def extract_features(
    backbone: Backbone,
    images: np.ndarray,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    progress: IO[str] | None = None,
) -> ExtractionResult:
    """Penultimate-layer features for every image, in order, as float32."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = backbone.model.to(dev)
    prep = DevicePreprocess(backbone.preprocess).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(dev.type, dtype=_AUTOCAST_DTYPES[prec])
        if prec in _AUTOCAST_DTYPES
        else contextlib.nullcontext()
    )
    n = len(images)
    out = np.empty((n, backbone.feature_dim), dtype=np.float32)
    bar = tqdm(total=n, unit="img", file=progress, disable=progress is None, mininterval=2.0)

    def to_device(start: int) -> torch.Tensor:
        batch = torch.from_numpy(images[start:start + batch_size])
        if dev.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(dev, non_blocking=True)

    start_time = time.perf_counter()
    with torch.inference_mode(), autocast:
        nxt = to_device(0) if n else None
        for start in range(0, n, batch_size):
            batch = nxt
            if start + batch_size < n:  # queue the next copy while this batch computes
                nxt = to_device(start + batch_size)
            x = prep(batch)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            feats = model(x)
            out[start:start + len(batch)] = feats.float().cpu().numpy()
            bar.update(len(batch))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start_time
    bar.close()
    if not np.isfinite(out).all():
        raise FloatingPointError(
            f"non-finite features from {prec} extraction; try extract.precision: fp32"
        )
    return ExtractionResult(out, seconds, n / seconds if seconds > 0 else float("inf"), str(dev), prec)
