# Use a trained (network, dataset, head): classify new images, or export it as one file.
#   snakemake predict --cores 4 --config 'predict={images: my_photos/}'
#   snakemake export --cores 4          # the predict section's choice -> results/export/...pt2


rule predict:
    input:
        unpack(predict_inputs),
    output:
        f"results/predictions/{PREDICT_NAME}.csv",
    params:
        network=lambda wildcards: predict_chosen()[0],
        spec=lambda wildcards: NETWORKS[predict_chosen()[0]].to_dict(),
        storage=lambda wildcards: storage_spec(predict_chosen()[1]),
        images=predict_patterns(),
        top_k=PREDICT["top_k"],
        code=code("predict"),
        versions=VERSIONS,
    threads: config["extract"]["threads"]
    resources:
        gpu=1,  # extract.device auto: the GPU when there is one
    log:
        f"results/logs/predict/{PREDICT_NAME}.log",
    benchmark:
        f"results/benchmarks/predict/{PREDICT_NAME}.tsv"
    script:
        "../scripts/predict.py"


rule export_model:
    wildcard_constraints:
        head=alternatives(head_choices(HEADS)),  # a head, or the fine-tuned network
    input:
        unpack(export_inputs),
    output:
        "results/export/{network}_{dataset}_{head}.pt2",
    params:
        spec=lambda wildcards: NETWORKS[wildcards.network].to_dict(),
        storage=lambda wildcards: storage_spec(wildcards.dataset),
        code=code("export_model"),
        versions=VERSIONS,
    log:
        "results/logs/export_model/{network}_{dataset}_{head}.log",
    benchmark:
        "results/benchmarks/export_model/{network}_{dataset}_{head}.tsv"
    script:
        "../scripts/export_model.py"


rule export:
    localrule: True
    input:
        exported_model,
