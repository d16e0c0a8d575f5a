"""Rule export_model: a trained head + its backbone -> one torch.export file (.pt2)."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging

from transfer_lab.export import export_model
from transfer_lab.files import end_job, log_to
from transfer_lab.predict import load_predictor
from transfer_lab.preprocess import storage_for
from transfer_lab.sources import dataset_spec
from transfer_lab.specs import WEIGHTS_DIR

with log_to(snakemake.log[0]):
    w, p = snakemake.wildcards, snakemake.params
    predictor = load_predictor(
        snakemake.input.head, network=w.network, config={"networks": {w.network: p.spec}},
        storage=storage_for(dataset_spec(p.storage)),
        checkpoint_dir=WEIGHTS_DIR,  # where fetch_weights put input.checkpoint
        device="cpu",
    )
    timing.mark("weights")  # the backbone and the head
    record = export_model(predictor, snakemake.output[0])
    timing.mark("work")
    logging.info("exported %s: %d classes, storage %s, preprocessing %s", snakemake.output[0],
                 len(record["class_names"]), record["storage"], record["preprocess"])

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
