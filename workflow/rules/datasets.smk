localrules:
    fetch_dataset,


rule fetch_dataset:
    output:
        # The folder config.validate_config makes the root of a dataset with download: true.
        os.path.join(sources.download_root("{dataset}"), "{file}"),
    log:
        "results/logs/fetch_dataset/{dataset}/{file}.log",
    benchmark:
        "results/benchmarks/fetch_dataset/{dataset}/{file}.tsv"
    wildcard_constraints:
        dataset=alternatives(FETCHED),
        file=alternatives(set(FETCHED.values())),
    params:
        source=lambda wildcards: DATASET_SPECS[wildcards.dataset].source,
        code=code("fetch_dataset"),
    script:
        "../scripts/fetch_dataset.py"


rule prepare_dataset:
    input:
        unpack(prepare_inputs),
    output:
        "results/datasets/{dataset}.npz",
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    cache: CACHE_MODE
    threads: PREPARE["threads"]
    params:
        names=cache_key,
        spec=prepare_params,
        code=code("prepare_dataset"),
        versions=VERSIONS,
    script:
        "../scripts/prepare_dataset.py"


rule prepare_part:
    input:
        unpack(fetched_input),
    output:
        # Gathered into the dataset's npz by prepare_dataset, then removed.
        temp("results/datasets/parts/{dataset}/part-{part}-of-{parts}.npy"),
    log:
        "results/logs/prepare_part/{dataset}/part-{part}-of-{parts}.log",
    wildcard_constraints:
        dataset=alternatives(DATASETS),
        part="[1-9][0-9]*",
        parts="[1-9][0-9]*",
    # Cached too: a second checkout would otherwise decode every part again to gather
    # what the cache already holds (the cache then keeps the parts beside the dataset).
    cache: CACHE_MODE
    threads: PREPARE["threads"]
    params:
        dataset=lambda wildcards: wildcards.dataset,
        part=lambda wildcards: int(wildcards.part) - 1,
        parts=lambda wildcards: int(wildcards.parts),
        spec=prepare_params,
        code=code("prepare_part"),
        versions=VERSIONS,
    script:
        "../scripts/prepare_part.py"
