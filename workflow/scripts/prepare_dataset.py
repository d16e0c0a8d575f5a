"""Rule prepare_dataset: a dataset source -> results/datasets/{dataset}.npz (uint8 NHWC)."""

import logging

from transfer_lab.datasets import SplitSpec, prepare_dataset, save_prepared
from transfer_lab.files import log_to
from transfer_lab.sources import check_dataset, dataset_spec, storage_fit, storage_size

with log_to(snakemake.log[0]):
    spec = dataset_spec(snakemake.params.spec)
    split = SplitSpec(**snakemake.params.spec["split"])
    logging.info("preparing %s from source %s", snakemake.wildcards.dataset, spec.source)
    check_dataset(snakemake.wildcards.dataset, spec)
    ds = prepare_dataset(spec, split)
    logging.info(
        "%d images %s, %d classes, splits %s",
        len(ds.labels), ds.images.shape[1:], len(ds.class_names), ds.split_sizes(),
    )
    ds.meta = {"dataset": snakemake.wildcards.dataset, "source": spec.source, "seed": split.seed,
               # How images were stored: what a prediction on a new image must repeat.
               "storage_size": storage_size(spec), "storage_fit": storage_fit(spec),
               **{f"version_{k}": v for k, v in snakemake.params.versions.items()}}
    save_prepared(ds, snakemake.output[0])
