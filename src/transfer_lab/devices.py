"""Which device a job computes on, and claiming one GPU among several.

Snakemake's ``resources: gpu=1`` bounds how many extraction jobs run at once; it does
not say which GPU each should use. Each job therefore claims a free one with a lock file
per device, held until the process exits, so concurrent jobs spread over the GPUs
instead of all landing on ``cuda:0``. How many GPU jobs may run at once locally is
:func:`gpu_count`, which the workflow profile reads without importing torch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_held: list[IO] = []  # claimed locks live as long as the process


def gpu_count(dev: str | os.PathLike = "/dev", environ: dict | None = None) -> int:
    """The NVIDIA GPUs a process started here would see (0: none), without importing torch.

    The GPUs of this machine (or container) are its ``/dev/nvidiaN`` device files; a
    ``CUDA_VISIBLE_DEVICES`` list keeps only its entries before the first invalid one
    (``-1``, as CUDA reads it). Torch takes seconds to import, and the workflow profile
    asks this at every ``snakemake`` call, dry runs included.
    """
    environ = os.environ if environ is None else environ
    present = sum(1 for p in Path(dev).glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            entries.append(entry)
        present = min(present, len(entries))
    return present


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(device)


def claim_device(device: str = "auto", lock_dir: str | os.PathLike | None = None) -> torch.device:
    """Resolve ``device``; on a machine with several GPUs, claim a free one.

    Lock files live in ``lock_dir`` (default: a folder in the machine's temp dir, so
    jobs on one node see each other's claims and nodes do not). A scheduler that already
    restricts the job to one GPU (``CUDA_VISIBLE_DEVICES``) leaves torch one to see.
    """
    import torch

    dev = resolve_device(device)
    if dev.type != "cuda" or dev.index is not None or torch.cuda.device_count() < 2:
        return dev
    folder = Path(lock_dir or Path(tempfile.gettempdir()) / "transfer-lab-gpu-locks")
    folder.mkdir(parents=True, exist_ok=True)
    count = torch.cuda.device_count()
    for index in range(count):
        handle = open(folder / f"gpu{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        logging.info("claimed cuda:%d of %d GPUs (lock %s)", index, count, handle.name)
        return torch.device("cuda", index)
    logging.warning("all %d GPUs are claimed by other jobs; sharing cuda:0", count)
    return torch.device("cuda", 0)
