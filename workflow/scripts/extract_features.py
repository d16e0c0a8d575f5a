"""Rule extract_features: prepared images of one split -> bottleneck pickle + throughput JSON."""

import json
import logging
from pathlib import Path

import torch

from transfer_lab.bottleneck import Bottleneck, write_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.extract import extract_features
from transfer_lab.files import atomic_write, log_to
from transfer_lab.networks import load_backbone, preprocess_meta

with log_to(snakemake.log[0]) as log:
    w, spec = snakemake.wildcards, snakemake.params.network
    torch.set_num_threads(snakemake.threads)
    ds = load_prepared(snakemake.input.dataset)
    images, labels = ds.subset(w.split)
    checkpoint = snakemake.input.get("checkpoint")
    backbone = load_backbone(spec, checkpoint_dir=Path(checkpoint).parent.parent if checkpoint else None)
    logging.info(
        "%s (%s, weights %s): %d-d features; preprocessing: %s",
        w.network, spec["arch"], spec["weights"], backbone.feature_dim, backbone.preprocess.describe(),
    )
    logging.info("extracting %d %s images of %s", len(images), w.split, w.dataset)
    result = extract_features(
        backbone, images, batch_size=snakemake.params.batch_size,
        device=spec["device"], precision=spec["precision"], progress=log,
    )
    logging.info(
        "%.1f s, %.1f images/s on %s (%s)",
        result.seconds, result.images_per_second, result.device, result.precision,
    )
    meta = {
        "network": w.network, "arch": spec["arch"], "weights": spec["weights"],
        "dataset": w.dataset, "split": w.split, "input_size": backbone.preprocess.crop,
        "layer": "penultimate (classifier removed)", "precision": result.precision,
        "feature_dim": backbone.feature_dim,
        **preprocess_meta(backbone.preprocess),
        **{f"version_{k}": v for k, v in spec["versions"].items()},
    }
    write_bottleneck(snakemake.output.features, Bottleneck(result.features, labels, ds.class_names, meta))
    metrics = {
        "network": w.network, "dataset": w.dataset, "split": w.split, "n_images": len(images),
        "seconds": result.seconds, "images_per_second": result.images_per_second,
        "device": result.device, "precision": result.precision,
        "batch_size": snakemake.params.batch_size, "threads": snakemake.threads,
    }
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)
