"""Rule prepare_dataset: a dataset source -> results/datasets/{dataset}.npz (uint8 NHWC, or
the original files' paths with store: files), decoded on the job's threads, or gathered from
the part files of rule prepare_part (prepare.parts > 1)."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging

from transfer_lab.datasets import SplitSpec, draft_is_exact, plan_dataset, write_dataset, write_files
from transfer_lab.files import end_job, log_to
from transfer_lab.sources import check_dataset, dataset_spec, storage_fit, storage_size

with log_to(snakemake.log[0]):
    dataset = snakemake.wildcards.dataset
    spec = dataset_spec(snakemake.params.spec)
    split = SplitSpec(**snakemake.params.spec["split"])
    store = snakemake.params.spec["store"]
    logging.info("preparing %s from source %s (store: %s)", dataset, spec.source, store)
    check_dataset(dataset, spec)
    plan = plan_dataset(spec, split)
    timing.mark("load")  # listing the source and assigning splits; the pixels are decoded below
    logging.info(
        "%d images %s, %d classes, splits %s",
        len(plan.rows), "as their files" if store == "files" else plan.images.shape[1:], len(plan.class_names),
        {name: int((plan.split == i).sum()) for i, name in enumerate(("train", "validation", "test"))},
    )
    meta = {"dataset": dataset, "source": spec.source, "seed": split.seed, "store": store,
            # How images were stored: what a prediction on a new image must repeat (nothing, for
            # files: extraction decodes them and applies the network's own resize alone).
            **({"storage_size": storage_size(spec), "storage_fit": storage_fit(spec)} if store == "pixels" else {}),
            **{f"version_{k}": v for k, v in snakemake.params.versions.items()}}
    if store == "files":
        write_files(plan, snakemake.output[0], meta, dataset)
    else:
        # The same choice in every part job: it depends on the dataset alone.
        meta["jpeg_draft"] = draft_is_exact(plan.images, plan.rows)
        parts = list(snakemake.input.parts)
        if parts:
            logging.info("gathering %d parts", len(parts))
        write_dataset(plan, snakemake.output[0], meta, snakemake.threads, meta["jpeg_draft"], parts)
    timing.mark("work")
    logging.info("wrote %s", snakemake.output[0])

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
