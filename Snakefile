# Transfer Lab: transfer learning by feature extraction.
#   snakemake --cores 4                                   # the quickstart grid (config.yaml)
#   snakemake --cores 4 --configfile config/<preset>.yaml
# The DAG is the cache: only artifacts whose inputs, params or code changed are rebuilt.

from snakemake.utils import min_version

min_version("9.0")


# A preset given with --configfile replaces the quickstart grid instead of merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"


# `snakemake --report results/report.html`: this page first, then every report() output.
report: "workflow/report/workflow.rst"


# Names join with '_' in file names; matching only configured names keeps them apart.
wildcard_constraints:
    network=alternatives(NETWORKS),
    dataset=alternatives(DATASETS),
    head=alternatives(HEADS),
    split="train|validation|test",
    shots="[0-9]+",
    weights_file=alternatives(FETCHED_WEIGHTS) or "checkpoints/[^/]+",


include: "workflow/rules/datasets.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        # A function: with selection, which networks get heads is decided by the rungs (checkpoints).
        lambda wildcards: final_outputs(),
