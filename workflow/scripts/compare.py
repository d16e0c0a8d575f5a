"""Rule compare: every classifier's metrics + extraction throughput -> table and figures."""

import json
import logging

from transfer_lab.compare import (
    comparison_table,
    plot_comparison,
    plot_confusion,
    plot_curves,
    plot_tradeoff,
    write_table,
)
from transfer_lab.files import log_to


def read_json(paths):
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out


with log_to(snakemake.log[0]):
    out = snakemake.output
    metrics = read_json(snakemake.input.heads) + read_json(snakemake.input.finetune)
    table = comparison_table(metrics, read_json(snakemake.input.extract), snakemake.params.datasets)
    write_table(table, out.csv, out.md, out.html, out.summary)
    plot_comparison(table, out.png)
    plot_tradeoff(table, out.tradeoff)
    for dataset, confusion, curves in zip(snakemake.params.datasets, out.confusion, out.curves):
        plot_confusion(table, metrics, dataset, confusion)
        plot_curves(metrics, dataset, curves)
    logging.info("%d rows\n%s", len(table), table.to_string())
