"""Rules train_head and train_shots: bottleneck pickles of one (network, dataset) -> head
file (full training set only) + metrics JSON of every repeat."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import json
import logging

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.files import atomic_write, end_job, log_to
from transfer_lab.heads import save_head
from transfer_lab.knn import check_k
from transfer_lab.provenance import versions
from transfer_lab.repeats import train_repeats

with log_to(snakemake.log[0]):
    w, cfg, p = snakemake.wildcards, snakemake.params.head, snakemake.params
    splits = {name: read_bottleneck(path) for name, path in snakemake.input.items()}
    timing.mark("load")
    if cfg["kind"] == "knn" and p.shots is None:
        check_k(cfg["k"], len(splits["train"].labels), f"heads.{w.head}.k")
    logging.info("training head %s (%s) on %s/%s%s, %d repeat(s): %s", w.head, cfg["kind"], w.network, w.dataset,
                 f", {p.shots} images per class" if p.shots else "", p.repeats,
                 {k: b.features.shape for k, b in splits.items()})
    # consume: the features are standardised in place, held once (read only for this).
    head_file, metrics = train_repeats(cfg, splits["train"], splits["validation"], splits.get("test"), p.repeats,
                                       p.shots, consume=True)
    timing.mark("work")
    chosen = {k: metrics[k] for k in ("best_epoch", "C", "k") if k in metrics}
    logging.info("first repeat: accuracy %s, %s; %.1f s in all", metrics["accuracy"], chosen,
                 metrics["train_seconds"])
    meta = splits["train"].meta
    metrics = {"network": w.network, "dataset": w.dataset, "head": w.head,
               "arch": meta.get("arch", ""), "weights": meta.get("weights", ""), **metrics,
               "config": cfg}
    # Seeds and library versions, in both outputs: the head's own, and the features'.
    run_meta = {"seed": cfg["seed"], "split_seed": meta.get("seed", -1),
                **{f"version_{k}": v for k, v in versions("torch", "numpy", "scikit-learn").items()}}
    metrics["meta"] = {**run_meta, "features": meta}
    if "head" in snakemake.output.keys():
        head_file["meta"] = run_meta
        save_head(snakemake.output.head, head_file)
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
