"""Preprocessing: how an image becomes a network input, at training time and at predict time.

Preparation stores every image once as a uint8 square (:func:`transfer_lab.storage.to_storage`, PIL bicubic);
extraction and fine-tuning apply the weights' eval transform (:class:`Preprocess`) to
batches of stored images on the device (:class:`DevicePreprocess`); predict and export
repeat the storage step in torch on one image of any size (:class:`StorageResize`). A
dataset kept as its files (``store: files``) has no storage step: extraction applies the
eval transform to each decoded file, and so do predict and export
(:meth:`DevicePreprocess.traced_matrices` for any size inside an exported graph).
Both torch halves resample with Pillow's filters and 22-bit fixed-point weights, written
once (:func:`resize_rows`), so a new image meets the network as a training image did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .sources import storage_fit, storage_size
from .sources.base import DatasetSpec
from .storage import STORAGE_INTERPOLATION, check_fit

# Pillow's fixed-point filter weights (Resample.c: PRECISION_BITS).
_PIL_ONE = float(1 << 22)
# Resize matrices kept per DevicePreprocess (one pair per input size; a few MB at most).
_MATRIX_CACHE = 256


@dataclass(frozen=True)
class Preprocess:
    """Eval transform of the weights: resize the shorter side, centre-crop, normalise."""

    resize: int
    crop: int
    interpolation: str  # "bilinear" | "bicubic" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> str:
        return (
            f"resize {self.resize} {self.interpolation}, crop {self.crop}, "
            f"mean {tuple(round(m, 4) for m in self.mean)}, std {tuple(round(s, 4) for s in self.std)}"
        )


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's ``Resize(int)``: the shorter side to ``shorter``, aspect kept."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


# --- Pillow's resampling, as matrices ---------------------------------------------------


def _pil_filter(interpolation: str) -> tuple[float, Callable[[torch.Tensor], torch.Tensor]]:
    """PIL's resampling filters (support, kernel), as in Pillow's Resample.c."""
    if interpolation == "bicubic":
        a = -0.5

        def cubic(x: torch.Tensor) -> torch.Tensor:
            x = x.abs()
            return torch.where(
                x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)),
            )

        return 2.0, cubic
    if interpolation == "bilinear":
        return 1.0, lambda x: torch.clamp(1.0 - x.abs(), min=0.0)
    raise ValueError(f"no PIL filter for interpolation {interpolation!r}")


def resize_rows(in_size: int, out_index: torch.Tensor, scale: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Rows ``out_index`` of the (out, in) float64 matrix whose product with a row of
    pixels is PIL's resize of that row.

    ``scale`` is in_size / out_size as a float64 0-d tensor. Pillow's coefficients,
    antialiased when shrinking (the filter widens by the scale) and rounded to its 22-bit
    fixed point, so one matrix product reproduces ``Image.resize`` for up- and
    down-sampling alike, on any device. Torch operations only, and ``in_size`` never
    becomes a Python float, so ``torch.export`` keeps the input size symbolic.
    """
    device = out_index.device
    j = torch.arange(in_size, dtype=torch.float64, device=device)[None, :]
    center = (out_index.to(torch.float64) + 0.5) * scale
    if interpolation == "nearest":
        source = torch.minimum(torch.floor(center), torch.full_like(center, in_size - 1))
        return (j == source[:, None]).to(torch.float64)
    support, kernel = _pil_filter(interpolation)
    filterscale = torch.clamp(scale, min=1.0)
    support = support * filterscale
    lo = torch.clamp(torch.trunc(center - support + 0.5), min=0.0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), torch.full_like(center, in_size))
    x = (j - center[:, None] + 0.5) / filterscale
    k = torch.where((j >= lo[:, None]) & (j < hi[:, None]), kernel(x), torch.zeros_like(x))
    m = k / k.sum(dim=1, keepdim=True)
    # Pillow's 22-bit fixed-point coefficients, rounded half away from zero.
    return torch.trunc(m * _PIL_ONE + torch.copysign(torch.full_like(m, 0.5), m)) / _PIL_ONE


def resize_matrix(in_size: int, out_size: int, interpolation: str) -> torch.Tensor:
    """The whole (out_size, in_size) matrix of :func:`resize_rows`, for sizes known in advance."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float64)
    return resize_rows(in_size, torch.arange(out_size), scale, interpolation)


class DevicePreprocess(nn.Module):
    """The weights' eval transform, applied to a whole uint8 NHWC batch on the device.

    Resize-then-centre-crop is two matrix products with Pillow's own filter weights
    (rows outside the crop are never computed), rounding to uint8 levels after each
    pass as Pillow does: the per-image PIL pipeline the weights were trained with,
    reproduced to within one grey level, batched, on the GPU.
    """

    def __init__(self, p: Preprocess):
        super().__init__()
        self.p = p
        self.register_buffer("mean", 255.0 * torch.tensor(p.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", 255.0 * torch.tensor(p.std).view(1, 3, 1, 1), persistent=False)
        self._matrices: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def matrices(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The resize-and-crop matrices of ``height`` x ``width`` images (:meth:`traced_matrices`,
        computed on the CPU), checked and cached per size and device."""
        key = (height, width, str(device))
        if key not in self._matrices:
            if len(self._matrices) >= _MATRIX_CACHE:  # images from files come in many sizes: keep the recent ones
                del self._matrices[next(iter(self._matrices))]
            new_h, new_w = resized_size(height, width, self.p.resize)
            if self.p.crop > min(new_h, new_w):
                raise ValueError(f"crop {self.p.crop} is larger than the resized image {new_h}x{new_w}")
            rows, cols = self.traced_matrices(height, width, torch.device("cpu"))
            self._matrices[key] = (rows.to(device), cols.to(device))
        return self._matrices[key]

    def traced_matrices(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (crop, height) row and (width, crop) column matrices of resize-then-centre-crop,
        only the kept rows and columns, computed with torch operations from the sizes (no
        Python arithmetic on them, no cache), so that ``torch.export`` keeps height and width
        symbolic: the weights' transform of images of any size inside an exported graph, with
        the very numbers extraction uses (:meth:`matrices` caches these)."""
        p = self.p
        h = torch.full((), height, dtype=torch.float64, device=device)
        w = torch.full((), width, dtype=torch.float64, device=device)
        resize = torch.full((), p.resize, dtype=torch.float64, device=device)
        # resized_size: the shorter side to resize, the longer int(resize * longer / shorter).
        new_h = torch.where(h <= w, resize, torch.floor(resize * h / w))
        new_w = torch.where(h <= w, torch.floor(resize * w / h), resize)
        # The centre crop's offsets, round((new - crop) / 2): Python's round and torch's both
        # round halves to even.
        index = torch.arange(p.crop, dtype=torch.float64, device=device)
        rows = resize_rows(height, index + torch.round((new_h - p.crop) / 2), h / new_h, p.interpolation)
        cols = resize_rows(width, index + torch.round((new_w - p.crop) / 2), w / new_w, p.interpolation)
        return rows.to(torch.float32), cols.T.to(torch.float32)

    def forward(self, images: torch.Tensor, traced: bool = False) -> torch.Tensor:
        """uint8 NHWC -> the network's normalised NCHW input; ``traced``: the resize matrices
        from :meth:`traced_matrices` (the same numbers, for any size in an exported graph)."""
        height, width = images.shape[1], images.shape[2]
        rows, cols = (self.traced_matrices if traced else self.matrices)(height, width, images.device)
        with torch.autocast(images.device.type, enabled=False):  # exact, whatever the precision
            x = images.permute(0, 3, 1, 2).float()
            # Horizontal pass, then vertical, each rounded half up to uint8, as Pillow.
            x = (x @ cols).add_(0.5).floor_().clamp_(0, 255)
            x = (rows @ x).add_(0.5).floor_().clamp_(0, 255)
            return (x - self.mean) / self.std


# --- the storage step: preparation, and its twin inside an exported model ---------------


@dataclass(frozen=True)
class Storage:
    """The square storage size images were resized to at preparation, and how they were fit;
    :data:`AS_FILES` for a dataset kept as its original files (``store: files``), which has no
    storage step: extraction took each decoded file straight to the network's own resize."""

    size: int | None
    fit: str | None  # one of storage.FITS; None with size None

    @property
    def as_files(self) -> bool:
        return self.size is None


AS_FILES = Storage(None, None)


def storage_for(spec: DatasetSpec) -> Storage:
    """The storage step of a dataset (``image_size`` or its source's default, and its source's
    fit); :data:`AS_FILES` for one kept as its files."""
    return AS_FILES if spec.store == "files" else Storage(storage_size(spec), storage_fit(spec))


class StorageResize(nn.Module):
    """:func:`transfer_lab.storage.to_storage` for one uint8 (H, W, 3) tensor of any size.

    ``squash`` resizes to size x size; ``crop`` resizes the shorter side to ``size`` and
    keeps the centre square (only the kept rows and columns are computed). Horizontal
    pass, then vertical, each rounded to uint8 levels as Pillow does. The weights are
    computed from the input's height and width inside the module, so an exported graph
    takes any image size. For :data:`AS_FILES` it passes the image on unchanged.
    """

    def __init__(self, storage: Storage):
        super().__init__()
        self.as_files = storage.as_files  # no storage step: the image passes as it is
        if not self.as_files:
            check_fit(storage.fit)
        self.size = None if self.as_files else int(storage.size)
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
            return resize_rows(n, index + offset, n_t / new, STORAGE_INTERPOLATION)
        return resize_rows(n, index, n_t / size, STORAGE_INTERPOLATION)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.as_files:
            return image
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
