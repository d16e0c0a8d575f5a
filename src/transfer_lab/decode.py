"""Network inputs straight from image files: for datasets stored as their original files.

A prepared dataset stored as files (``PreparedDataset.files``) holds paths, not pixels,
so the extraction job decodes. Host threads read the bytes (and decode what is not a
JPEG, through the same PIL path as preparation); JPEGs are decoded in one batched
``torchvision.io.decode_jpeg`` call, on the GPU (nvjpeg) when extracting on CUDA, so the
host's cores do not cap a fast GPU; each image is then turned upright by its EXIF
orientation, resized (shorter side to the weights' resize, Pillow's antialiased filter,
:class:`~transfer_lab.preprocess.DevicePreprocess`), centre-cropped and normalised on the
device, images of one size together, and stacked into the network's batch.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetError
from .images import as_rgb, decode_image
from .preprocess import DevicePreprocess

DECODES = ("auto", "cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112  # the EXIF tag


def decode_device(decode: str, device: torch.device) -> torch.device:
    """Where JPEGs are decoded: ``auto`` on the extraction device when it is CUDA (nvjpeg),
    else on the CPU; ``gpu`` without a CUDA extraction device is an error, not a silent CPU run."""
    if decode not in DECODES:
        raise ValueError(f"extract.decode must be one of {', '.join(DECODES)}, not {decode!r}")
    if decode == "cpu" or (decode == "auto" and device.type != "cuda"):
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"extract.decode: gpu needs a CUDA extraction device; this job extracts on {device}")
    return device


@dataclass
class RawImage:
    """One file as the host threads leave it: JPEG bytes for the GPU to decode, or decoded pixels."""

    path: str
    jpeg: torch.Tensor | None  # uint8 (nbytes,) of a JPEG file, decoded later in one batch on the GPU
    pixels: torch.Tensor | None  # uint8 (3, H, W), upright: decoded on the host thread
    orientation: int  # EXIF orientation (1-8) still to apply to the GPU-decoded JPEG


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) image turned upright as ``PIL.ImageOps.exif_transpose`` does, on any device."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


def _jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation of JPEG bytes (1 when absent or unreadable), from the header only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a broken EXIF block keeps the pixels as stored, as images.open_upright
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_raw(path: str, gpu_jpeg: bool) -> RawImage:
    """One file read (and, unless it is a JPEG for the GPU, decoded) on a host thread; a
    missing, empty or unreadable file is a ``DatasetError`` naming it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot be read ({err})") from err
    if data.startswith(_JPEG_MAGIC):
        jpeg, orientation = torch.frombuffer(bytearray(data), dtype=torch.uint8), _jpeg_orientation(data)
        if gpu_jpeg:
            return RawImage(path, jpeg, None, orientation)
        try:
            image = decode_jpeg(jpeg, mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise _unreadable(path, err) from err
        return RawImage(path, None, orient(image, orientation), 1)
    # PNG, BMP, PPM, ...: the decoding of preparation (any mode to RGB, EXIF upright).
    pixels = np.array(as_rgb(decode_image(data, path)), dtype=np.uint8)
    return RawImage(path, None, torch.from_numpy(pixels).permute(2, 0, 1), 1)


def _unreadable(path: str, err: Exception) -> DatasetError:
    return DatasetError(f"{path}: not a readable JPEG ({err}); replace or remove the file")


class Reads:
    """The files of one batch being read on the host threads."""

    def __init__(self, futures: list[Future]):
        self.futures = futures

    def result(self) -> list[RawImage]:
        """The batch's files in order; the first file (in batch order) that failed raises."""
        return [f.result() for f in self.futures]

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()


class FileInputs:
    """Batches of image paths -> the network's normalised input, (n, 3, crop, crop) float32 on ``device``.

    ``submit`` starts reading a batch on the host threads (call it for the next batch
    before computing this one); ``to_input`` decodes, orients, resizes, crops and
    normalises on the device.
    """

    def __init__(self, prep: DevicePreprocess, device: torch.device, decode: str = "auto", threads: int = 4):
        self.prep = prep
        self.device = device
        self.decode_on = decode_device(decode, device)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="read-images")

    def submit(self, paths: np.ndarray | list[str]) -> Reads:
        """Start reading ``paths`` on the host threads."""
        gpu_jpeg = self.decode_on.type == "cuda"
        return Reads([self.pool.submit(read_raw, str(p), gpu_jpeg) for p in paths])

    def __call__(self, paths: np.ndarray | list[str]) -> torch.Tensor:
        return self.to_input(self.submit(paths).result())

    def decoded(self, raws: list[RawImage]) -> list[torch.Tensor]:
        """Every image as uint8 (3, H, W) on the extraction device, upright: the JPEGs left
        for the GPU decoded in one batched call, the rest uploaded as the host decoded them."""
        from torchvision.io import ImageReadMode, decode_jpeg

        jpegs = [k for k, r in enumerate(raws) if r.jpeg is not None]
        out: list[torch.Tensor | None] = [None] * len(raws)
        if jpegs:
            try:
                images = decode_jpeg([raws[k].jpeg for k in jpegs], mode=ImageReadMode.RGB, device=self.decode_on)
            except RuntimeError as err:
                if "out of memory" in str(err).lower():
                    raise
                # One file nvjpeg cannot take (CMYK, an unusual sampling, a corrupt file) fails
                # the batch: decode one by one, on the CPU where the GPU refuses.
                images = [self._one_by_one(raws[k], err) for k in jpegs]
            for k, image in zip(jpegs, images, strict=True):
                out[k] = orient(image, raws[k].orientation)
        for k, r in enumerate(raws):
            if r.pixels is not None:
                out[k] = r.pixels.to(self.device, non_blocking=True)
        return out  # type: ignore[return-value]

    def _one_by_one(self, raw: RawImage, err: Exception) -> torch.Tensor:
        """A JPEG of a batch that failed on the GPU: decoded alone there, else on the CPU
        (logged), else a ``DatasetError`` naming the file."""
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(raw.jpeg, mode=ImageReadMode.RGB, device=self.decode_on)
        except RuntimeError as gpu_err:
            if "out of memory" in str(gpu_err).lower():
                raise
        try:
            image = decode_jpeg(raw.jpeg, mode=ImageReadMode.RGB)
        except RuntimeError as cpu_err:
            raise _unreadable(raw.path, cpu_err) from err
        logging.warning("%s: decoded on the CPU (the GPU decoder refused it: %s)", raw.path, err)
        return image.to(self.device)

    def to_input(self, raws: list[RawImage]) -> torch.Tensor:
        """The network's input for one batch: images of one size go through the weights'
        eval transform together (one pair of resize matrices per size), in the batch's order."""
        images = self.decoded(raws)
        crop = self.prep.p.crop
        x = torch.empty((len(images), 3, crop, crop), dtype=torch.float32, device=self.device)
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, image in enumerate(images):
            by_size.setdefault(tuple(image.shape[1:]), []).append(k)
        for members in by_size.values():
            group = torch.stack([images[k] for k in members]).permute(0, 2, 3, 1)  # NHWC, as DevicePreprocess takes
            x[members] = self.prep(group)
        return x


def is_file_list(items) -> bool:
    """Whether a split's items are image paths (a dataset stored as files) rather than pixels."""
    return isinstance(items, (list, tuple)) or (isinstance(items, np.ndarray) and items.dtype.kind in "USO")

