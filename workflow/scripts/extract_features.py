"""Rules extract_features and extract_part: prepared images of one split -> bottleneck
pickle + throughput JSON.

With extract.parts 1, extract_features computes the split itself. With more, each
extract_part job computes its share of the split's rows (cut on batch boundaries, see
transfer_lab.extract.part_bounds) into a .npy file and a JSON record, and extract_features,
given those as inputs, gathers them into the same pickle a one-part run writes.
Features are computed in shards kept under results/shards/ until the job's output is
written, so a killed job resumes where it stopped; finished parts are outputs, kept.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from transfer_lab.bottleneck import Bottleneck, write_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.decode import decode_device
from transfer_lab.devices import claim_device
from transfer_lab.extract import Extractor, extract_sharded, gather_parts, part_bounds
from transfer_lab.files import atomic_write, log_to
from transfer_lab.networks import load_backbone, network_meta
from transfer_lab.specs import WEIGHTS_DIR, ExtractSettings, NetworkSpec


def compute(images, rows, shard_root):
    """Features of ``images[rows[0]:rows[1]]``, the pickle's meta, the result and the settings."""
    spec = NetworkSpec(**params.network["spec"])
    settings = ExtractSettings.from_config(snakemake.config["extract"])
    torch.set_num_threads(snakemake.threads)
    backbone = load_backbone(spec, checkpoint_dir=WEIGHTS_DIR)  # where fetch_weights put input.checkpoint
    logging.info("%s (%s): %d-d features; preprocessing: %s", w.network, spec.describe(), backbone.feature_dim,
                 backbone.preprocess.describe())
    extractor = Extractor(backbone, claim_device(settings.device), params.network["precision"],
                          compile=settings.compile, cuda_graph=settings.cuda_graph, decode=settings.decode,
                          n_images=rows[1] - rows[0], compile_cache=settings.compile_cache)
    lo, hi = rows
    logging.info("extracting %d %s images of %s (rows %d..%d of %d) on %s (%s)", hi - lo, w.split, w.dataset,
                 lo, hi, len(images), extractor.device, extractor.precision)
    # Shards are reused only by a job with the same network, code, versions and batch size
    # (extract_sharded keeps them apart by device type and precision too). Not the shard
    # size: shards are named by their rows, and any size gives the same features.
    definition = repr((spec, params.code, params.versions, settings.batch_size))
    shard_dir = shard_root / hashlib.sha256(definition.encode()).hexdigest()[:12]
    result = extract_sharded(extractor, images[lo:hi], shard_dir, settings.shard_images, settings.batch_size,
                             progress=log)
    logging.info("%.1f s, %.1f images/s on %s (%s)", result.seconds, result.images_per_second,
                 result.device, result.precision)
    meta = {
        **network_meta(w.network, w.dataset, spec, backbone.preprocess, ds.meta, params.versions),
        "split": w.split, "device": extractor.device.type, "precision": result.precision,
        "feature_dim": backbone.feature_dim,
    }
    return meta, result, settings, extractor


def write_metrics(meta, n_computed, seconds, images_per_second, device, precision, batch_size, **extra):
    metrics = {
        "network": w.network, "dataset": w.dataset, "split": w.split, "n_images": len(labels),
        "n_computed": n_computed, "seconds": seconds, "images_per_second": images_per_second,
        "device": device, "precision": precision, "batch_size": batch_size, "threads": snakemake.threads, **extra,
        "meta": {k: v for k, v in meta.items() if k in ("seed", "init_seed") or k.startswith("version_")},
    }
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)


with log_to(snakemake.log[0]) as log:
    w, params = snakemake.wildcards, snakemake.params
    ds = load_prepared(snakemake.input.dataset, mmap=True)
    images, labels = ds.subset(w.split)  # image paths for a dataset stored as files, decoded in extract_sharded
    shard_root = Path("results/shards") / f"{w.network}_{w.dataset}_{w.split}"
    if snakemake.rule == "extract_part":
        part, parts = params.part["part"], params.part["parts"]
        settings = ExtractSettings.from_config(snakemake.config["extract"])
        bounds = part_bounds(len(images), parts, settings.batch_size, f"split {w.split} of {w.dataset}")
        rows = bounds[part]
        used = sum(lo < hi for lo, hi in bounds)
        if used < parts:
            logging.warning("split %s of %s: %d images are %d batch(es) of extract.batch_size %d, and parts are cut "
                            "on batches: %d of the %d parts compute them, the others nothing", w.split, w.dataset,
                            len(images), used, settings.batch_size, used, parts)
        if rows[0] == rows[1]:
            logging.info("part %d of %d: no rows to compute", part + 1, parts)
            features = np.empty((0, 0), dtype=np.float32)
            record = {"n_computed": 0, "seconds": 0.0, "device": None, "precision": None, "meta": None}
        else:
            meta, result, settings, _ = compute(images, rows, shard_root / f"part-{part + 1}-of-{parts}")
            features = result.features
            record = {"n_computed": result.n_computed, "seconds": result.seconds, "device": result.device,
                      "precision": result.precision, "meta": meta}
        with atomic_write(snakemake.output.features) as f:
            np.save(f, features)
        record = {"part": part, "parts": parts, "rows": list(rows), **record, "batch_size": settings.batch_size}
        with atomic_write(snakemake.output.record, "w") as f:
            json.dump(record, f, indent=2)
        shutil.rmtree(shard_root / f"part-{part + 1}-of-{parts}", ignore_errors=True)
    elif "parts" in snakemake.input.keys():
        records = [json.loads(Path(p).read_text()) for p in snakemake.input.records]
        logging.info("gathering %d parts of %d %s images of %s", len(records), len(images), w.split, w.dataset)
        features = gather_parts(list(snakemake.input.parts), records, len(images))
        meta = records[0]["meta"]
        write_bottleneck(snakemake.output.features, Bottleneck(features, labels, ds.class_names, meta))
        # Seconds: the parts' computing time added up (GPU-seconds), so images/s is per GPU
        # as in a one-part run; each part's own numbers are kept beside.
        computed, seconds = sum(r["n_computed"] for r in records), sum(r["seconds"] for r in records)
        write_metrics(meta, computed, seconds, computed / seconds if seconds > 0 else float("nan"),
                      records[0]["device"], records[0]["precision"], records[0]["batch_size"],
                      parts=[{k: r[k] for k in ("rows", "n_computed", "seconds", "device")} for r in records])
        shutil.rmtree(shard_root, ignore_errors=True)
    else:
        meta, result, settings, extractor = compute(images, (0, len(images)), shard_root)
        write_bottleneck(snakemake.output.features, Bottleneck(result.features, labels, ds.class_names, meta))
        # Where a file dataset's JPEGs were decoded (None: a dataset stored as pixels).
        decoded_on = decode_device(settings.decode, extractor.device).type if ds.files is not None else None
        write_metrics(meta, result.n_computed, result.seconds, result.images_per_second, result.device,
                      result.precision, settings.batch_size, compile=extractor.compile,
                      cuda_graph=extractor.cuda_graph, decode=decoded_on)
        shutil.rmtree(shard_root, ignore_errors=True)
