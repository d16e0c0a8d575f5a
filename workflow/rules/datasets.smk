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
    params:
        names=cache_key,
        spec=prepare_params,
        code=code("prepare_dataset"),
        versions=VERSIONS,
    script:
        "../scripts/prepare_dataset.py"
