"""Extraction throughput, measured in one run, as ratios that travel between machines.

    python benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --n 8192 --device cuda
    python benchmarks/extract_throughput.py --arch resnet18 --input-size 64 --n 256 --device cpu   # CI-sized

Prints, for one network and input size, from uint8 images stored at --image-size (32 =
CIFAR-sized; prepared datasets are uint8 arrays):
  bare      the model alone on normalised tensors already on the device (same batch,
            precision, memory format and threads): the ceiling;
  end2end   transfer_lab's path: uint8 batches to the device, resize/crop/normalise there;
  naive     a per-image PIL transforms.Compose through a DataLoader, fp32: the baseline;
and the ratios end2end/bare (target >= 0.9 on CPU, >= 0.8 on a GPU) and end2end/naive
(target >= 3 on a GPU). On CUDA also the fraction of the card's dense bf16 peak reached,
from torchvision's GFLOPS metadata (which counts multiply-adds) x 2.

With --parts N (N > 1): the same images extracted as one part and as N parts (cut by
--shard-size, as extract.parts cuts a split), each written as a bottleneck pickle, and
whether the gathered pickle is byte-identical to the one-part run's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transfer_lab.bottleneck import Bottleneck, write_bottleneck
from transfer_lab.extract import Extractor, extract_sharded, gather_parts, part_bounds
from transfer_lab.networks import load_backbone
from transfer_lab.specs import NetworkSpec

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, of the SXM parts.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bare_forward(extractor: Extractor, n: int, batch_size: int) -> float:
    crop = extractor.prep.p.crop
    x = torch.randn(batch_size, 3, crop, crop, device=extractor.device)
    if extractor.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), extractor.autocast():
            for _ in range(n // batch_size):
                extractor.model(x).float()

    run()  # warm-up (and compilation, if any)
    return (n // batch_size) * batch_size / timed(run, extractor.device)


def end_to_end(extractor: Extractor, images: np.ndarray, batch_size: int) -> float:
    extractor.run(images[: 2 * batch_size], batch_size)  # warm-up
    return len(images) / timed(lambda: extractor.run(images, batch_size), extractor.device)


def naive(spec: dict, images: np.ndarray, batch_size: int, device: torch.device, workers: int) -> float:
    """What a tutorial does: PIL transforms per image, a DataLoader, fp32."""
    from PIL import Image
    from torchvision import transforms

    backbone = load_backbone(NetworkSpec(**spec))
    p = backbone.preprocess
    transform = transforms.Compose([
        transforms.Resize(p.resize, interpolation=transforms.InterpolationMode(p.interpolation)),
        transforms.CenterCrop(p.crop),
        transforms.ToTensor(),
        transforms.Normalize(p.mean, p.std),
    ])

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i]))

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, num_workers=workers)
    model = backbone.model.to(device)

    def run():
        with torch.inference_mode():
            for x in loader:
                model(x.to(device)).cpu()

    return len(images) / timed(run, device)


def parts_identical(extractor: Extractor, images: np.ndarray, parts: int, shard_size: int,
                    batch_size: int) -> tuple[bool, float, float]:
    """One-part and N-part extraction of ``images`` into pickles, as the workflow makes them:
    (pickles byte-identical, one-part seconds, N-part seconds added up)."""
    labels = np.zeros(len(images), np.int64)
    meta = {"device": extractor.device.type, "precision": extractor.precision}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        whole = extract_sharded(extractor, images, tmp / "whole", shard_size, batch_size).features
        one_seconds = time.perf_counter() - start
        write_bottleneck(tmp / "one.p", Bottleneck(whole, labels, ["x"], meta))
        paths, records, seconds = [], [], 0.0
        for k, (lo, hi) in enumerate(part_bounds(len(images), parts, shard_size)):
            start = time.perf_counter()
            features = extract_sharded(extractor, images[lo:hi], tmp / f"part-{k}", shard_size, batch_size).features
            seconds += time.perf_counter() - start
            paths.append(tmp / f"part-{k}.npy")
            np.save(paths[-1], features)
            records.append({"part": k, "parts": parts, "rows": [lo, hi], **meta, "meta": meta})
        write_bottleneck(tmp / "gathered.p", Bottleneck(gather_parts(paths, records, len(images)), labels, ["x"], meta))
        return (tmp / "one.p").read_bytes() == (tmp / "gathered.p").read_bytes(), one_seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--weights", default="random", help="random needs no download; speed is the same")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--image-size", type=int, default=32, help="side of the stored uint8 images")
    parser.add_argument("--n", type=int, default=4096, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=None, help="naive DataLoader workers (default: threads)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--naive-n", type=int, default=None, help="images for the naive baseline (default: n)")
    parser.add_argument("--parts", type=int, default=1, help="also check N-part extraction against one part")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard, for --parts")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    spec = {"arch": args.arch, "weights": args.weights, "input_size": args.input_size}
    extractor = Extractor(load_backbone(NetworkSpec(**spec)), args.device, args.precision, compile=args.compile)
    dev = extractor.device
    images = np.random.default_rng(0).integers(0, 256, (args.n, args.image_size, args.image_size, 3), dtype=np.uint8)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{args.arch} {args.input_size}px from {args.image_size}px uint8, batch {args.batch_size}, "
          f"{extractor.precision}{', compiled' if args.compile else ''}, {name}, torch {torch.__version__}")

    bare = bare_forward(extractor, args.n, args.batch_size)
    e2e = end_to_end(extractor, images, args.batch_size)
    base = naive(spec, images[: args.naive_n or args.n], args.batch_size, dev,
                 args.workers if args.workers is not None else args.threads)
    print(f"bare forward   {bare:10.1f} img/s")
    print(f"end to end     {e2e:10.1f} img/s")
    print(f"naive baseline {base:10.1f} img/s")
    print(f"ratio end2end/bare  {e2e / bare:.2f}")
    print(f"ratio end2end/naive {e2e / base:.2f}")
    if args.parts > 1:
        same, one, split = parts_identical(extractor, images, args.parts, args.shard_size, args.batch_size)
        print(f"parts {args.parts} (shards of {args.shard_size}): {one:.1f} s in one part, {split:.1f} s in "
              f"{args.parts} parts added up; gathered pickle identical to the one-part run: {'yes' if same else 'NO'}")
    if dev.type == "cuda":
        from torchvision.models import get_model_weights

        try:
            gflops = get_model_weights(args.arch).DEFAULT.meta["_ops"] * (args.input_size / 224) ** 2
        except (ValueError, KeyError):
            gflops = None
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        if gflops and peak:
            achieved = e2e * gflops * 2e9
            print(f"achieved {achieved / 1e12:.1f} TFLOP/s = {100 * achieved / peak:.1f}% of the dense bf16 peak "
                  f"({peak / 1e12:.0f} TFLOP/s; {2 * gflops:.2f} GFLOP per image)")


if __name__ == "__main__":
    main()
