"""Rule predict: image files + a trained head -> results/predictions/<name>.csv (one row per image)."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging

import torch

from transfer_lab.files import atomic_write, end_job, log_to
from transfer_lab.images import find_images
from transfer_lab.predict import load_predictor, predict_files, to_csv
from transfer_lab.preprocess import storage_for
from transfer_lab.sources import dataset_spec
from transfer_lab.specs import WEIGHTS_DIR

with log_to(snakemake.log[0]):
    p = snakemake.params
    torch.set_num_threads(snakemake.threads)
    predictor = load_predictor(
        snakemake.input.head, network=p.network, config={"networks": {p.network: p.spec}},
        storage=storage_for(dataset_spec(p.storage)),
        checkpoint_dir=WEIGHTS_DIR,  # where fetch_weights put input.checkpoint
        device=snakemake.config["extract"]["device"],  # how to compute, not what: not a param
    )
    timing.mark("weights")  # the backbone, the head and the device
    paths = find_images(p.images)
    logging.info("%d images, head %s (%s) on %s, storage %s, device %s", len(paths), snakemake.input.head,
                 predictor.head_kind, predictor.meta["network"], predictor.storage, predictor.device)
    top_k = max(1, min(p.top_k, len(predictor.class_names)))
    rows = predict_files(predictor, paths, top_k)
    timing.mark("work")
    failed = [r for r in rows if r["error"]]
    for row in failed:
        logging.warning("%s", row["error"])
    logging.info("%d predicted, %d unreadable", len(rows) - len(failed), len(failed))
    with atomic_write(snakemake.output[0], "w") as f:
        f.write(to_csv(rows, top_k))

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
