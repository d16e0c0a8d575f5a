"""What torch.compile costs an extraction job, cold and from the compile cache, and what it buys.

    PYTHONPATH=src python benchmarks/compile_cache.py --arch timm:tf_efficientnet_lite0 --weights bundled \
        --input-size 96 --n 512 --batch-size 64 --threads 2                     # the quickstart's network, CPU
    PYTHONPATH=src python benchmarks/compile_cache.py --arch resnet18 --input-size 224 --n 256 --threads 2
    PYTHONPATH=src python benchmarks/compile_cache.py --arch resnet50 --input-size 224 --n 16384 \
        --batch-size 256 --device cuda --precision bf16                         # a GPU
    PYTHONPATH=src python benchmarks/compile_cache.py --arch resnet18 --input-size 32 --n 32 \
        --batch-size 16 --threads 1                                             # the CI-sized run

Two fresh Python processes, as two extraction jobs would be, each on the same uint8 images
stored at 32x32 (CIFAR-sized) and resized on the device, through
``transfer_lab.extract.Extractor`` with ``compile: true``:

  cold    an empty compile cache (a folder in /tmp, or --cache)
  warm    the same network, shapes and device again, the cache now filled

For each: the first batch's seconds (compilation + one batch), the compilation alone (that
minus a compiled batch once warm), inductor's FX graph cache hits and misses and
AOTAutograd's. Then, in the warm process, images/s over ``--n`` images compiled and eager
(``compile: false``, the same backbone), in turns, the best of ``--rounds`` each (the
machine's load moves both alike), and how many images a job must compute before a cold or a
warm compilation pays for itself (never, when compiled is not faster). Random weights
unless --weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args) -> dict:
    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from transfer_lab.extract import Extractor
    from transfer_lab.networks import load_backbone
    from transfer_lab.specs import NetworkSpec

    torch.set_num_threads(args.threads)
    backbone = load_backbone(NetworkSpec(arch=args.arch, weights=args.weights, input_size=args.input_size))
    compiled = Extractor(backbone, args.device, args.precision, compile=True, compile_cache=args.cache)
    images = np.random.default_rng(0).integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    sync = torch.cuda.synchronize if compiled.device.type == "cuda" else (lambda: None)

    def seconds(extractor, batch) -> float:
        start = time.perf_counter()
        extractor.run(batch, args.batch_size)
        sync()
        return time.perf_counter() - start

    out = {"job": args.child, "compile_cache": str(compiled.compile_cache)}
    out["first_batch_s"] = seconds(compiled, images[:args.batch_size])  # compiles
    seconds(compiled, images[:args.batch_size])
    out["batch_s"] = seconds(compiled, images[:args.batch_size])
    out["counters"] = {
        "fxgraph_hit": counters["inductor"]["fxgraph_cache_hit"],
        "fxgraph_miss": counters["inductor"]["fxgraph_cache_miss"],
        "aot_autograd_hit": counters["aot_autograd"]["autograd_cache_hit"],
        "aot_autograd_miss": counters["aot_autograd"]["autograd_cache_miss"],
    }
    if args.child == "warm":  # throughput: compiled and eager in turns, the best of --rounds each
        eager = Extractor(backbone, args.device, args.precision, compile=False)
        seconds(eager, images[:args.batch_size])
        times = {"compiled": [], "eager": []}
        for _ in range(args.rounds):
            times["compiled"].append(seconds(compiled, images))  # --n a multiple of the batch: one shape
            times["eager"].append(seconds(eager, images))
        out.update({f"{k}_images_per_s": args.n / min(v) for k, v in times.items()})
    return out


def run_job(job: str, args, cache: Path) -> dict:
    command = [sys.executable, __file__, "--child", job, "--cache", str(cache)]
    for key in ("arch", "weights", "input_size", "n", "batch_size", "threads", "device", "precision", "rounds"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{job} job failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def pays_after(compile_s: float, compiled: float, eager: float) -> str:
    """Images after which a compilation of ``compile_s`` seconds is paid back."""
    saved = 1 / eager - 1 / compiled  # seconds per image
    return "never" if saved <= 0 else f"{compile_s / saved:,.0f} images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=256, help="images timed per job (a multiple of the batch size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--cache", default=None, help="compile cache base folder (default: an empty one in /tmp)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes of compiled and eager, in turns")
    parser.add_argument("--child", choices=("cold", "warm"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n % args.batch_size:
        parser.error("--n must be a multiple of --batch-size (another batch shape compiles again)")
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        jobs = {job: run_job(job, args, cache) for job in ("cold", "warm")}
    print(f"{args.arch} at {args.input_size} px, {args.weights} weights, batch {args.batch_size}, {args.n} images, "
          f"{args.device} {args.precision}, {args.threads} thread(s); torch {_torch_version()}; "
          f"cache {jobs['cold']['compile_cache']}")
    for job in ("cold", "warm"):
        r = jobs[job]
        r["compile_s"] = r["first_batch_s"] - r["batch_s"]
        c = r["counters"]
        print(f"{job:5s}  first batch {r['first_batch_s']:7.2f} s  compilation {r['compile_s']:7.2f} s  "
              f"FX graph cache {c['fxgraph_hit']} hit(s) {c['fxgraph_miss']} miss(es), "
              f"AOTAutograd {c['aot_autograd_hit']} hit(s) {c['aot_autograd_miss']} miss(es)  "
              f"process {r['process_s']:.1f} s")
    warm = jobs["warm"]
    compiled, eager = warm["compiled_images_per_s"], warm["eager_images_per_s"]
    print(f"images/s (best of {args.rounds}, in turns): eager {eager:,.1f}, compiled {compiled:,.1f}; "
          f"compiled/eager {compiled / eager:.2f}")
    print(f"warm/cold compilation: {warm['compile_s'] / jobs['cold']['compile_s']:.2f}")
    print(f"compiling pays for itself after: cold {pays_after(jobs['cold']['compile_s'], compiled, eager)}, "
          f"warm {pays_after(warm['compile_s'], compiled, eager)}")


def _torch_version() -> str:
    from importlib.metadata import version
    return version("torch")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
