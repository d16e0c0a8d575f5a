"""Preparation of a JPEG folder against a bare decode-and-resize loop, measured in one run.

    python benchmarks/prepare_throughput.py                          # 2,000 JPEGs to 64 px, every core
    python benchmarks/prepare_throughput.py --size 256               # at 256 px (no draft mode: 375 < 2 x 256)
    python benchmarks/prepare_throughput.py --images 20000 --size 256 --only-prepare   # the memory check
    python benchmarks/prepare_throughput.py --images 64 --workers 2  # CI-sized

The images are ImageNet-like: 500x375 JPEGs (quality 90) of photo-like content (a smooth
colour field, a periodic texture, a sharp-edged object and sensor noise), one folder per
class (the imagefolder source). ``--distinct`` different images are generated and written
cyclically under distinct names: the decoder's work per file is what it would be, and
generating 20,000 images does not dominate the run.

  bare      a loop that only decodes each file (PIL, full scale) and stores it
            (storage.to_storage: shorter side resized, centre crop): on one process, and
            the same files on --workers processes
  prepare   what rule prepare_dataset does: list the folder, assign splits, decode the
            kept rows on --workers processes (draft mode where storage.draft_is_exact
            allows) into results/datasets/{dataset}.npz (datasets.write_dataset: one
            worker streams its chunks into the file, more workers each write their rows
            into the memory-mapped file); on 1 worker and on --workers

Prints images/s of each and the CPU time (user + system, workers included) an image took,
the ratios (prepare per core against bare per core: target >= 0.8;
prepare on --workers against prepare on 1: target >= 1.7 on 2 cores), whether draft mode
was used, and the peak memory (RSS summed over the preparing process and its workers,
sampled every 50 ms; Linux /proc) against the prepared file's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np


def photo_like(rng: np.random.Generator, width: int = 500, height: int = 375):
    """A PIL image with what makes a photo costly to decode and to resize: smooth colour, a
    texture, a sharp edge and noise (flat colour would compress to nothing)."""
    from PIL import Image

    base = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy, phase = rng.uniform(0.02, 0.25), rng.uniform(0.02, 0.25), rng.uniform(0, 2 * np.pi)
    texture = 24 * np.sin(x * fx + phase) * np.cos(y * fy)
    cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, rng.uniform(0.06, 0.25) * width
    disk = (((x - cx) ** 2 + (y - cy) ** 2) < r * r)[..., None] * rng.uniform(-80, 80, 3)
    pixels = np.asarray(base, np.float32) + texture[..., None] + disk + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(root: Path, n: int, distinct: int, classes: int = 10, seed: int = 0) -> list[Path]:
    """``n`` JPEGs in ``classes`` class folders under ``root``; ``distinct`` different images."""
    rng = np.random.default_rng(seed)
    sources = []
    for k in range(min(distinct, n)):
        path = root / f"class{k % classes}" / f"img{k:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(rng).save(path, "JPEG", quality=90)
        sources.append(path)
    files = list(sources)
    for k in range(len(sources), n):
        path = root / f"class{k % classes}" / f"img{k:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[k % len(sources)], path)
        files.append(path)
    return files


def _bare(paths: list[Path], size: int) -> int:
    """Decode and store each file, keeping nothing: what any preparation must at least do."""
    from PIL import Image

    from transfer_lab.storage import to_storage

    for path in paths:
        with Image.open(path) as image:
            to_storage(image.convert("RGB"), size, "crop")
    return len(paths)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that have ended."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def bare_rate(files: list[Path], size: int, workers: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image, workers included)."""
    started, cpu = time.perf_counter(), cpu_seconds()
    if workers == 1:
        _bare(files, size)
    else:
        step = max(1, len(files) // (8 * workers))
        with get_context("fork").Pool(workers) as pool:
            pool.starmap(_bare, [(files[i:i + step], size) for i in range(0, len(files), step)])
    return len(files) / (time.perf_counter() - started), (cpu_seconds() - cpu) / len(files)


def _tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


_PREPARE = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
from transfer_lab.datasets import SplitSpec, draft_is_exact, plan_dataset, write_dataset
from transfer_lab.sources import dataset_spec
root, size, workers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import resource
def cpu_seconds():
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
started, cpu = time.perf_counter(), cpu_seconds()
plan = plan_dataset(dataset_spec({"source": "imagefolder", "root": root, "image_size": size}),
                    SplitSpec(validation_fraction=0.1, test_fraction=0.1, seed=0))
draft = draft_is_exact(plan.images, plan.rows)
write_dataset(plan, out, {}, workers, draft)
print(len(plan.rows), time.perf_counter() - started, int(draft), "torch" in sys.modules, cpu_seconds() - cpu)
"""


def prepare(root: Path, size: int, workers: int, out: Path) -> tuple[float, float, bool, int]:
    """Prepare the folder in a fresh process as the rule does: (images/s, CPU seconds per image
    (the process and its workers, from after its imports), draft used, peak RSS bytes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _PREPARE, str(root), str(size), str(workers), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"preparation failed:\n{stderr}")
    n, seconds, draft, torch, cpu = stdout.split()
    if torch == "True":
        sys.exit("preparation imported torch; it must not")
    return int(n) / float(seconds), float(cpu) / int(n), draft == "1", peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=256, help="different images among them")
    parser.add_argument("--size", type=int, default=64, help="storage size (image_size)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--only-prepare", action="store_true", help="skip the bare loops and the 1-worker run")
    parser.add_argument("--folder", type=Path, help="where to write the JPEGs (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder or Path(tmp) / "photos"
        started = time.perf_counter()
        files = write_folder(root, args.images, args.distinct)
        print(f"{len(files)} JPEGs of 500x375 ({args.distinct} distinct) written in "
              f"{time.perf_counter() - started:.0f} s; storage {args.size} px, {args.workers} workers")
        out = Path(tmp) / "prepared.npz"
        rates, cpu = {}, {}
        bare_n, prep_n = f"bare {args.workers} processes", f"prepare {args.workers} workers"
        if not args.only_prepare:
            rates["bare 1 process"], cpu["bare 1 process"] = bare_rate(files, args.size, 1)
            rates[bare_n], cpu[bare_n] = bare_rate(files, args.size, args.workers)
            rates["prepare 1 worker"], cpu["prepare 1 worker"], _, _ = prepare(root, args.size, 1, out)
        rates[prep_n], cpu[prep_n], draft, peak = prepare(root, args.size, args.workers, out)
        for label, rate in rates.items():
            print(f"{label:<24} {rate:8.0f} img/s  {1000 * cpu[label]:6.2f} CPU ms/image")
        if not args.only_prepare:
            print(f"ratio prepare/bare per core   {rates[prep_n] / rates[bare_n]:.2f} (target >= 0.8)")
            print(f"ratio prepare {args.workers}/1 workers   {rates[prep_n] / rates['prepare 1 worker']:.2f} "
                  f"(target >= 1.7 on 2 cores)")
            # What a busy machine cannot blur: the CPU an image costs, bare loop against preparation.
            print(f"ratio CPU per image bare/prepare {args.workers}   {cpu[bare_n] / cpu[prep_n]:.2f}")
        print(f"draft mode               {'on' if draft else 'off'}")
        print(f"peak RSS                 {peak / 2**20:.0f} MB (prepared file {out.stat().st_size / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
