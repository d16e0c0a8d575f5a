"""Rule train_head: bottleneck pickles of one (network, dataset) -> head file + metrics JSON."""

import json
import logging

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.files import atomic_write, log_to
from transfer_lab.heads import save_head, train_head
from transfer_lab.provenance import versions

with log_to(snakemake.log[0]):
    w, cfg = snakemake.wildcards, snakemake.params.head
    splits = {name: read_bottleneck(path) for name, path in snakemake.input.items()}
    logging.info("training head %s (%s) on %s/%s: %s", w.head, cfg["kind"], w.network, w.dataset,
                 {k: b.features.shape for k, b in splits.items()})
    head_file, metrics = train_head(cfg, splits["train"], splits["validation"], splits.get("test"))
    chosen = {k: metrics[k] for k in ("best_epoch", "C") if k in metrics}
    logging.info("accuracy %s, %s, %.1f s", metrics["accuracy"], chosen, metrics["train_seconds"])
    meta = splits["train"].meta
    metrics = {"network": w.network, "dataset": w.dataset, "head": w.head,
               "arch": meta.get("arch", ""), "weights": meta.get("weights", ""), **metrics,
               "config": cfg}
    # Seeds and library versions, in both outputs: the head's own, and the features'.
    run_meta = {"seed": cfg["seed"], "split_seed": meta.get("seed", -1),
                **{f"version_{k}": v for k, v in versions("torch", "numpy", "scikit-learn").items()}}
    head_file["meta"] = run_meta
    metrics["meta"] = {**run_meta, "features": meta}
    save_head(snakemake.output.head, head_file)
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)
