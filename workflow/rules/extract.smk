localrules:
    fetch_weights,


# A local rule: cluster compute nodes often have no internet; the login node fetches.
rule fetch_weights:
    output:
        "resources/weights/checkpoints/{checkpoint}",
    log:
        "results/logs/fetch_weights/{checkpoint}.log",
    benchmark:
        "results/benchmarks/fetch_weights/{checkpoint}.tsv"
    params:
        url=lambda wildcards: CHECKPOINTS[wildcards.checkpoint],
        code=code("fetch_weights"),
    script:
        "../scripts/fetch_weights.py"


rule extract_features:
    input:
        unpack(extract_inputs),
    output:
        features=bottleneck("{network}", "{dataset}", "{split}"),
        metrics="results/extract/{network}_{dataset}_{split}.json",
    log:
        "results/logs/extract_features/{network}_{dataset}_{split}.log",
    benchmark:
        "results/benchmarks/extract_features/{network}_{dataset}_{split}.tsv"
    threads: config["extract"]["threads"]
    resources:
        gpu=1,
    params:
        network=network_params,
        code=code("extract_features"),
        versions=VERSIONS,
    script:
        "../scripts/extract_features.py"
