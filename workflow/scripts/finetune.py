"""Rule finetune: prepared images of one dataset -> fine-tuned network + metrics JSON."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import json
import logging

import torch

from transfer_lab.config import FINETUNED
from transfer_lab.datasets import load_prepared
from transfer_lab.devices import claim_device
from transfer_lab.evaluation import combine_repeats
from transfer_lab.files import atomic_write, end_job, log_to
from transfer_lab.finetune import finetune, save_finetuned
from transfer_lab.networks import load_backbone, network_meta
from transfer_lab.specs import WEIGHTS_DIR, ExtractSettings, NetworkSpec

with log_to(snakemake.log[0]) as log:
    w, params, cfg = snakemake.wildcards, snakemake.params, snakemake.params.finetune
    spec = NetworkSpec(**params.network["spec"])
    settings = ExtractSettings.from_config(snakemake.config["extract"])
    torch.set_num_threads(snakemake.threads)
    ds = load_prepared(snakemake.input.dataset, mmap=True)
    splits = {name: ds.subset(name) for name in params.splits}
    timing.mark("load")
    backbone = load_backbone(spec, checkpoint_dir=WEIGHTS_DIR)  # where fetch_weights put input.checkpoint
    timing.mark("weights")
    device = claim_device(settings.device)
    timing.mark("device")
    logging.info("fine-tuning %s (%s) on %s %s, %s; preprocessing: %s", w.network, spec.describe(), w.dataset,
                 {k: len(v[1]) for k, v in splits.items()}, cfg, backbone.preprocess.describe())
    finetuned, metrics = finetune(backbone, spec, cfg, splits, ds.class_names, device, params.network["precision"],
                                  progress=log)
    timing.mark("work")
    logging.info("accuracy %s, best epoch %d, %.1f s on %s (%s)", metrics["accuracy"], metrics["best_epoch"],
                 metrics["train_seconds"], metrics["device"], metrics["precision"])
    # What predict and export need (as a head file's network_meta); seeds and versions, as
    # train_head records them: fine-tuning's own seed, and the split's.
    finetuned["network_meta"] = meta = network_meta(w.network, w.dataset, spec, backbone.preprocess, ds.meta,
                                                    params.versions)
    finetuned["meta"] = run_meta = {
        "seed": cfg["seed"], "split_seed": meta["seed"], "init_seed": meta["init_seed"],
        **{k: v for k, v in meta.items() if k.startswith("version_")},
    }
    # One run, in the format of repeated heads (per-image predictions under `repeats`).
    metrics = {"network": w.network, "dataset": w.dataset, "head": FINETUNED, "arch": spec.arch,
               "weights": spec.weights, **combine_repeats([metrics], [cfg["seed"]]), "config": cfg,
               "meta": run_meta}
    save_finetuned(snakemake.output.weights, finetuned)
    with atomic_write(snakemake.output.metrics, "w") as f:
        json.dump(metrics, f, indent=2)

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
