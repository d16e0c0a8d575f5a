"""Bottleneck feature extraction: uint8 batches in, float32 penultimate features out.

The hot path does no per-image Python work: a batch of prepared uint8 images goes to
the device as is, and resizing, cropping, normalisation and the network run there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from .devices import resolve_device
from .files import atomic_write
from .networks import Backbone
from .preprocess import DevicePreprocess

if TYPE_CHECKING:
    from .decode import Reads
    from .specs import ExtractSettings


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


COMPILE_MODES = (False, True, "max-autotune", "auto")
log = logging.getLogger(__name__)

# ``compile: auto`` compiles where benchmarks/compile_cache.py shows that compiling pays for
# itself even with nothing in the compile cache (benchmarks/README.md has the numbers):
# - CPU (2 cores, torch 2.14.1): never. Compiled runs at 0.37 of eager (resnet18 at 32 px) to
#   2.5 (EfficientNet-Lite0 at 96 px), after 21-49 s of cold compilation (2-3 s warm): which
#   way it goes depends on the network and the input size, so auto does not bet on it.
# - CUDA: from 3 million images in a job. An H200 runs ResNet-50 bf16 at 18,621 images/s
#   compiled against 13,289 eager, 22 us saved per image; a minute of cold compilation (an
#   estimate: compile times are not measured on a GPU yet) is paid back after 2.8 million,
#   and a job's last, smaller batch can cost a second compilation (a dynamic batch size).
AUTO_COMPILE_MIN_IMAGES = {"cuda": 3_000_000}


def auto_compile(device_type: str, n_images: int | None) -> tuple[bool, str]:
    """What ``compile: auto`` does for a job of ``n_images`` on a device of this type, and why
    (for the log): on only where the measurements say compiling pays for itself."""
    threshold = AUTO_COMPILE_MIN_IMAGES.get(device_type)
    if threshold is None:
        return False, device_type
    if n_images is None:
        return False, f"{device_type}, the number of images not known"
    if n_images < threshold:
        return False, f"{device_type}, {n_images:,} images: under {threshold:,}"
    return True, f"{device_type}, {n_images:,} images: at least {threshold:,}"


def resolve_compile(setting: bool | str, device: torch.device | str, n_images: int | None = None) -> bool | str:
    """The ``compile`` an Extractor uses: the setting itself, or for ``auto`` on or off by
    :func:`auto_compile` (logged: ``compile: auto -> off (cpu)``)."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"extract.compile must be one of {COMPILE_MODES}, not {setting!r}")
    if setting != "auto":
        return setting
    on, why = auto_compile(torch.device(device).type, n_images)
    log.info("compile: auto -> %s (%s)", "on" if on else "off", why)
    return on


def _folder_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_")


def compile_cache_dir(setting: str | os.PathLike | None, device: torch.device | str) -> Path:
    """Where compiled kernels of this torch and device are kept between jobs:
    ``<base>/<torch version>-<device name>``, the base being ``extract.compile_cache`` when
    set (a folder every node sees, on a cluster), else ``$TORCHINDUCTOR_CACHE_DIR`` when the
    environment sets it (used as it is), else the user's cache folder
    (``$XDG_CACHE_HOME/transfer-lab/compile``, by default under ``~/.cache``)."""
    from .catalog import cache_dir

    device = torch.device(device)
    if setting is None and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = Path(setting).expanduser() if setting is not None else cache_dir() / "compile"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return base / _folder_name(f"{torch.__version__}-{name}")


def use_compile_cache(folder: str | os.PathLike) -> Path:
    """Make ``folder`` the compile cache of this process: torch inductor's FX graph and
    AOTAutograd caches (on by default) and Triton's kernels (under it unless
    ``$TRITON_CACHE_DIR`` says otherwise) are written there and read from there, so a second
    job compiling the same network at the same shapes on the same device reuses them.
    Call it before the first compilation: inductor reads the variable when it compiles."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


class Extractor:
    """A backbone on its device with its preprocessing and precision, ready for batches.

    ``compile``: ``True`` runs the network through ``torch.compile``, ``"max-autotune"``
    with its autotuning of kernels too (minutes of compilation, for big datasets), ``"auto"``
    compiles where it pays for itself (:func:`auto_compile`: on CUDA, from ``n_images``, the
    number of images the job computes). A compiling extractor keeps its kernels in
    :func:`compile_cache_dir` of ``compile_cache`` (``extract.compile_cache``) for the next job.
    ``cuda_graph``: on CUDA, preprocessing and network of a full batch are captured once in
    a CUDA graph and replayed (one launch per batch instead of hundreds); the last, smaller
    batch runs eagerly. On CUDA, uint8 batches are staged in pinned buffers allocated once
    and copied on a side stream while the previous batch computes. ``decode`` says where
    the JPEGs of a dataset stored as files are decoded (:mod:`transfer_lab.decode`). None of
    these changes a feature value beyond the device's own rounding; on the CPU the graph
    and the staging are not used.
    """

    def __init__(self, backbone: Backbone, device: str | torch.device = "auto", precision: str = "auto",
                 compile: bool | str = False, cuda_graph: bool = False, decode: str = "auto",
                 n_images: int | None = None, compile_cache: str | os.PathLike | None = None):
        if compile not in COMPILE_MODES:
            raise ValueError(f"extract.compile must be one of {COMPILE_MODES}, not {compile!r}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        compile = resolve_compile(compile, self.device, n_images)
        self.compile = compile
        self.compile_cache = use_compile_cache(compile_cache_dir(compile_cache, self.device)) if compile else None
        self.precision = resolve_precision(precision, self.device)
        self.feature_dim = backbone.feature_dim
        # Called once, after this extractor's first batch has computed (synchronised on CUDA).
        self.on_first_batch: Callable[[], object] | None = None
        self.prep = DevicePreprocess(backbone.preprocess).to(self.device)
        model = backbone.model.to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        if compile:
            # With our own graph, inductor must not capture its own (cudagraph trees) inside it.
            mode = "max-autotune-no-cudagraphs" if compile == "max-autotune" and self.cuda_graph else (
                compile if isinstance(compile, str) else None)
            model = torch.compile(model, mode=mode)
        self.model = model
        self.decode = decode
        self._files = None  # a decode.FileInputs, made on the first batch of files
        self._graphs: dict[tuple, _Graph | None] = {}  # input shape -> captured graph (None: capture failed)
        self._staging: _Staging | None = None
        # Lowered when a batch runs out of device memory; None = the caller's batch size.
        self.max_batch_size: int | None = None

    @classmethod
    def from_settings(cls, backbone: Backbone, device: str | torch.device, precision: str,
                      settings: ExtractSettings, n_images: int | None = None) -> Extractor:
        """The extractor a job builds from the config's ``extract`` section: every setting
        that changes how, never what, it computes (compile and its cache, CUDA graphs,
        where JPEGs are decoded)."""
        return cls(backbone, device, precision, compile=settings.compile, cuda_graph=settings.cuda_graph,
                   decode=settings.decode, n_images=n_images, compile_cache=settings.compile_cache)

    @property
    def meta(self) -> dict:
        """What a pickle's ``meta`` records of how its features were computed."""
        return {"device": self.device.type, "precision": self.precision, "feature_dim": self.feature_dim}

    def shard_tag(self, files: bool = False) -> str:
        """What computed values depend on beyond the network: device type, precision and, for
        files whose JPEGs nvjpeg decodes, that (GPU and CPU JPEG decoders round differently)."""
        from .decode import decode_device

        gpu_jpeg = files and decode_device(self.decode, self.device).type == "cuda"
        return f"{self.device.type}-{self.precision}" + ("-gpujpeg" if gpu_jpeg else "")

    def autocast(self):
        """The precision's autocast context (none for fp32)."""
        if self.precision in _AUTOCAST_DTYPES:
            # A captured graph must not read autocast's cache of cast weights, which is freed
            # when the context exits (torch's CUDA graphs notes: cache_enabled=False).
            return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision],
                                  cache_enabled=not self.cuda_graph)
        return contextlib.nullcontext()

    def to_device(self, images: np.ndarray) -> torch.Tensor:
        """A uint8 batch on the device, copied without waiting for the copy to finish (fine-tuning's
        batches, and extraction off CUDA; extraction on CUDA stages through :class:`_Staging`)."""
        # A copy of just this batch (read from the memory map, if that is what ``images``
        # is): host memory is bounded by the batch, not the dataset.
        batch = torch.from_numpy(np.array(images, dtype=np.uint8, order="C"))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def network_input(self, batch: torch.Tensor) -> torch.Tensor:
        """A uint8 batch on the device as the network takes it: preprocessed, channels-last on CUDA."""
        return self._channels_last(self.prep(batch))

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def _from_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(self.network_input(batch)).float()

    def _from_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._channels_last(x)).float()

    def run(self, images: np.ndarray, batch_size: int, bar: tqdm | None = None) -> np.ndarray:
        """Features of ``images``, in order: an array that slices into uint8 NHWC batches, or
        image paths (a dataset stored as its original files, decoded here).

        A batch that runs out of device memory is retried at half the batch size (logged),
        and the smaller size is kept for the rest of this extractor's batches; out of
        memory at batch size 1 is an error that says what to change.
        """
        from .decode import is_file_list

        files = is_file_list(images)
        if not files and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        n = len(images)
        batch_size = min(batch_size, self.max_batch_size or batch_size)
        # Features stay on the device until the end (one copy back, no sync per batch), so
        # the host queues batch after batch while the GPU works; callers bound n by sharding.
        features = torch.empty((n, self.feature_dim), dtype=torch.float32, device=self.device)
        feed = _FileFeed(self, images) if files else _PixelFeed(self, images)
        forward = self._from_inputs if files else self._from_pixels
        with torch.inference_mode(), self.autocast():
            start = 0
            feed.queue(0, min(n, batch_size))
            while start < n:
                try:
                    end = feed.next_end()
                    if end < n and len(feed.pending) < 2:  # queue the next batch while this one computes
                        feed.queue(end, min(n, end + batch_size))
                    batch = feed.take()
                    graph = self._graph(forward, batch, batch_size) if self.cuda_graph else None
                    features[start:end] = graph.replay(batch) if graph is not None else forward(batch)
                    feed.release()
                    if self.on_first_batch is not None:
                        self._first_batch_done()
                except Exception as err:
                    if not is_out_of_memory(err):
                        raise
                    batch = None
                    self._drop_device_buffers()
                    feed.reset()
                    batch_size = self._smaller_batch(min(batch_size, n - start), err)
                    feed.queue(start, min(n, start + batch_size))
                    continue
                if bar is not None:
                    bar.update(end - start)
                start = end
        out = features.cpu().numpy()
        bad = int((~np.isfinite(out).all(axis=1)).sum())
        if bad:
            # Pixels are uint8: the NaN or inf comes from the network, its weights or its arithmetic.
            tensors = [*self.model.named_parameters(), *self.model.named_buffers()]
            broken = [name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]
            what = f"non-finite features from {self.precision} extraction: NaN or infinite values for {bad} of {n} images"
            if broken:
                raise FloatingPointError(
                    f"{what}, and the network's weights hold NaN or infinite values ({len(broken)} of {len(tensors)} "
                    f"tensors: {', '.join(broken[:3])}{', …' if len(broken) > 3 else ''}): the weights file is damaged "
                    "or was saved from a training that diverged; use another checkpoint")
            if self.precision != "fp32":
                raise FloatingPointError(f"{what}; half precision overflows or rounds away what fp32 keeps: "
                                         "try extract.precision: fp32")
            raise FloatingPointError(
                f"{what}, though the network's weights are finite: a layer went beyond float32's range, or took the "
                "square root of a negative batch-norm running_var; check that the weights file belongs to this "
                "network (its arch) and is not damaged")
        return out

    def _first_batch_done(self) -> None:
        """Call ``on_first_batch`` once, when the first batch has computed (a job's timing
        tells start-up, lazy initialisation and compilation from the work after them)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        callback, self.on_first_batch = self.on_first_batch, None
        callback()

    def _graph(self, forward, batch: torch.Tensor, batch_size: int) -> _Graph | None:
        """The captured graph for full batches of this shape (captured on first use), or None:
        a smaller batch, or a capture that failed (logged once; those batches run eagerly)."""
        if len(batch) != batch_size:
            return None
        key = (forward.__name__, tuple(batch.shape), batch.dtype)
        if key not in self._graphs:
            try:
                self._graphs[key] = _Graph(forward, batch)
            except Exception as err:
                if is_out_of_memory(err):
                    raise
                logging.warning("CUDA graph capture failed (%s: %s); running without one", type(err).__name__, err)
                self._graphs[key] = None
        return self._graphs[key]

    def _drop_device_buffers(self) -> None:
        """Free the graphs and staging buffers (sized for a batch that ran out of memory)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._graphs.clear()
        self._staging = None

    def files(self):
        """The reader of image files for this extractor's device and decode setting."""
        from .decode import FileInputs

        if self._files is None:
            self._files = FileInputs(self.prep, self.device, self.decode, torch.get_num_threads())
        return self._files

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


class _PixelFeed:
    """uint8 batches of an array on the device, queued ahead: on CUDA through :class:`_Staging`."""

    def __init__(self, extractor: Extractor, images: np.ndarray):
        self.ex, self.images = extractor, images
        self.pending: deque[tuple[int, object]] = deque()  # (end, staged slot or device batch)
        self.current: int | None = None  # the staging slot the batch being computed reads

    def next_end(self) -> int:
        return self.pending[0][0]

    def queue(self, lo: int, hi: int) -> None:
        rows = self.images[lo:hi]
        if self.ex.device.type != "cuda":
            self.pending.append((hi, self.ex.to_device(rows)))
            return
        staging = self.ex._staging
        if staging is None or staging.host[0].shape[1:] != rows.shape[1:] or len(staging.host[0]) < len(rows):
            staging = self.ex._staging = _Staging((len(rows), *rows.shape[1:]), self.ex.device)
        self.pending.append((hi, staging.put(rows)))

    def take(self) -> torch.Tensor:
        _, item = self.pending.popleft()
        if self.ex.device.type != "cuda":
            return item
        self.current, size = item
        return self.ex._staging.take(self.current, size)

    def release(self) -> None:
        if self.current is not None:
            self.ex._staging.release(self.current)
            self.current = None

    def reset(self) -> None:
        self.pending.clear()
        self.current = None


class _FileFeed:
    """Network inputs from image paths: the next batch's files are read on host threads while
    this batch decodes and computes."""

    def __init__(self, extractor: Extractor, paths):
        self.reader = extractor.files()
        self.paths = paths
        self.pending: deque[tuple[int, Reads]] = deque()

    def next_end(self) -> int:
        return self.pending[0][0]

    def queue(self, lo: int, hi: int) -> None:
        self.pending.append((hi, self.reader.submit(self.paths[lo:hi])))

    def take(self) -> torch.Tensor:
        return self.reader.to_input(self.pending.popleft()[1].result())

    def release(self) -> None:
        pass

    def reset(self) -> None:
        for _, reads in self.pending:
            reads.cancel()
        self.pending.clear()


class _Staging:
    """Two pinned host buffers and two device buffers for uint8 batches, allocated once and
    reused, and a side stream that copies host to device while the compute stream works.

    Events keep the two apart: a host buffer is refilled only once its last copy is done,
    and a device buffer is overwritten only once the compute stream has read it. Both
    buffers live as long as this object (freed only after a synchronize), so no
    ``record_stream`` is needed.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        self.host = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.dev = [torch.empty(shape, dtype=torch.uint8, device=device) for _ in range(2)]
        self.stream = torch.cuda.Stream(device)
        self.copied: list[torch.cuda.Event | None] = [None, None]  # host->device copy of slot k done
        self.consumed: list[torch.cuda.Event | None] = [None, None]  # compute stream done reading slot k
        self.slot = 0

    def put(self, rows: np.ndarray) -> tuple[int, int]:
        """Copy ``rows`` (read from the memory map here) into the next slot and start its
        upload on the side stream; returns (slot, rows)."""
        k, self.slot = self.slot, 1 - self.slot
        if self.copied[k] is not None:
            self.copied[k].synchronize()  # the host buffer's previous upload has finished
        size = len(rows)
        np.copyto(self.host[k][:size].numpy(), rows)
        with torch.cuda.stream(self.stream):
            if self.consumed[k] is not None:
                self.stream.wait_event(self.consumed[k])
            self.dev[k][:size].copy_(self.host[k][:size], non_blocking=True)
            self.copied[k] = torch.cuda.Event()
            self.copied[k].record(self.stream)
        return k, size

    def take(self, k: int, size: int) -> torch.Tensor:
        """Slot k's batch, for the compute stream (which waits for its upload)."""
        torch.cuda.current_stream(self.dev[k].device).wait_event(self.copied[k])
        return self.dev[k][:size]

    def release(self, k: int) -> None:
        """The compute stream has queued its last read of slot k."""
        self.consumed[k] = torch.cuda.Event()
        self.consumed[k].record(torch.cuda.current_stream(self.dev[k].device))


class _Graph:
    """``forward`` on one static input shape, captured in a CUDA graph and replayed.

    Warm-up runs on a side stream first (torch's recipe: compilation, cuDNN's kernel choice
    and the resize matrices happen there, not in the capture). A replay copies the batch
    into the static input; the static output is overwritten by the next replay, so the
    caller copies it out on the same stream first (``features[a:b] = ...``).
    """

    def __init__(self, forward, example: torch.Tensor, warmup: int = 3):
        device = example.device
        self.input = example.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                forward(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the file readers' host threads may run CPU work meanwhile; only this
        # thread's CUDA calls are the capture's business.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = forward(self.input)

    def replay(self, batch: torch.Tensor) -> torch.Tensor:
        self.input.copy_(batch)
        self.graph.replay()
        return self.output


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


# Shards sized by work: a kill loses at most about this much computing (plus the batch in
# flight), whatever the device; a shard file costs a few milliseconds to write.
SHARD_SECONDS = 60.0
# ... but a shard's features wait on the device until the shard ends: at most this many bytes
# of them (on an H200, ResNet-50's 2,048-d features: 65,536 images, about 4 s of work).
SHARD_BYTES = 512 * 2**20


def shard_name(lo: int, hi: int) -> str:
    """A shard's file name says its rows, so a rerun finds them whatever size it would choose."""
    return f"rows-{lo:010d}-{hi:010d}.npy"


def _saved_shards(shard_dir: Path, n: int, feature_dim: int, out: np.ndarray) -> list[tuple[int, int]]:
    """Load the usable shards under ``shard_dir`` into ``out``; their row ranges, sorted.

    A file whose rows overlap an earlier one's, fall outside the split, or that cannot be
    read is removed (after a warning) and its rows computed again.
    """
    found = []
    for path in sorted(shard_dir.glob("rows-*-*.npy")):
        try:
            lo, hi = (int(x) for x in path.stem.split("-")[1:3])
        except ValueError:
            continue
        found.append((lo, hi, path))
    kept: list[tuple[int, int]] = []
    for lo, hi, path in sorted(found):
        shard = None
        if 0 <= lo < hi <= n and (not kept or lo >= kept[-1][1]):
            shard = _read_shard(path, (hi - lo, feature_dim))
        else:
            logging.warning("%s: rows %d..%d do not fit a split of %d images beside the other shards; "
                            "recomputing them", path, lo, hi, n)
        if shard is None:
            path.unlink(missing_ok=True)
            continue
        out[lo:hi] = shard
        kept.append((lo, hi))
    return kept


def _gaps(done: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The row ranges of ``0..n`` that no shard in ``done`` (sorted, disjoint) covers."""
    gaps, at = [], 0
    for lo, hi in done + [(n, n)]:
        if lo > at:
            gaps.append((at, lo))
        at = max(at, hi)
    return gaps


def shard_batches(batch_size: int, feature_dim: int, shard_size: int | None, rate: float | None,
                  seconds: float = SHARD_SECONDS) -> int:
    """How many whole batches the next shard holds.

    ``shard_size`` (extract.shard_size): enough batches to hold that many images. ``None``
    (``auto``): about ``seconds`` of work at ``rate``, the images/s of the shard before
    (the first shard is one batch, which measures it), and no more features than
    :data:`SHARD_BYTES`. A shard is always whole batches, so shards never decide which
    images share a batch.
    """
    if shard_size is not None:
        return max(1, -(-shard_size // batch_size))
    if rate is None or not np.isfinite(rate):
        return 1
    cap = max(1, SHARD_BYTES // (4 * max(1, feature_dim) * batch_size))
    return int(min(cap, max(1, seconds * rate // batch_size)))


def extract_sharded(
    extractor: Extractor,
    images: np.ndarray,
    shard_dir: str | os.PathLike,
    shard_size: int | None = None,
    batch_size: int = 256,
    progress: IO[str] | None = None,
    shard_seconds: float = SHARD_SECONDS,
) -> ExtractionResult:
    """Extract in shards of whole batches, each saved atomically under ``shard_dir`` as soon
    as it is done (``rows-LO-HI.npy``).

    Shards already there are loaded, not recomputed: a job killed mid-way loses at most
    the shard in flight, about ``shard_seconds`` of work when ``shard_size`` is None (the
    default, ``extract.shard_size: auto``), else ``shard_size`` images rounded up to whole
    batches. Batches are cut every ``batch_size`` rows from the first row whatever the
    shards are, so how the rows fall into shards (their size, a resume, the measured speed)
    never changes which images share a batch, nor any feature. ``shard_dir`` must be
    specific to the network, code and batch size (the caller puts a fingerprint of them in
    its name); the shards themselves go into a folder named for the device type and
    precision this extractor computes at, so a job resumed on another kind of node (fp32
    on a CPU after bf16 on a GPU) never stitches two precisions into one result.
    """
    from .decode import is_file_list

    shard_dir = Path(shard_dir) / extractor.shard_tag(files=is_file_list(images))
    shard_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    out = np.empty((n, extractor.feature_dim), dtype=np.float32)
    done = _saved_shards(shard_dir, n, extractor.feature_dim, out)
    resumed = sum(hi - lo for lo, hi in done)
    if done:
        logging.info("resuming: %d of %d images already extracted, in %d shard(s) in %s", resumed, n, len(done),
                     shard_dir)
    seconds, computed, rate = 0.0, 0, None
    with _progress(n, progress, initial=resumed) as bar:
        for lo, hi in _gaps(done, n):
            while lo < hi:
                end = min(hi, lo + batch_size * shard_batches(batch_size, extractor.feature_dim, shard_size, rate,
                                                              shard_seconds))
                start = time.perf_counter()
                out[lo:end] = extractor.run(images[lo:end], batch_size, bar)
                took = time.perf_counter() - start
                seconds, computed = seconds + took, computed + end - lo
                rate = (end - lo) / took if took > 0 else None
                with atomic_write(shard_dir / shard_name(lo, end)) as f:
                    np.save(f, out[lo:end])
                lo = end
    return ExtractionResult(out, seconds, _rate(computed, seconds), str(extractor.device), extractor.precision,
                            computed)


# --- one dataset in several jobs (extract.parts) ---

# A run of rows of one split: (split, lo, hi), rows [lo, hi) of that split.
Segment = tuple[str, int, int]


def dataset_batches(sizes: Mapping[str, int], batch_size: int) -> list[Segment]:
    """Every batch a one-job extraction of the dataset computes, in order: each split's rows
    cut every ``batch_size`` from its first (``sizes``: images per split, in the order the
    job extracts them)."""
    return [(split, lo, min(n, lo + batch_size)) for split, n in sizes.items() for lo in range(0, n, batch_size)]


def part_bounds(sizes: Mapping[str, int], parts: int, batch_size: int, what: str = "the dataset") -> list[list[Segment]]:
    """The rows each of ``parts`` jobs extracts from one dataset: per part, its segments.

    Parts are cut between batches of :func:`dataset_batches`, shared out as evenly as they
    go: every batch then holds the images it holds in a one-job run, so the gathered
    features are that run's, byte for byte. A part's batches of one split make one
    segment; a part may span splits. A dataset of fewer batches than parts leaves the last
    parts empty (jobs with nothing to compute); only one with fewer images than parts is
    refused, with ``what`` naming it.
    """
    if parts < 1:
        raise ValueError(f"extract.parts must be at least 1, got {parts}")
    n = sum(sizes.values())
    if n < parts:
        raise ValueError(
            f"extract.parts: {parts} for {what}, which has {n} image(s): each part needs at least one. "
            f"Set extract.parts to at most {max(1, n)} for this dataset."
        )
    batches = dataset_batches(sizes, batch_size)
    cuts = [k * len(batches) // parts if len(batches) >= parts else min(k, len(batches)) for k in range(parts)]
    bounds = []
    for first, last in zip(cuts, cuts[1:] + [len(batches)], strict=True):
        segments: list[Segment] = []
        for split, lo, hi in batches[first:last]:
            if segments and segments[-1][0] == split:
                segments[-1] = (split, segments[-1][1], hi)
            else:
                segments.append((split, lo, hi))
        bounds.append(segments)
    return bounds


def gather_parts(paths: list[str | os.PathLike], records: list[dict], sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Each split's features from the parts' ``.npy`` files, checked first.

    ``records`` are the parts' JSON records (``part``, ``parts``, ``segments``, ``device``,
    ``precision``, ``meta``); a part's file holds its segments' rows one after the other.
    Refused, naming the part: parts of another count, segments that do not tile every
    split in order (parts made with another batch size or dataset), or parts computed on
    different device types or precisions (the features would not be one run's). An empty
    part (a dataset of fewer batches than parts) computed nothing and is skipped. Each
    part is read through a memory map and copied into place, so host memory holds the
    result and the page cache, not a second copy.
    """
    if len(paths) != len(records):
        raise ValueError(f"{len(paths)} part files but {len(records)} records")
    first = records[0]  # never empty: parts are filled from the first
    expected = [(split, n) for split, n in sizes.items() if n > 0]
    at_split, at_row = 0, 0
    redo = "delete the dataset's results/parts/ folder and rerun"
    for k, (path, rec) in enumerate(zip(paths, records, strict=True)):
        if rec["part"] != k or rec["parts"] != len(records):
            # Parts are numbered from 1 in file names and messages, from 0 in records.
            raise ValueError(f"{path}: part {rec['part'] + 1} of {rec['parts']}, expected part {k + 1} of "
                             f"{len(records)}")
        for key in ("device", "precision", "meta"):
            if rec["segments"] and rec[key] != first[key]:
                raise ValueError(
                    f"{path}: computed with {key} {rec[key]!r}, part 1 with {first[key]!r}; parts of one dataset "
                    "must be computed alike. Delete the dataset's results/parts/ folder (or pin extract.device and "
                    "extract.precision) and rerun"
                )
        for split, lo, hi in rec["segments"]:
            if at_split < len(expected) and at_row == expected[at_split][1]:
                at_split, at_row = at_split + 1, 0
            want = expected[at_split][0] if at_split < len(expected) else None
            if split != want or lo != at_row or not lo < hi <= sizes.get(split, 0):
                where = f"split {want} from row {at_row}" if want else "nothing more"
                raise ValueError(f"{path}: rows {lo}..{hi} of split {split}, expected {where}; the parts were made "
                                 f"with different extract.batch_size or datasets: {redo}")
            at_row = hi
    covered = sum(n for _, n in expected[:at_split]) + at_row
    if covered != sum(sizes.values()):
        raise ValueError(f"the parts cover {covered} rows, the dataset has {sum(sizes.values())} images; {redo}")
    out: dict[str, np.ndarray] = {}
    dim = None
    for path, rec in zip(paths, records, strict=True):
        if not rec["segments"]:
            continue
        rows = sum(hi - lo for _, lo, hi in rec["segments"])
        part = np.load(path, mmap_mode="r", allow_pickle=False)
        dim = part.shape[1] if dim is None and part.ndim == 2 else dim
        if part.dtype != np.float32 or part.shape != (rows, dim):
            raise ValueError(f"{path}: {part.dtype} {part.shape}, expected float32 {(rows, dim)}")
        offset = 0
        for split, lo, hi in rec["segments"]:
            if split not in out:
                out[split] = np.empty((sizes[split], dim), dtype=np.float32)
            out[split][lo:hi] = part[offset:offset + hi - lo]
            offset += hi - lo
        del part
    return {split: out.get(split, np.empty((0, dim or 0), dtype=np.float32)) for split in sizes}
