"""Bottleneck feature extraction: uint8 batches in, float32 penultimate features out.

The hot path does no per-image Python work: a batch of prepared uint8 images goes to
the device as is, and resizing, cropping, normalisation and the network run there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm import tqdm

from .devices import resolve_device
from .files import atomic_write
from .networks import Backbone
from .preprocess import DevicePreprocess


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast where the GPU supports it, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExtractionResult:
    features: np.ndarray  # float32 (N, D)
    seconds: float  # computing time, model loading excluded
    images_per_second: float  # over the images computed in this run (resumed shards excluded)
    device: str
    precision: str
    n_computed: int  # images computed in this run; the rest came from earlier shards


class Extractor:
    """A backbone on its device with its preprocessing and precision, ready for batches."""

    def __init__(self, backbone: Backbone, device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool = False):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.feature_dim = backbone.feature_dim
        self.prep = DevicePreprocess(backbone.preprocess).to(self.device)
        model = backbone.model.to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model
        # Lowered when a batch runs out of device memory; None = the caller's batch size.
        self.max_batch_size: int | None = None

    def autocast(self):
        """The precision's autocast context (none for fp32)."""
        if self.precision in _AUTOCAST_DTYPES:
            return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])
        return contextlib.nullcontext()

    def to_device(self, images: np.ndarray) -> torch.Tensor:
        """A uint8 batch on the device, copied without waiting for the copy to finish."""
        # A copy of just this batch (read from the memory map, if that is what ``images``
        # is): host memory is bounded by the batch, not the dataset.
        batch = torch.from_numpy(np.array(images, dtype=np.uint8, order="C"))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def network_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A uint8 batch on the device as the network takes it: preprocessed, channels-last on CUDA."""
        x = self.prep(batch)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def run(self, images: np.ndarray, batch_size: int, bar: tqdm | None = None) -> np.ndarray:
        """Features of ``images`` (any array that slices into uint8 NHWC batches), in order.

        A batch that runs out of device memory is retried at half the batch size (logged),
        and the smaller size is kept for the rest of this extractor's batches; out of
        memory at batch size 1 is an error that says what to change.
        """
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        n = len(images)
        batch_size = min(batch_size, self.max_batch_size or batch_size)
        # Features stay on the device until the end (one copy back, no sync per batch), so
        # the host queues batch after batch while the GPU works; callers bound n by sharding.
        features = torch.empty((n, self.feature_dim), dtype=torch.float32, device=self.device)
        with torch.inference_mode(), self.autocast():
            start = 0
            nxt = self.to_device(images[:batch_size]) if n else None
            while start < n:
                batch = nxt
                end = start + len(batch)
                try:
                    if end < n:  # queue the next copy while this batch computes
                        nxt = self.to_device(images[end:end + batch_size])
                    x = self.network_input(batch)
                    features[start:end] = self.model(x).float()
                except Exception as err:
                    if not is_out_of_memory(err):
                        raise
                    del batch
                    nxt = x = None
                    batch_size = self._smaller_batch(end - start, err)
                    nxt = self.to_device(images[start:start + batch_size])
                    continue
                if bar is not None:
                    bar.update(end - start)
                start = end
        out = features.cpu().numpy()
        if not np.isfinite(out).all():
            raise FloatingPointError(
                f"non-finite features from {self.precision} extraction; try extract.precision: fp32"
            )
        return out

    def _smaller_batch(self, failed: int, err: Exception) -> int:
        """Half the batch that ran out of memory, remembered for later batches."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if failed <= 1:
            raise RuntimeError(
                f"out of memory on {self.device} at batch size 1 ({err}); free the device, or use a "
                "smaller input_size, extract.precision: bf16/fp16, or another device"
            ) from err
        smaller = failed // 2
        logging.warning("out of memory on %s at batch size %d; retrying with batch size %d",
                        self.device, failed, smaller)
        self.max_batch_size = smaller
        return smaller


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or another backend's out-of-memory RuntimeError (MPS, XPU)."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, (oom, torch.cuda.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def _progress(total: int, stream: IO[str] | None, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, unit="img", file=stream, disable=stream is None, mininterval=2.0)


def extract_features(
    backbone: Backbone,
    images: np.ndarray,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    progress: IO[str] | None = None,
) -> ExtractionResult:
    """Penultimate-layer features for every image, in order, as float32."""
    extractor = Extractor(backbone, device, precision)
    with _progress(len(images), progress) as bar:
        start = time.perf_counter()
        features = extractor.run(images, batch_size, bar)
        seconds = time.perf_counter() - start
    return ExtractionResult(features, seconds, _rate(len(images), seconds), str(extractor.device),
                            extractor.precision, len(images))


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def _read_shard(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A saved shard, or None (with a warning) when it cannot be used: truncated or
    overwritten by hand, or of another shape. It is then computed again, never trusted."""
    try:
        shard = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        logging.warning("%s: unreadable shard (%s: %s); recomputing it", path, type(err).__name__, err)
        return None
    if shard.shape != shape or shard.dtype != np.float32:
        logging.warning("%s: %s %s, expected float32 %s; recomputing it", path, shard.dtype, shard.shape, shape)
        return None
    return shard


def extract_sharded(
    extractor: Extractor,
    images: np.ndarray,
    shard_dir: str | os.PathLike,
    shard_size: int,
    batch_size: int = 256,
    progress: IO[str] | None = None,
) -> ExtractionResult:
    """Extract in shards of ``shard_size`` images, each saved atomically under ``shard_dir``.

    Shards already there are loaded, not recomputed: a job killed mid-way loses at most
    the shard in flight. ``shard_dir`` must be specific to the network, code and shard
    size (the caller puts a fingerprint of them in its name); the shards themselves go
    into a folder named for the device type and precision this extractor computes at, so
    a job resumed on another kind of node (fp32 on a CPU after bf16 on a GPU) never
    stitches two precisions into one result.
    """
    shard_dir = Path(shard_dir) / f"{extractor.device.type}-{extractor.precision}"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    bounds = [(lo, min(n, lo + shard_size)) for lo in range(0, n, shard_size)]
    paths = [shard_dir / f"shard-{k:05d}.npy" for k in range(len(bounds))]
    done = {k for k, path in enumerate(paths) if path.is_file()}
    if done:
        logging.info("resuming: %d of %d shards already extracted in %s", len(done), len(paths), shard_dir)
    out = np.empty((n, extractor.feature_dim), dtype=np.float32)
    seconds, computed = 0.0, 0
    with _progress(n, progress, initial=sum(hi - lo for k, (lo, hi) in enumerate(bounds) if k in done)) as bar:
        for k, ((lo, hi), path) in enumerate(zip(bounds, paths, strict=True)):
            if k in done:
                shard = _read_shard(path, (hi - lo, extractor.feature_dim))
                if shard is not None:
                    out[lo:hi] = shard
                    continue
                bar.update(lo - hi)  # counted as done above; computed again below
            start = time.perf_counter()
            out[lo:hi] = extractor.run(images[lo:hi], batch_size, bar)
            seconds += time.perf_counter() - start
            computed += hi - lo
            with atomic_write(path) as f:
                np.save(f, out[lo:hi])
    return ExtractionResult(out, seconds, _rate(computed, seconds), str(extractor.device), extractor.precision,
                            computed)


# --- one split in several jobs (extract.parts) ---


def part_bounds(n: int, parts: int, shard_size: int, what: str = "the split") -> list[tuple[int, int]]:
    """The rows [lo, hi) of each of ``parts`` jobs extracting one split of ``n`` images.

    Parts are cut on shard boundaries, and the shards shared out as evenly as they go: every
    batch then holds the images it holds in a one-part run (shards are batched alone), so
    the gathered features are the one-part run's, byte for byte. ``what`` names the split
    in the error: a part with no shard of its own would be an empty job.
    """
    if parts < 1:
        raise ValueError(f"extract.parts must be at least 1, got {parts}")
    shards = -(-n // shard_size)
    if parts > shards:
        raise ValueError(
            f"extract.parts: {parts} for {what}, which has {n} images, {shards} shard(s) of "
            f"extract.shard_size {shard_size}: each part needs a shard of its own. Set extract.parts "
            f"to at most {shards} for this split, or a smaller extract.shard_size."
        )
    cuts = [k * shards // parts * shard_size for k in range(parts)] + [n]
    return [(cuts[k], min(n, cuts[k + 1])) for k in range(parts)]


def gather_parts(paths: list[str | os.PathLike], records: list[dict], n: int) -> np.ndarray:
    """One split's features from its parts' ``.npy`` files, in order, checked first.

    ``records`` are the parts' JSON records (``part``, ``parts``, ``rows``, ``device``,
    ``precision``, ``meta``). Refused, naming the part: parts of another count, rows that do
    not tile ``0..n`` in order (a part made with another shard size or split size), or parts
    computed on different device types or precisions (the features would not be one run's).
    Each part is read through a memory map and copied into place, so host memory holds the
    result and the page cache, not a second copy.
    """
    if len(paths) != len(records):
        raise ValueError(f"{len(paths)} part files but {len(records)} records")
    first = records[0]
    expected = 0
    for k, (path, rec) in enumerate(zip(paths, records, strict=True)):
        if rec["part"] != k or rec["parts"] != len(records):
            raise ValueError(f"{path}: part {rec['part']} of {rec['parts']}, expected part {k} of {len(records)}")
        for key in ("device", "precision", "meta"):
            if rec[key] != first[key]:
                raise ValueError(
                    f"{path}: computed with {key} {rec[key]!r}, part 0 with {first[key]!r}; parts of one split "
                    "must be computed alike. Delete the split's results/parts/ folder (or pin extract.device "
                    "and extract.precision) and rerun"
                )
        lo, hi = rec["rows"]
        if lo != expected or hi < lo:
            raise ValueError(
                f"{path}: rows {lo}..{hi}, expected to start at {expected}; the parts were made with "
                "different extract.shard_size or datasets: delete the split's results/parts/ folder and rerun"
            )
        expected = hi
    if expected != n:
        raise ValueError(f"the parts cover {expected} rows, the split has {n} images; delete the split's "
                         "results/parts/ folder and rerun")
    out = None
    for path, rec in zip(paths, records, strict=True):
        part = np.load(path, mmap_mode="r", allow_pickle=False)
        lo, hi = rec["rows"]
        if out is None:
            out = np.empty((n, part.shape[1] if part.ndim == 2 else 0), dtype=np.float32)
        if part.dtype != np.float32 or part.shape != (hi - lo, out.shape[1]):
            raise ValueError(f"{path}: {part.dtype} {part.shape}, expected float32 {(hi - lo, out.shape[1])}")
        out[lo:hi] = part
        del part
    return out
