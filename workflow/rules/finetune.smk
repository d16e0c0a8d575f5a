# Fine-tuning: the network trained end to end, beside the heads on frozen features.
rule finetune:
    input:
        unpack(extract_inputs),
    output:
        weights="results/finetune/{network}_{dataset}.pt",
        metrics="results/finetune/{network}_{dataset}.json",
    log:
        "results/logs/finetune/{network}_{dataset}.log",
    benchmark:
        "results/benchmarks/finetune/{network}_{dataset}.tsv"
    threads: config["extract"]["threads"]
    resources:
        gpu=1,
    params:
        network=network_params,
        finetune=finetune_params,
        splits=lambda wildcards: splits(wildcards.dataset),
        code=code("finetune"),
        versions=VERSIONS,
    script:
        "../scripts/finetune.py"
