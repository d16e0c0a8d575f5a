"""Rule extract_features: prepared images of one split -> bottleneck pickle + throughput JSON.

Features are computed in shards kept under results/shards/ until the pickle is written,
so a killed job resumes where it stopped.
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from transfer_lab.bottleneck import Bottleneck, write_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.decode import decode_device
from transfer_lab.devices import claim_device
from transfer_lab.extract import Extractor, extract_sharded
from transfer_lab.files import atomic_write, log_to
from transfer_lab.networks import load_backbone, network_meta
from transfer_lab.specs import WEIGHTS_DIR, ExtractSettings, NetworkSpec

with log_to(snakemake.log[0]) as log:
    w, params = snakemake.wildcards, snakemake.params
    spec = NetworkSpec(**params.network["spec"])
    settings = ExtractSettings.from_config(snakemake.config["extract"])
    torch.set_num_threads(snakemake.threads)
    ds = load_prepared(snakemake.input.dataset, mmap=True)
    images, labels = ds.subset(w.split)  # image paths for a dataset stored as files, decoded in extract_sharded
    backbone = load_backbone(spec, checkpoint_dir=WEIGHTS_DIR)  # where fetch_weights put input.checkpoint
    logging.info("%s (%s): %d-d features; preprocessing: %s", w.network, spec.describe(), backbone.feature_dim,
                 backbone.preprocess.describe())
    extractor = Extractor(backbone, claim_device(settings.device), params.network["precision"],
                          compile=settings.compile, cuda_graph=settings.cuda_graph, decode=settings.decode)
    logging.info("extracting %d %s images of %s on %s (%s)", len(images), w.split, w.dataset,
                 extractor.device, extractor.precision)
    # Shards are reused only by a job with the same network, code, versions and shard size
    # (extract_sharded keeps them apart by device type and precision too).
    definition = repr((spec, params.code, params.versions, settings.shard_size))
    shard_root = Path("results/shards") / f"{w.network}_{w.dataset}_{w.split}"
    shard_dir = shard_root / hashlib.sha256(definition.encode()).hexdigest()[:12]
    result = extract_sharded(extractor, images, shard_dir, settings.shard_size, settings.batch_size, progress=log)
    logging.info("%.1f s, %.1f images/s on %s (%s)", result.seconds, result.images_per_second,
                 result.device, result.precision)
    meta = {
        **network_meta(w.network, w.dataset, spec, backbone.preprocess, ds.meta, params.versions),
        "split": w.split, "device": extractor.device.type, "precision": result.precision,
        "feature_dim": backbone.feature_dim,
    }
    write_bottleneck(snakemake.output.features, Bottleneck(result.features, labels, ds.class_names, meta))
    metrics = {
        "network": w.network, "dataset": w.dataset, "split": w.split, "n_images": len(images),
        "n_computed": result.n_computed, "seconds": result.seconds, "images_per_second": result.images_per_second,
        "device": result.device, "precision": result.precision,
        "batch_size": settings.batch_size, "threads": snakemake.threads,
        "compile": settings.compile, "cuda_graph": extractor.cuda_graph,
        # Where a file dataset's JPEGs were decoded (None: a dataset stored as pixels).
        "decode": decode_device(settings.decode, extractor.device).type if ds.files is not None else None,
        "meta": {k: v for k, v in meta.items() if k in ("seed", "init_seed") or k.startswith("version_")},
    }
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)
    shutil.rmtree(shard_root, ignore_errors=True)
