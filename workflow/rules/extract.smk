rule extract_features:
    input:
        unpack(extract_inputs),
    output:
        features=bottleneck("{network}", "{dataset}", "{split}"),
        metrics="results/extract/{network}_{dataset}_{split}.json",
    params:
        network=extract_params,
        batch_size=config["extract"]["batch_size"],
        code=CODE["extract"],
    threads: config["extract"]["threads"]
    log:
        "results/logs/extract_features/{network}_{dataset}_{split}.log",
    benchmark:
        "results/benchmarks/extract_features/{network}_{dataset}_{split}.tsv"
    script:
        "../scripts/extract_features.py"
