localrules:
    fetch_dataset,


rule fetch_dataset:
    wildcard_constraints:
        dataset=alternatives(FETCHED),
        file=alternatives(set(FETCHED.values())),
    output:
        # The folder config.validate_config makes the root of a dataset with download: true.
        os.path.join(sources.download_root("{dataset}"), "{file}"),
    params:
        source=lambda wildcards: DATASET_SPECS[wildcards.dataset].source,
        code=code("fetch_dataset"),
    log:
        "results/logs/fetch_dataset/{dataset}/{file}.log",
    benchmark:
        "results/benchmarks/fetch_dataset/{dataset}/{file}.tsv"
    script:
        "../scripts/fetch_dataset.py"


rule prepare_dataset:
    input:
        unpack(prepare_inputs),
    output:
        "results/datasets/{dataset}.npz",
    params:
        spec=prepare_params,
        code=code("prepare_dataset"),
        versions=VERSIONS,
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    script:
        "../scripts/prepare_dataset.py"
