"""Extraction throughput, measured in one run, as ratios that travel between machines.

    python benchmarks/extract_throughput.py --arch resnet50 --input-size 224 --n 8192 --device cuda
    python benchmarks/extract_throughput.py --arch resnet50 --device cuda --compile --cuda-graph --files 4096
    python benchmarks/extract_throughput.py --arch resnet18 --input-size 64 --n 256 --device cpu   # CI-sized

Prints, for one network and input size, from uint8 images stored at --image-size (32 =
CIFAR-sized; prepared datasets are uint8 arrays):
  bare      the model alone on normalised tensors already on the device (same batch,
            precision, memory format, compilation and threads): the ceiling;
  end2end   transfer_lab's path: uint8 batches to the device, resize/crop/normalise there;
  files     with --files N: the same from N generated photo-like JPEGs (~500x375) on
            disk, a dataset stored as its original files: read on host threads, decoded
            where --decode says (auto: nvjpeg on CUDA), resized and cropped on the device
            (the files were just written, so they are read from the page cache);
  naive     a per-image PIL transforms.Compose through a DataLoader, fp32: the baseline
            (--naive-n 0 skips it);
and the ratios end2end/bare (target >= 0.9 on CPU, >= 0.95 on a GPU), files/bare (target
>= 0.5 on a GPU with GPU decoding) and end2end/naive (target >= 3 on a GPU). On CUDA also
the fraction of the card's dense bf16 peak reached end to end, from the FLOPs of one image
counted by torch.utils.flop_counter.FlopCounterMode.

With --parts N (N > 1): the same images extracted as one part and as N parts (cut on
batches, as extract.parts cuts a split; each run in shards of --shard-size), each written
as a bottleneck pickle, and whether the gathered pickle is byte-identical to the one-part run's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from transfer_lab.bottleneck import Bottleneck, write_bottleneck
from transfer_lab.decode import decode_device
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


def flops_per_image(spec: dict, input_size: int) -> float:
    """FLOPs (multiply-add = 2) of one image through the network, counted on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    model = load_backbone(NetworkSpec(**spec)).model
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, input_size, input_size))
    return float(counter.get_total_flops())


def write_photos(folder: Path, n: int, size: tuple[int, int], threads: int) -> list[str]:
    """N photo-like JPEGs of about ``size`` (width, height): random crops of scikit-learn's
    sample photos, a third of them portrait, at quality 90 (ImageNet's files are ~q90)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    sources = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    width, height = size

    def one(k: int) -> str:
        rng = np.random.default_rng(k)
        photo = sources[k % 2]
        w, h = (width, height) if k % 3 else (height, width)
        scale = max(w / photo.shape[1], h / photo.shape[0]) * rng.uniform(1.0, 1.3)
        image = Image.fromarray(photo).resize((int(photo.shape[1] * scale) + 1, int(photo.shape[0] * scale) + 1))
        left, top = rng.integers(0, image.width - w + 1), rng.integers(0, image.height - h + 1)
        path = folder / f"{k:06d}.jpg"
        image.crop((left, top, left + w, top + h)).save(path, quality=90)
        return str(path)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


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
        for k, segments in enumerate(part_bounds({"train": len(images)}, parts, batch_size)):
            (_, lo, hi), = segments  # one split: one segment a part
            start = time.perf_counter()
            features = extract_sharded(extractor, images[lo:hi], tmp / f"part-{k}", shard_size, batch_size).features
            seconds += time.perf_counter() - start
            paths.append(tmp / f"part-{k}.npy")
            np.save(paths[-1], features)
            records.append({"part": k, "parts": parts, "segments": segments, **meta, "meta": meta})
        gathered = gather_parts(paths, records, {"train": len(images)})["train"]
        write_bottleneck(tmp / "gathered.p", Bottleneck(gathered, labels, ["x"], meta))
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
    parser.add_argument("--compile", nargs="?", const="true", default="false", choices=["false", "true", "max-autotune"],
                        help="extract.compile (alone: true)")
    parser.add_argument("--cuda-graph", action="store_true", help="extract.cuda_graph")
    parser.add_argument("--files", type=int, default=0, help="also measure extraction from N generated JPEG files")
    parser.add_argument("--photo-size", default="500x375", help="width x height of the generated JPEGs")
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"], help="extract.decode")
    parser.add_argument("--naive-n", type=int, default=None, help="images for the naive baseline (default: n; 0: skip)")
    parser.add_argument("--parts", type=int, default=1, help="also check N-part extraction against one part")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard, for --parts")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    spec = {"arch": args.arch, "weights": args.weights, "input_size": args.input_size}
    compile = {"false": False, "true": True}.get(args.compile, args.compile)
    extractor = Extractor(load_backbone(NetworkSpec(**spec)), args.device, args.precision, compile=compile,
                          cuda_graph=args.cuda_graph, decode=args.decode)
    dev = extractor.device
    images = np.random.default_rng(0).integers(0, 256, (args.n, args.image_size, args.image_size, 3), dtype=np.uint8)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{args.arch} {args.input_size}px from {args.image_size}px uint8, batch {args.batch_size}, "
          f"{extractor.precision}, compile {args.compile}, cuda_graph {extractor.cuda_graph}, {name}, "
          f"torch {torch.__version__}")

    bare = bare_forward(extractor, args.n, args.batch_size)
    e2e = end_to_end(extractor, images, args.batch_size)
    print(f"bare forward   {bare:10.1f} img/s")
    print(f"end to end     {e2e:10.1f} img/s")
    if args.files:
        with tempfile.TemporaryDirectory() as folder:
            size = tuple(int(v) for v in args.photo_size.split("x"))
            paths = np.array(write_photos(Path(folder), args.files, size, args.threads))
            where = decode_device(args.decode, dev).type
            files = end_to_end(extractor, paths, args.batch_size)
            print(f"from files     {files:10.1f} img/s   ({args.files} JPEGs of {args.photo_size}, decoded on "
                  f"{where}, {args.threads} host threads)")
    naive_n = args.n if args.naive_n is None else args.naive_n
    if naive_n:
        base = naive(spec, images[:naive_n], args.batch_size, dev,
                     args.workers if args.workers is not None else args.threads)
        print(f"naive baseline {base:10.1f} img/s")
    print(f"ratio end2end/bare  {e2e / bare:.2f}")
    if args.files:
        print(f"ratio files/bare    {files / bare:.2f}")
    if naive_n:
        print(f"ratio end2end/naive {e2e / base:.2f}")
    if args.parts > 1:
        same, one, split = parts_identical(extractor, images, args.parts, args.shard_size, args.batch_size)
        print(f"parts {args.parts} (cut on batches of {args.batch_size}, shards of {args.shard_size}): {one:.1f} s "
              f"in one part, {split:.1f} s in {args.parts} parts added up; gathered pickle identical to the one-part "
              f"run: {'yes' if same else 'NO'}")
    if dev.type == "cuda":
        flops = flops_per_image(spec, extractor.prep.p.crop)
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        if peak:
            achieved = e2e * flops
            print(f"achieved {achieved / 1e12:.1f} TFLOP/s = {100 * achieved / peak:.1f}% of the dense bf16 peak "
                  f"({peak / 1e12:.0f} TFLOP/s; {flops / 1e9:.2f} GFLOP per image)")
        else:
            print(f"{flops / 1e9:.2f} GFLOP per image; no bf16 peak known for {name}")


if __name__ == "__main__":
    main()
