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


# One job per (network, dataset): the network is loaded once and every split's pickle
# written (with extract.parts > 1, gathered from the extract_part jobs' files instead).
rule extract_features:
    input:
        unpack(extract_features_inputs),
    output:
        **split_outputs(["train", "validation", "test"]),
        metrics="results/extract/{network}_{dataset}.json",
    log:
        "results/logs/extract_features/{network}_{dataset}.log",
    wildcard_constraints:
        # (?!): a pattern nothing matches, where every dataset lacks a test split.
        dataset=alternatives(TESTED) or "(?!)",
    cache: CACHE_MODE
    threads: config["extract"]["threads"]
    resources:
        gpu=1,
    params:
        names=cache_key,
        splits=lambda wildcards: splits(wildcards.dataset),
        network=network_params,
        code=code("extract_features"),
        versions=VERSIONS,
    script:
        "../scripts/extract_features.py"


# The same job for the datasets without a test split (test_fraction 0, and no official one).
use rule extract_features as extract_features_without_test with:
    output:
        **split_outputs(["train", "validation"]),
        metrics="results/extract/{network}_{dataset}.json",
    wildcard_constraints:
        dataset=alternatives(UNTESTED) or "(?!)",


# extract.parts > 1: one job per part of a dataset, each on its own GPU; extract_features
# gathers their files into the pickles (docs/extraction.md, "One dataset on several GPUs").
rule extract_part:
    input:
        unpack(extract_inputs),
    output:
        # temp: removed once gathered (the pickles hold the same features); kept if the
        # gather fails, and a killed run keeps the parts that finished.
        features=temp("results/parts/{network}_{dataset}/part-{part}-of-{parts}.npy"),
        record=temp("results/parts/{network}_{dataset}/part-{part}-of-{parts}.json"),
    log:
        "results/logs/extract_part/{network}_{dataset}_part-{part}-of-{parts}.log",
    wildcard_constraints:
        part="[1-9][0-9]*",
        parts="[1-9][0-9]*",
    # Cached too: a second checkout would otherwise compute every part again to gather
    # what the cache already holds.
    cache: CACHE_MODE
    threads: config["extract"]["threads"]
    resources:
        gpu=1,
    params:
        names=cache_key,
        splits=lambda wildcards: splits(wildcards.dataset),
        network=network_params,
        code=code("extract_features"),
        versions=VERSIONS,
        part=part_params,
    script:
        "../scripts/extract_features.py"
