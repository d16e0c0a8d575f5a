# selection: successive halving (docs/selection.md). Per dataset, each rung screens the
# surviving candidates on a nested subset of the training images; the checkpoint
# select_candidates scores them and decides who goes on, and the next rung is planned from
# its file. Only the finalists reach extract_features, the heads and the comparison.


# The first rung: the candidate's features for the rung's subset, and its validation
# features, computed once and reused by every later rung.
rule screen_candidate:
    input:
        unpack(screen_inputs),
    output:
        features="results/selection/features/{network}_{dataset}_rung-{rung}.p",
        validation="results/selection/features/{network}_{dataset}_rung-{rung}_validation.p",
    log:
        "results/logs/screen_candidate/{network}_{dataset}_rung-{rung}.log",
    benchmark:
        "results/benchmarks/screen_candidate/{network}_{dataset}_rung-{rung}.tsv"
    wildcard_constraints:
        rung="1",
    threads: config["extract"]["threads"]
    resources:
        gpu=1,
    params:
        split=lambda wildcards: split_config(wildcards.dataset),
        subset=screen_params,
        network=network_params,
        code=SELECTION_CODE["screen_candidate"],
        versions=VERSIONS,
    script:
        "../scripts/screen_candidate.py"


# A later rung below 1.0: only the images its subset adds to the previous rung's.
use rule screen_candidate as screen_survivor with:
    input:
        unpack(screen_inputs),
    output:
        features="results/selection/features/{network}_{dataset}_rung-{rung}.p",
    log:
        "results/logs/screen_survivor/{network}_{dataset}_rung-{rung}.log",
    benchmark:
        "results/benchmarks/screen_survivor/{network}_{dataset}_rung-{rung}.tsv"
    wildcard_constraints:
        rung=alternatives(str(k + 1) for k in CUT_RUNGS[1:]) or "(?!)",


# Scores every candidate of a rung (the probe on validation, LogME, kNN) and keeps the best
# share; at a rung of 1.0, scores the finalists on their full features and keeps them all.
checkpoint select_candidates:
    input:
        unpack(select_inputs),
    output:
        "results/selection/{dataset}_rung-{rung}.json",
    log:
        "results/logs/select_candidates/{dataset}_rung-{rung}.log",
    benchmark:
        "results/benchmarks/select_candidates/{dataset}_rung-{rung}.tsv"
    wildcard_constraints:
        rung="[1-9][0-9]*",
    params:
        selection=select_params,
        code=SELECTION_CODE["select_candidates"],
        torch=VERSIONS["torch"],
    script:
        "../scripts/select_candidates.py"


# The table, the figures and the report's first section: who was cut where, and what it cost.
rule summarize_selection:
    input:
        unpack(selection_inputs),
    output:
        csv="results/selection.csv",
        md="results/selection.md",
        rst="results/selection_summary.rst",
        plots=[
            report(
                f"results/plots/selection_{dataset}.png",
                caption="../report/selection.rst",
                category="0. Selection",
                labels={"dataset": dataset},
            )
            for dataset in DATASETS
        ],
    log:
        "results/logs/summarize_selection.log",
    benchmark:
        "results/benchmarks/summarize_selection.tsv"
    params:
        facts=FACTS,
        budget=SELECTION["budget"] if SELECTION else {},
        datasets=list(DATASETS),
        code=code("summarize_selection"),
    script:
        "../scripts/summarize_selection.py"
