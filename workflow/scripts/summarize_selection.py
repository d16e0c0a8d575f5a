"""Rule summarize_selection: every rung's records and decisions -> results/selection.csv and
.md (one row per candidate and dataset), the report's first section, and per dataset a
figure of validation accuracy against training images, one line per candidate ending
where it was cut. No torch."""

from transfer_lab import timing  # first: the job's clock starts here

# isort: split
import json
import logging

from transfer_lab.compare import over_budget
from transfer_lab.files import end_job, log_to
from transfer_lab.screening_report import plot_selection, selection_table, write_selection
from transfer_lab.selection import halving_cost

with log_to(snakemake.log[0]):
    params = snakemake.params
    records, decisions = [], []
    for path in snakemake.input.rungs:
        with open(path) as f:
            rung = json.load(f)
        records += [{**r, **params.facts[r["network"]]} for r in rung["records"]]
        decisions.append(rung["decision"])
    timing.mark("load")
    costs = {}
    for dataset in params.datasets:  # forward passes spent, against every candidate's full features
        mine = sorted((d for d in decisions if d["dataset"] == dataset), key=lambda d: d["rung"])
        screened = [[r for r in records if r["dataset"] == dataset and r["rung"] == d["rung"]] for d in mine]
        first = screened[0][0]
        costs[dataset] = halving_cost(first["train_images"], first["n_validation"], first["test_images"],
                                      [rung[0]["n_train"] for rung in screened], [len(rung) for rung in screened],
                                      len(mine[-1]["kept"]))
        logging.info("%s: %s", dataset, costs[dataset])
    table = selection_table(records, decisions)
    # Marked, not cut: the speed is known only once a candidate has been screened.
    table["over_budget"] = over_budget(table, {"min_images_per_second": params.budget.get("min_images_per_second")},
                                       "params_millions")
    write_selection(table, snakemake.output.csv, snakemake.output.md, costs, snakemake.output.rst)
    for dataset, png in zip(params.datasets, snakemake.output.plots, strict=True):
        plot_selection(records, decisions, dataset, png)
    logging.info("%d candidates\n%s", len(table), table.to_string())
    timing.mark("work")

end_job()
