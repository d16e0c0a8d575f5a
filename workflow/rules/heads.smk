rule train_head:
    input:
        unpack(head_inputs),
    output:
        head="results/heads/{network}_{dataset}_{head}.pt",
        metrics="results/heads/{network}_{dataset}_{head}.json",
    params:
        head=lambda wildcards: canonical(HEADS[wildcards.head]),
        code=code("train_head"),
        torch=VERSIONS["torch"],
    log:
        "results/logs/train_head/{network}_{dataset}_{head}.log",
    benchmark:
        "results/benchmarks/train_head/{network}_{dataset}_{head}.tsv"
    script:
        "../scripts/train_head.py"
