"""Rules screen_candidate and screen_survivor: one candidate's features at one rung of the
selection (successive halving).

A rung's training subset is nested in the previous rung's (transfer_lab.selection.rung_subsets:
per class, the first rows of one seeded order), so a later rung computes only the images its
subset adds and takes the rest from the previous rung's file. The first rung also computes
the validation split, once for every rung. Pickles in the bottleneck format, rows in the
training split's order; their meta carries how many images were computed and how fast.
"""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging
import time

import numpy as np
import torch

from transfer_lab.bottleneck import Bottleneck, read_bottleneck, write_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.devices import claim_device
from transfer_lab.extract import Extractor
from transfer_lab.files import end_job, log_to
from transfer_lab.networks import load_backbone, network_meta
from transfer_lab.selection import rung_subsets
from transfer_lab.specs import WEIGHTS_DIR, ExtractSettings, NetworkSpec


def compute(extractor, images, what: str) -> tuple[np.ndarray, dict]:
    """Features of ``images`` and what they cost (images computed, seconds, images/s)."""
    logging.info("extracting %d %s images on %s (%s)", len(images), what, extractor.device, extractor.precision)
    start = time.perf_counter()
    features = extractor.run(images, settings.batch_size) if len(images) else np.empty((0, extractor.feature_dim),
                                                                                       np.float32)
    seconds = time.perf_counter() - start
    rate = len(images) / seconds if len(images) and seconds > 0 else 0.0
    logging.info("%s: %.1f s, %.1f images/s", what, seconds, rate)
    return features, {"n_computed": len(images), "seconds": seconds, "images_per_second": rate}


with log_to(snakemake.log[0]):
    w, params = snakemake.wildcards, snakemake.params
    settings = ExtractSettings.from_config(snakemake.config["extract"])
    rung, subset = int(w.rung), params.subset
    ds = load_prepared(snakemake.input.dataset, mmap=True)
    images, labels = ds.subset("train")
    first = subset["previous"] is None  # the first rung: it computes validation too
    fractions = [subset["fraction"]] if first else [subset["previous"], subset["fraction"]]
    rows = rung_subsets(labels, fractions, subset["seed"], ds.class_names, dataset=w.dataset)
    new = rows[-1] if first else np.setdiff1d(rows[-1], rows[0])
    validation = ds.subset("validation") if first else None
    timing.mark("load")

    spec = NetworkSpec(**params.network["spec"])
    torch.set_num_threads(snakemake.threads)
    backbone = load_backbone(spec, checkpoint_dir=WEIGHTS_DIR)
    timing.mark("weights")
    extractor = Extractor.from_settings(backbone, claim_device(settings.device), params.network["precision"],
                                        settings, len(new) + (len(validation[1]) if first else 0))
    timing.mark("device")
    meta = {
        **network_meta(w.network, w.dataset, spec, backbone.preprocess, ds.meta, params.versions),
        **extractor.meta,
        "rung": rung, "fraction": subset["fraction"], "subset_seed": subset["seed"],
        **{f"{split}_images": n for split, n in ds.split_sizes().items()},  # the whole splits: what trying all costs
    }
    logging.info("%s (%s), rung %d: %d of %d training images (%d new)", w.network, spec.describe(), rung,
                 len(rows[-1]), len(labels), len(new))
    features, cost = compute(extractor, images[new], f"rung {rung} training")
    if not first:
        before = read_bottleneck(snakemake.input.previous)
        if len(before.labels) != len(rows[0]) or not np.array_equal(before.labels, labels[rows[0]]):
            raise ValueError(f"{snakemake.input.previous}: not the previous rung's subset of this dataset; "
                             "delete it and rerun")
        # Both row lists are sorted: place the previous rung's rows and the new ones in row order.
        order = np.argsort(np.concatenate([rows[0], new]), kind="stable")
        features = np.concatenate([before.features, features])[order]
    write_bottleneck(snakemake.output.features,
                     Bottleneck(features, labels[rows[-1]], ds.class_names, {**meta, "split": "train", **cost}))
    if first:
        val_images, val_labels = validation
        val_features, val_cost = compute(extractor, val_images, "validation")
        write_bottleneck(snakemake.output.validation, Bottleneck(
            val_features, val_labels, ds.class_names, {**meta, "split": "validation", **val_cost}))
    timing.mark("work")

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
