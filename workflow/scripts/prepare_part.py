"""Rule prepare_part: one of prepare.parts slices of a dataset's prepared rows, decoded on the
job's threads -> results/datasets/parts/{dataset}/part-{part}-of-{parts}.npy (uint8 NHWC),
which rule prepare_dataset gathers in index order."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging

from transfer_lab.datasets import SplitSpec, draft_is_exact, plan_dataset, write_part
from transfer_lab.files import end_job, log_to
from transfer_lab.sources import check_dataset, dataset_spec

with log_to(snakemake.log[0]):
    dataset = snakemake.wildcards.dataset
    part, parts = snakemake.params.part, snakemake.params.parts
    spec = dataset_spec(snakemake.params.spec)
    check_dataset(dataset, spec)
    # Every part plans the whole dataset (listing and split assignment read labels, not
    # pixels), so each knows its rows without talking to the others.
    plan = plan_dataset(spec, SplitSpec(**snakemake.params.spec["split"]))
    timing.mark("load")  # listing the source and assigning splits; the pixels are decoded below
    logging.info("preparing part %d of %d of %s", part + 1, parts, dataset)
    draft = draft_is_exact(plan.images, plan.rows)
    n = write_part(plan, snakemake.output[0], part, parts, snakemake.threads, draft)
    timing.mark("work")
    logging.info("wrote %d images to %s", n, snakemake.output[0])

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
