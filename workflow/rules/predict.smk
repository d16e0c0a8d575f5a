# Use a trained (network, dataset, head): classify new images, or export it as one file.
#   snakemake predict --cores 4 --config 'predict={images: my_photos/}'
#   snakemake export --cores 4          # the predict section's choice -> results/export/...pt2


rule predict:
    input:
        unpack(predict_inputs),
    output:
        f"results/predictions/{PREDICT_NAME}.csv",
    log:
        f"results/logs/predict/{PREDICT_NAME}.log",
    benchmark:
        f"results/benchmarks/predict/{PREDICT_NAME}.tsv"
    threads: config["extract"]["threads"]
    resources:
        gpu=1,  # extract.device auto: the GPU when there is one
    params:
        network=lambda wildcards: predict_chosen()[0],
        spec=lambda wildcards: NETWORKS[predict_chosen()[0]].to_dict(),
        storage=lambda wildcards: storage_spec(predict_chosen()[1]),
        images=predict_patterns(),
        top_k=PREDICT["top_k"],
        code=code("predict"),
        versions=VERSIONS,
    script:
        "../scripts/predict.py"


rule export_model:
    input:
        unpack(export_inputs),
    output:
        "results/export/{network}_{dataset}_{head}.pt2",
    log:
        "results/logs/export_model/{network}_{dataset}_{head}.log",
    benchmark:
        "results/benchmarks/export_model/{network}_{dataset}_{head}.tsv"
    wildcard_constraints:
        head=alternatives(head_choices(HEADS)),  # a head, or the fine-tuned network
    params:
        spec=lambda wildcards: NETWORKS[wildcards.network].to_dict(),
        storage=lambda wildcards: storage_spec(wildcards.dataset),
        code=code("export_model"),
        versions=VERSIONS,
    script:
        "../scripts/export_model.py"


rule export:
    input:
        exported_model,
    localrule: True
