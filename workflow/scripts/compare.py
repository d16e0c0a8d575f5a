"""Rule compare: every classifier's metrics + extraction throughput -> table, summary across
datasets, label-efficiency curves and figures, and each dataset's chosen (network, head),
which predict and export apply when the config names none."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
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
from transfer_lab.files import end_job, log_to
from transfer_lab.label_efficiency import label_efficiency_table, plot_label_efficiency, write_label_efficiency
from transfer_lab.ranking import summary_rst, summary_table, write_choice, write_summary
from transfer_lab.uncertainty import Bootstrap


def read_json(paths):
    out = []
    for path in paths:
        with open(path) as f:
            out.append(json.load(f))
    return out


with log_to(snakemake.log[0]):
    out, settings = snakemake.output, snakemake.params.evaluation
    bootstrap = Bootstrap(settings["resamples"], settings["confidence"], settings["bootstrap_seed"])
    select_by = settings["select_by"]
    metrics = read_json(snakemake.input.heads) + read_json(snakemake.input.finetune)
    extract = read_json(snakemake.input.extract)
    timing.mark("load")
    table = comparison_table(metrics, extract, snakemake.params.datasets, select_by,
                             bootstrap)
    summary = summary_table(table)
    write_summary(summary, table, out.summary_csv, out.summary_md)
    selection = "".join(open(path).read() for path in snakemake.input.selection)  # the report's first section
    write_table(table, out.csv, out.md, out.html, out.summary, select_by, bootstrap.confidence,
                preface=selection + summary_rst(summary, table))
    write_choice(table, select_by, out.choice)
    plot_comparison(table, out.png)
    plot_tradeoff(table, out.tradeoff, select_by, params=snakemake.params.params_millions,
                  budget=snakemake.params.budget or None)
    for dataset, confusion, curves in zip(snakemake.params.datasets, out.confusion, out.curves, strict=True):
        plot_confusion(table, metrics, dataset, confusion)
        plot_curves(metrics, dataset, curves)
    if out.efficiency_csv:
        curve = label_efficiency_table(read_json(snakemake.input.shots), metrics, table, settings["shots"],
                                       select_by, bootstrap)
        write_label_efficiency(curve, out.efficiency_csv[0])
        for dataset, png in zip(snakemake.params.datasets, out.efficiency, strict=True):
            plot_label_efficiency(curve, dataset, png)
        logging.info("label efficiency: %d points\n%s", len(curve), curve.to_string())
    logging.info("%d rows\n%s\n%s", len(table), table.to_string(), summary.to_string())
    timing.mark("work")

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
