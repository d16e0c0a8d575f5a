localrules:
    fetch_dataset,


rule fetch_dataset:
    output:
        "resources/raw/{dataset}/cifar-10-python.tar.gz",
    params:
        code=code("fetch_dataset"),
    log:
        "results/logs/fetch_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_dataset/{dataset}.tsv"
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
