"""Checkpoint select_candidates: one rung of the selection, for one dataset.

Every candidate screened at the rung is scored on validation (never test): the screening
probe trained on the rung's training features, LogME, and kNN accuracy
(transfer_lab.selection.screen); the best share, ranked by selection.rank_by, goes on to the
next rung (transfer_lab.selection.cut). At a rung of 1.0 the candidates are the finalists,
scored on their full training features, and all kept. The next rungs' jobs are planned
from this file.
"""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import json
import logging

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.files import atomic_write, end_job, log_to
from transfer_lab.selection import cut, screen


def cost(train, validation, extract_json) -> dict:
    """Images this candidate computed for the rung, and its images/s on this device."""
    if extract_json is not None:  # a finalist: its full extraction
        with open(extract_json) as f:
            metrics = json.load(f)
        return {"forward_passes": metrics["n_images"], "images_per_second": metrics["images_per_second"],
                "test_images": metrics["splits"].get("test", {}).get("n_images", 0)}
    first = train.meta["rung"] == 1  # the rung that extracted validation too
    computed = train.meta["n_computed"] + (validation.meta["n_computed"] if first else 0)
    seconds = train.meta["seconds"] + (validation.meta["seconds"] if first else 0)
    return {"forward_passes": computed,
            "images_per_second": validation.meta["images_per_second"] or None,  # the largest batch of images it ran
            "test_images": train.meta["test_images"], "seconds": seconds}


with log_to(snakemake.log[0]):
    w, settings = snakemake.wildcards, snakemake.params.selection
    rung = int(w.rung)
    inputs = snakemake.input
    extract = list(inputs.extract) if "extract" in inputs.keys() else [None] * len(inputs.train)
    timing.mark("load")
    records = []
    for train_path, validation_path, extract_json in zip(inputs.train, inputs.validation, extract, strict=True):
        train, validation = read_bottleneck(train_path), read_bottleneck(validation_path)
        network = train.meta["network"]
        scores = screen(train.features, train.labels, validation.features, validation.labels,
                        len(train.class_names), probe=settings["probe"], k=settings["k"])
        record = {"network": network, "dataset": w.dataset, "rung": rung, "fraction": settings["fraction"],
                  "n_train": len(train.labels), "n_validation": len(validation.labels),
                  "train_images": int(train.meta.get("train_images", len(train.labels))),
                  "probe": settings["probe"], **scores, **cost(train, validation, extract_json)}
        logging.info("%s: %s", network, {k: v for k, v in record.items() if k not in ("network", "dataset")})
        records.append(record)
    if settings["fraction"] < 1:
        decision = cut(records, settings["keep"], settings["rank_by"])
    else:  # the finalists: ranked for the table, nobody cut
        decision = cut(records, 1.0, settings["rank_by"])
    decision = {"dataset": w.dataset, "rung": rung, "fraction": settings["fraction"],
                "rank_by": settings["rank_by"], "keep": settings["keep"], **decision}
    logging.info("rung %d (%g of the training images): kept %s; cut %s", rung, settings["fraction"],
                 ", ".join(decision["kept"]), ", ".join(decision["cut"]) or "none")
    timing.mark("work")
    with atomic_write(snakemake.output[0], "w") as f:
        # The definition: survivors() in common.smk trusts this file only while it is current.
        json.dump({"definition": settings["definition"], "records": records, "decision": decision}, f, indent=2)

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
