rule train_head:
    input:
        unpack(head_inputs),
    output:
        head="results/heads/{network}_{dataset}_{head}.pt",
        metrics="results/heads/{network}_{dataset}_{head}.json",
    log:
        "results/logs/train_head/{network}_{dataset}_{head}.log",
    benchmark:
        "results/benchmarks/train_head/{network}_{dataset}_{head}.tsv"
    params:
        head=lambda wildcards: canonical(HEADS[wildcards.head]),
        repeats=head_repeats,
        shots=head_shots,
        code=code("train_head"),
        torch=VERSIONS["torch"],
    script:
        "../scripts/train_head.py"


# Label efficiency: the same heads on `shots` images per class, drawn from the cached
# training features at head time (no preparation or extraction job depends on shots).
use rule train_head as train_shots with:
    output:
        metrics="results/shots/{network}_{dataset}_{head}_{shots}shot.json",
    log:
        "results/logs/train_shots/{network}_{dataset}_{head}_{shots}shot.log",
    benchmark:
        "results/benchmarks/train_shots/{network}_{dataset}_{head}_{shots}shot.tsv"
