"""Rules extract_features and extract_part: prepared images of one dataset -> a bottleneck
pickle per split + one throughput JSON.

One job per (network, dataset): the network is loaded (and compiled, and its device
started) once, and every split goes through it. With extract.parts 1, extract_features
computes the dataset itself. With more, each extract_part job computes its share of the
dataset's batches (split after split, cut between batches, see
transfer_lab.extract.part_bounds) into a .npy file and a JSON record, and
extract_features, given those as inputs, gathers them into the same pickles a one-part
run writes. Features are computed in shards kept under results/shards/ until the job's
outputs are written, so a killed job resumes where it stopped; finished parts are
outputs, kept.
"""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from transfer_lab.bottleneck import Bottleneck, write_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.decode import decode_device
from transfer_lab.devices import claim_device
from transfer_lab.extract import Extractor, extract_sharded, gather_parts, part_bounds
from transfer_lab.files import atomic_write, end_job, log_to
from transfer_lab.networks import load_backbone, network_meta
from transfer_lab.specs import WEIGHTS_DIR, ExtractSettings, NetworkSpec


def load_extractor(settings, n_images: int):
    """The network on its device, once for every split the job computes (``n_images`` in
    all: whether ``compile: auto`` compiles); and its pickles' meta."""
    spec = NetworkSpec(**params.network["spec"])
    torch.set_num_threads(snakemake.threads)
    backbone = load_backbone(spec, checkpoint_dir=WEIGHTS_DIR)  # where fetch_weights put input.checkpoint
    timing.mark("weights")
    logging.info("%s (%s): %d-d features; preprocessing: %s", w.network, spec.describe(), backbone.feature_dim,
                 backbone.preprocess.describe())
    extractor = Extractor.from_settings(backbone, claim_device(settings.device), params.network["precision"],
                                        settings, n_images)
    timing.mark("device")
    extractor.on_first_batch = lambda: timing.mark("first batch")  # with any compilation
    meta = {**network_meta(w.network, w.dataset, spec, backbone.preprocess, ds.meta, params.versions),
            **extractor.meta}
    return spec, extractor, meta


def shard_dir(spec, settings, where: Path) -> Path:
    """Shards are reused only by a job with the same network, code, versions, batch size and
    prepared dataset (extract_sharded keeps them apart by device type and precision too).
    Not the shard size: shards are named by their rows, and any size gives the same features."""
    stat = os.stat(snakemake.input.dataset)
    definition = repr((spec, params.code, params.versions, settings.batch_size, stat.st_size, stat.st_mtime_ns))
    return where / hashlib.sha256(definition.encode()).hexdigest()[:12]


def compute(segments, settings, shard_root):
    """Features of each (split, lo, hi) segment, one network load for all; per segment its
    ExtractionResult, and the extractor and meta."""
    spec, extractor, meta = load_extractor(settings, sum(hi - lo for _, lo, hi in segments))
    results = []
    for split, lo, hi in segments:
        images = subsets[split][0]  # image paths for a dataset stored as files, decoded in extract_sharded
        logging.info("extracting %d %s images of %s (rows %d..%d of %d) on %s (%s)", hi - lo, split, w.dataset,
                     lo, hi, len(images), extractor.device, extractor.precision)
        result = extract_sharded(extractor, images[lo:hi], shard_dir(spec, settings, shard_root / split),
                                 settings.shard_images, settings.batch_size, progress=log)
        logging.info("%s: %.1f s, %.1f images/s on %s (%s)", split, result.seconds, result.images_per_second,
                     result.device, result.precision)
        results.append(result)
    timing.mark("work")
    return results, extractor, meta


def write_pickles(features: dict, meta: dict) -> None:
    for split, (_, labels) in subsets.items():
        write_bottleneck(snakemake.output[split],
                         Bottleneck(features[split], labels, ds.class_names, {**meta, "split": split}))


def write_metrics(per_split: dict, device, precision, batch_size, meta, **extra):
    """Throughput of the whole job, and per split (images, computed, seconds)."""
    computed = sum(s["n_computed"] for s in per_split.values())
    seconds = sum(s["seconds"] for s in per_split.values())
    metrics = {
        "network": w.network, "dataset": w.dataset, "n_images": sum(s["n_images"] for s in per_split.values()),
        "n_computed": computed, "seconds": seconds,
        "images_per_second": computed / seconds if seconds > 0 else float("nan"),
        "device": device, "precision": precision, "batch_size": batch_size, "threads": snakemake.threads, **extra,
        "splits": per_split,
        "meta": {k: v for k, v in meta.items() if k in ("seed", "init_seed") or k.startswith("version_")},
    }
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)


with log_to(snakemake.log[0]) as log:
    w, params = snakemake.wildcards, snakemake.params
    settings = ExtractSettings.from_config(snakemake.config["extract"])
    ds = load_prepared(snakemake.input.dataset, mmap=True)
    # Views of the mapped file (each split is one block of rows): images, or paths, and labels.
    subsets = {split: ds.subset(split) for split in params.splits}
    sizes = {split: len(labels) for split, (_, labels) in subsets.items()}
    shard_root = Path("results/shards") / f"{w.network}_{w.dataset}"
    timing.mark("load")
    if snakemake.rule == "extract_part":
        part, parts = params.part["part"], params.part["parts"]
        bounds = part_bounds(sizes, parts, settings.batch_size, f"dataset {w.dataset}")
        segments = bounds[part]
        used = sum(bool(b) for b in bounds)
        if used < parts:
            logging.warning("%s: %d images are %d batch(es) of extract.batch_size %d, and parts are cut on "
                            "batches: %d of the %d parts compute them, the others nothing", w.dataset,
                            sum(sizes.values()), used, settings.batch_size, used, parts)
        where = shard_root / f"part-{part + 1}-of-{parts}"
        if not segments:
            logging.info("part %d of %d: no rows to compute", part + 1, parts)
            features = np.empty((0, 0), dtype=np.float32)
            record = {"computed": [], "device": None, "precision": None, "meta": None}
        else:
            results, _, meta = compute(segments, settings, where)
            features = np.concatenate([r.features for r in results])
            record = {"computed": [[r.n_computed, r.seconds] for r in results],  # per segment: images, seconds
                      "device": results[0].device, "precision": meta["precision"], "meta": meta}
        with atomic_write(snakemake.output.features) as f:
            np.save(f, features)
        record = {"part": part, "parts": parts, "segments": [list(s) for s in segments], **record,
                  "batch_size": settings.batch_size}
        with atomic_write(snakemake.output.record, "w") as f:
            json.dump(record, f, indent=2)
        shutil.rmtree(where, ignore_errors=True)
    elif "parts" in snakemake.input.keys():
        records = [json.loads(Path(p).read_text()) for p in snakemake.input.records]
        logging.info("gathering %d parts of %d images of %s (%s)", len(records), sum(sizes.values()), w.dataset,
                     ", ".join(f"{split} {n}" for split, n in sizes.items()))
        features = gather_parts(list(snakemake.input.parts), records, sizes)
        timing.mark("work")
        first = next(r for r in records if r["segments"])
        write_pickles(features, first["meta"])
        # Seconds: the parts' computing time added up (GPU-seconds), so images/s is per GPU
        # as in a one-part run; each part's own numbers are kept beside.
        per_split = {split: {"n_images": n, "n_computed": 0, "seconds": 0.0} for split, n in sizes.items()}
        for rec in records:
            for (split, _, _), (computed, seconds) in zip(rec["segments"], rec["computed"], strict=True):
                per_split[split]["n_computed"] += computed
                per_split[split]["seconds"] += seconds
        parts = [{"segments": r["segments"], "n_computed": sum(c for c, _ in r["computed"]),
                  "seconds": sum(s for _, s in r["computed"]), "device": r["device"]} for r in records]
        write_metrics(per_split, first["device"], first["precision"], first["batch_size"], first["meta"], parts=parts)
        shutil.rmtree(shard_root, ignore_errors=True)
    else:
        segments = [(split, 0, n) for split, n in sizes.items()]
        results, extractor, meta = compute(segments, settings, shard_root)
        write_pickles({split: r.features for (split, _, _), r in zip(segments, results, strict=True)}, meta)
        # Where a file dataset's JPEGs were decoded (None: a dataset stored as pixels).
        decoded_on = decode_device(settings.decode, extractor.device).type if ds.files is not None else None
        per_split = {split: {"n_images": n, "n_computed": r.n_computed, "seconds": r.seconds}
                     for (split, _, n), r in zip(segments, results, strict=True)}
        write_metrics(per_split, results[0].device, meta["precision"], settings.batch_size, meta,
                      compile=extractor.compile, cuda_graph=extractor.cuda_graph, decode=decoded_on)
        shutil.rmtree(shard_root, ignore_errors=True)

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
