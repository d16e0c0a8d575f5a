"""One-shot device check: the CUDA extraction path against the CPU, and its throughput.

Run on a machine with a GPU, with the library importable (PYTHONPATH=src):
    python benchmarks/gpu_check.py
Prints, measured in this one run:
  - DevicePreprocess on the GPU against Pillow (max level difference, exact fraction);
  - cosine of GPU features (fp32 and bf16) against CPU fp32 features, per image;
  - end-to-end extraction images/s over bare model forward images/s on tensors already
    on the device (same batch, same precision), for ResNet-50 at 224 from 32x32 uint8;
  - the CUDA-only paths against the plain one: pinned staging + side-stream copies + a
    CUDA graph (eager and compiled) give the features of the eager path, the last partial
    batch included; out-of-memory halving still works with them on;
  - JPEG files decoded by nvjpeg against the same files decoded on the CPU (pixels and
    features), and a corrupt JPEG in a GPU-decoded batch named in the error.
benchmarks/extract_throughput.py measures the speed of these paths (gpu_run.sh runs both).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image
from torchvision import transforms

from transfer_lab.decode import FileInputs
from transfer_lab.extract import Extractor, extract_features
from transfer_lab.networks import load_backbone
from transfer_lab.preprocess import DevicePreprocess, Preprocess
from transfer_lab.specs import NetworkSpec


def pillow_agreement(device: torch.device) -> None:
    photo = load_sample_image("china.jpg")
    for interpolation in ("bicubic", "bilinear"):
        p = Preprocess(256, 224, interpolation, (0.0,) * 3, (1 / 255,) * 3)
        fast = DevicePreprocess(p).to(device)(torch.from_numpy(photo.copy()[None]).to(device))
        fast = fast[0].permute(1, 2, 0).cpu().numpy()
        ref = np.asarray(transforms.CenterCrop(224)(transforms.Resize(
            256, interpolation=transforms.InterpolationMode(interpolation))(Image.fromarray(photo))), dtype=np.float64)
        diff = np.abs(fast - ref)
        print(f"preprocess {interpolation} on {device}: max {diff.max():.0f} level(s), "
              f"{100 * (diff == 0).mean():.3f}% of pixels identical to Pillow")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def agreement_with_cpu(spec: dict, images: np.ndarray) -> None:
    cpu = extract_features(load_backbone(NetworkSpec(**spec)), images, batch_size=64, device="cpu", precision="fp32")
    for precision in ("fp32", "bf16", "fp16"):
        gpu = extract_features(load_backbone(NetworkSpec(**spec)), images, batch_size=64, device="cuda", precision=precision)
        c = cosine(cpu.features, gpu.features)
        print(f"{spec['arch']} {spec.get('weights')} {precision} cuda vs fp32 cpu: cosine min {c.min():.6f} "
              f"mean {c.mean():.6f} over {len(c)} images")


def throughput(spec: dict, n: int, batch_size: int, precision: str) -> None:
    backbone = load_backbone(NetworkSpec(**spec))
    images = np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    extract_features(backbone, images[:batch_size * 2], batch_size=batch_size, device="cuda", precision=precision)
    result = extract_features(backbone, images, batch_size=batch_size, device="cuda", precision=precision)
    model = backbone.model  # already on the device, channels_last, from the run above
    crop = backbone.preprocess.crop
    x = torch.randn(batch_size, 3, crop, crop, device="cuda").contiguous(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        steps = n // batch_size
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
        bare = steps * batch_size / (time.perf_counter() - start)
    print(f"{spec['arch']} {crop}px {precision} batch {batch_size}: end-to-end {result.images_per_second:.0f} img/s, "
          f"bare forward {bare:.0f} img/s, ratio {result.images_per_second / bare:.2f}")


def cuda_paths_agree() -> None:
    """Staging, side stream and CUDA graph (with and without compile) against the eager path."""
    spec = {"arch": "resnet50", "weights": "random", "input_size": 224}
    images = np.random.default_rng(1).integers(0, 256, size=(640, 32, 32, 3), dtype=np.uint8)  # 2.5 batches
    reference = Extractor(load_backbone(NetworkSpec(**spec)), "cuda", "fp32").run(images, 256)
    for compile, precision in ((False, "fp32"), (False, "bf16"), (True, "bf16")):
        extractor = Extractor(load_backbone(NetworkSpec(**spec)), "cuda", precision, compile=compile, cuda_graph=True)
        first = extractor.run(images, 256)
        again = extractor.run(images, 256)  # replays the graph captured by the first run
        captured = sum(graph is not None for graph in extractor._graphs.values())
        c = cosine(reference, again)
        print(f"cuda_graph, compile {compile}, {precision}: {captured} graph(s) captured, replay == first run: "
              f"{first.tobytes() == again.tobytes()}, cosine to eager fp32 min {c.min():.6f}")
    # Out of memory with the staging buffers and the graph on: halved until it fits, same features.
    many = np.random.default_rng(2).integers(0, 256, size=(40000, 32, 32, 3), dtype=np.uint8)
    extractor = Extractor(load_backbone(NetworkSpec(**spec)), "cuda", "bf16", cuda_graph=True)
    halved = extractor.run(many, len(many))  # ~8 MB of activations per image: far more than the card holds
    ran_at = extractor.max_batch_size
    del extractor
    torch.cuda.empty_cache()
    plain = Extractor(load_backbone(NetworkSpec(**spec)), "cuda", "bf16").run(many, 256)
    print(f"out of memory at batch {len(many)}: ran at {ran_at}; cosine to batch 256 min "
          f"{cosine(halved, plain).min():.6f}")


def gpu_decoding_agrees() -> None:
    """nvjpeg against the CPU decoder, on photo-like JPEGs of both orientations; a corrupt file named."""
    sys.path.insert(0, str(Path(__file__).parent))
    from extract_throughput import write_photos

    from transfer_lab.sources.base import DatasetError

    backbone = load_backbone(NetworkSpec(arch="resnet50", weights="random"))
    with tempfile.TemporaryDirectory() as folder:
        paths = write_photos(Path(folder), 96, (500, 375), 16)
        gpu = FileInputs(DevicePreprocess(backbone.preprocess).cuda(), torch.device("cuda"), "gpu")
        cpu = FileInputs(DevicePreprocess(backbone.preprocess).cuda(), torch.device("cuda"), "cpu")
        a, b = gpu.decoded(gpu.submit(paths[:8]).result()), cpu.decoded(cpu.submit(paths[:8]).result())
        diff = torch.cat([(x.int() - y.int()).abs().flatten() for x, y in zip(a, b, strict=True)]).float()
        print(f"nvjpeg vs CPU decode: max {diff.max():.0f} levels, mean {diff.mean():.3f}, "
              f"{100 * (diff == 0).float().mean():.2f}% of values identical")
        features = {}
        for decode in ("gpu", "cpu"):
            features[decode] = Extractor(backbone, "cuda", "fp32", decode=decode).run(np.array(paths), 32)
        c = cosine(features["gpu"], features["cpu"])
        print(f"features from GPU- vs CPU-decoded JPEGs (fp32): cosine min {c.min():.6f} mean {c.mean():.6f}")
        bad = Path(folder) / "corrupt.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 10)
        try:
            Extractor(backbone, "cuda", "fp32", decode="gpu").run(np.array([*paths[:5], str(bad)]), 8)
            print("corrupt JPEG on the GPU: NOT detected")
        except DatasetError as err:
            print(f"corrupt JPEG on the GPU: {err}")


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name(0))
    device = torch.device("cuda")
    pillow_agreement(device)
    grey = np.rint(load_digits().images[:512] * 255 / 16).astype(np.uint8)
    digits = np.repeat(grey[..., None], 3, axis=-1)
    agreement_with_cpu({"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 96}, digits)
    agreement_with_cpu({"arch": "resnet50", "weights": "random", "input_size": 224}, digits[:128])
    for precision in ("bf16", "fp32"):
        throughput({"arch": "resnet50", "weights": "random"}, n=8192, batch_size=256, precision=precision)
    throughput({"arch": "timm:tf_efficientnet_lite0", "weights": "bundled"}, n=8192, batch_size=256, precision="bf16")
    cuda_paths_agree()
    gpu_decoding_agrees()


if __name__ == "__main__":
    main()
