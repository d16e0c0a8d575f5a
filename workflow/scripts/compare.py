"""Rule compare: every head's metrics + extraction throughput -> comparison CSV, Markdown, PNG."""

import json
import logging

from transfer_lab.compare import comparison_table, plot_comparison, write_table
from transfer_lab.files import log_to


def read_json(paths):
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out


with log_to(snakemake.log[0]):
    table = comparison_table(read_json(snakemake.input.heads) + read_json(snakemake.input.finetune),
                             read_json(snakemake.input.extract))
    write_table(table, snakemake.output.csv, snakemake.output.md)
    plot_comparison(table, snakemake.output.png)
    logging.info("%d rows\n%s", len(table), table.to_string())
