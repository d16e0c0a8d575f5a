rule prepare_dataset:
    output:
        "results/datasets/{dataset}.npz",
    params:
        spec=lambda wildcards: canonical(DATASETS[wildcards.dataset]),
        split=canonical(config["split"]),
        code=CODE["prepare"],
        versions=VERSIONS,
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    script:
        "../scripts/prepare_dataset.py"
