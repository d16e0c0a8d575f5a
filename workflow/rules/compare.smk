# A checkpoint: predict and export apply the (network, head) it chooses when the config names none.
checkpoint compare:
    input:
        unpack(comparison_inputs),
    output:
        csv="results/comparison.csv",
        md="results/comparison.md",
        summary="results/comparison_summary.rst",
        html=report(
            "results/comparison.html",
            caption="../report/table.rst",
            category="1. Comparison",
            labels={"figure": "table"},
        ),
        png=report(
            "results/comparison.png",
            caption="../report/comparison.rst",
            category="1. Comparison",
            labels={"figure": "accuracy by network and dataset"},
        ),
        tradeoff=report(
            "results/plots/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="1. Comparison",
            labels={"figure": "accuracy against extraction cost"},
        ),
        confusion=[
            report(
                f"results/plots/confusion_{dataset}.png",
                caption="../report/confusion.rst",
                category="2. Confusion matrices",
                labels={"dataset": dataset},
            )
            for dataset in DATASETS
        ],
        curves=[
            report(
                f"results/plots/curves_{dataset}.png",
                caption="../report/curves.rst",
                category="3. Training curves",
                labels={"dataset": dataset},
            )
            for dataset in DATASETS
        ],
        summary_csv="results/summary.csv",
        choice="results/choice.json",
        summary_md="results/summary.md",
        efficiency_csv=LABEL_EFFICIENCY["csv"],
        efficiency=[
            report(
                path,
                caption="../report/label_efficiency.rst",
                category="4. Label efficiency",
                labels={"dataset": dataset},
            )
            for path, dataset in zip(LABEL_EFFICIENCY["plots"], DATASETS)
        ],
    log:
        "results/logs/compare.log",
    benchmark:
        "results/benchmarks/compare.tsv"
    params:
        datasets=comparison_datasets(),
        evaluation=comparison_evaluation(),
        # The trade-off figure: each network's parameters (millions), and the budget it marks.
        params_millions={name: facts["params"] and facts["params"] / 1e6 for name, facts in FACTS.items()},
        budget=SELECTION["budget"] if SELECTION else {},
        code=code("compare"),
    script:
        "../scripts/compare.py"
