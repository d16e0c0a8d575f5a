"""What a kill costs: an extraction killed part-way, then rerun, against one uninterrupted run.

    python benchmarks/resume_after_kill.py --arch resnet50 --input-size 224 --n 1500 --threads 2   # issue 20's case
    python benchmarks/resume_after_kill.py --arch resnet18 --input-size 64 --n 96 --batch-size 16 \\
        --shard-seconds 0.5 --kill-at 0.6   # CI-sized (tests/test_benchmarks.py)

Each run is a fresh Python process, as an extraction job is: it imports torch, builds the
network (random weights: nothing to download), and extracts --n random uint8 images of
--image-size pixels with ``transfer_lab.extract.extract_sharded``, as rule extract_features
does. First one uninterrupted run (wall time T, process start included). Then, for each
shard setting (--shard-sizes: numbers of images, or ``auto``: about --shard-seconds of work
a shard, extract.shard_size's default), a run SIGKILLed at --kill-at × T and its rerun over
the same shard folder. Prints each rerun's wall time against T, the images the rerun
computed, and whether its features are byte-identical to the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def child(args: argparse.Namespace) -> None:
    """One extraction job: load, extract in shards, save the features; print a JSON line."""
    import torch

    from transfer_lab.extract import Extractor, extract_sharded
    from transfer_lab.networks import load_backbone
    from transfer_lab.specs import NetworkSpec

    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).integers(0, 256, size=(args.n, args.image_size, args.image_size, 3),
                                               dtype=np.uint8)
    backbone = load_backbone(NetworkSpec(arch=args.arch, weights="random", input_size=args.input_size))
    extractor = Extractor(backbone, "cpu", "fp32")
    shard_size = None if args.shard_size == "auto" else int(args.shard_size)
    result = extract_sharded(extractor, images, args.shards, shard_size, args.batch_size,
                             shard_seconds=args.shard_seconds)
    np.save(args.out, result.features)
    print(json.dumps({"n_computed": result.n_computed}), flush=True)


def run_job(args: argparse.Namespace, shard_size: str, shards: Path, out: Path,
            kill_after: float | None = None) -> tuple[float, dict | None]:
    """Wall seconds of one job process (until killed, if ``kill_after``), and its JSON line."""
    cmd = [sys.executable, __file__, "--child", "--arch", args.arch, "--input-size", str(args.input_size),
           "--image-size", str(args.image_size), "--n", str(args.n), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--shard-size", shard_size, "--shard-seconds", str(args.shard_seconds),
           "--shards", str(shards), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return time.perf_counter() - start, None
    if proc.returncode:
        raise SystemExit(f"the extraction job failed ({proc.returncode})")
    return time.perf_counter() - start, json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--image-size", type=int, default=64, help="stored image size (resized on the device)")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard-sizes", default="10000,auto", help="comma-separated: images per shard, or auto")
    parser.add_argument("--shard-seconds", type=float, default=None,
                        help="auto's seconds of work a shard (default: extract.SHARD_SECONDS)")
    parser.add_argument("--kill-at", type=float, default=0.7, help="kill at this fraction of the uninterrupted time")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard-size", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard_seconds is None:
        from transfer_lab.extract import SHARD_SECONDS

        args.shard_seconds = SHARD_SECONDS
    if args.child:
        child(args)
        return
    print(f"{args.arch} at {args.input_size} px, {args.n} images, batch {args.batch_size}, {args.threads} threads, "
          f"CPU fp32; auto shards of about {args.shard_seconds:g} s of work")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        full, _ = run_job(args, "auto", tmp / "full-shards", tmp / "full.npy")
        print(f"uninterrupted        {full:8.1f} s wall (process start included)")
        reference = np.load(tmp / "full.npy")
        for shard_size in args.shard_sizes.split(","):
            shards = tmp / f"shards-{shard_size}"
            killed, _ = run_job(args, shard_size, shards, tmp / "killed.npy", kill_after=args.kill_at * full)
            rerun, record = run_job(args, shard_size, shards, tmp / f"rerun-{shard_size}.npy")
            same = np.load(tmp / f"rerun-{shard_size}.npy").tobytes() == reference.tobytes()
            label = f"shard_size {shard_size}"
            print(f"{label:20} killed at {killed:6.1f} s; rerun {rerun:7.1f} s, computed "
                  f"{record['n_computed']} of {args.n} images; rerun/uninterrupted {rerun / full:.2f}; "
                  f"features identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
