localrules:
    fetch_weights,


# A local rule: cluster compute nodes often have no internet; the login node fetches (through
# the user's torch hub and Hugging Face caches), and the jobs load the file it made.
rule fetch_weights:
    output:
        f"{WEIGHTS_DIR}/{{weights_file}}",
    log:
        "results/logs/fetch_weights/{weights_file}.log",
    benchmark:
        "results/benchmarks/fetch_weights/{weights_file}.tsv"
    params:
        source=lambda wildcards: FETCHED_WEIGHTS[wildcards.weights_file].to_dict(),
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
    cache: CACHE_MODE
    threads: config["extract"]["threads"]
    resources:
        gpu=1,
    params:
        names=cache_key,
        network=network_params,
        code=code("extract_features"),
        versions=VERSIONS,
    script:
        "../scripts/extract_features.py"
