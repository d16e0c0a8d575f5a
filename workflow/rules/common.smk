# Config -> targets, input functions and the params that define each artifact.
# Everything here runs when the workflow is parsed: a bad config fails before any job.

import functools
import hashlib
import itertools
import json
import os
import re
import types
from pathlib import Path

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError
from snakemake.io import checkpoint_target

try:
    from transfer_lab import sources
    from transfer_lab.config import (
        FINETUNED,
        ConfigError,
        effective_repeats,
        head_choices,
        load_schema,
        validate_config,
    )
    from transfer_lab.datasets import SplitSpec, splits_for
    from transfer_lab.files import check_output_cache
    from transfer_lab.images import NoImagesError, find_images
    from transfer_lab.provenance import code_hash, files_fingerprint, tree_fingerprint, versions
    from transfer_lab.specs import BUNDLED, WEIGHTS_DIR, ExtractSettings, NetworkSpec, largest_resize
    from transfer_lab.zoo import imagenet_top1, param_count
except ImportError as err:
    raise WorkflowError(
        f"cannot import the transfer_lab library ({err}). Run `make run`, which sets up "
        "the environment, or install it into yours with `pip install -e .`."
    )

try:
    validate_config(config, load_schema(Path(workflow.current_basedir) / "../schemas/config.schema.yaml"))
except ConfigError as err:
    raise WorkflowError(str(err))

NETWORKS = {name: NetworkSpec.from_config(entry) for name, entry in config["networks"].items()}
DATASETS = config["datasets"]
HEADS = config["heads"]
EVALUATION = config["evaluation"]
# Label-efficiency subsets trained apart; 'all' (the full training set) is the heads' own.
SHOTS = [s for s in EVALUATION["shots"] if s != "all"]
# The shorter side the configured networks resize images to, at most (256 for ResNet-50
# IMAGENET1K_V1, 342 for Inception-v3): the storage size of photo datasets without image_size.
NETWORK_RESIZE = largest_resize(NETWORKS.values())


def dataset_entry(dataset):
    """A dataset's config entry, with the networks' largest resize when its storage size
    follows the networks (a photo source without image_size, stored as pixels: one kept as
    its files stores nothing that depends on them): what defines its storage."""
    entry = DATASETS[dataset]
    follows = sources.follows_networks(sources.dataset_spec(entry))
    return {**entry, "network_resize": NETWORK_RESIZE} if follows else entry


# Each dataset entry as the library takes it (source, root, storage size, options).
DATASET_SPECS = {name: sources.dataset_spec(dataset_entry(name)) for name in DATASETS}


def alternatives(names):
    """A wildcard regex matching exactly these names (longest first, so no name
    that prefixes another captures part of it)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def code(script):
    """Hash of a rule's script and the library code it runs (Snakemake itself watches only
    the script file): a param of every rule, so a change to that code reruns the rule."""
    return code_hash(Path(workflow.current_basedir).parent / "scripts" / f"{script}.py")


VERSIONS = versions("torch", "torchvision", "timm", "numpy", "scikit-learn", *BUNDLED.values())

# Snakemake's between-workflow output cache (docs/cluster.md): prepared datasets and bottleneck
# features are eligible when $SNAKEMAKE_OUTPUT_CACHE names a folder, and `snakemake --cache`
# then takes each from there or puts it there. Those rules have no benchmark file, which
# Snakemake refuses beside a cache (a result taken from it has no time to report): their
# logs end with the job's time and peak memory instead.
OUTPUT_CACHE = os.environ.get("SNAKEMAKE_OUTPUT_CACHE") or None
CACHE_MODE = "omit-software" if OUTPUT_CACHE else False  # the software stack is the VERSIONS param


if OUTPUT_CACHE:
    try:
        check_output_cache(OUTPUT_CACHE)
    except ValueError as err:
        raise WorkflowError(str(err))


def cache_key(wildcards):
    """What tells a job's outputs from those of its siblings. Snakemake's cache hash covers a job's script,
    params and inputs, not its wildcards, so without this param the train and test
    features of one network would share one cache entry."""
    return canonical(dict(wildcards.items()))


# Label-efficiency outputs exist only when evaluation.shots lists something.
LABEL_EFFICIENCY = {
    "csv": ["results/label_efficiency.csv"] if EVALUATION["shots"] else [],
    "plots": [f"results/plots/label_efficiency_{d}.png" for d in DATASETS] if EVALUATION["shots"] else [],
}
COMPARISON = expand("results/comparison.{ext}", ext=["csv", "md", "png", "html"]) + [
    "results/comparison_summary.rst",
    "results/plots/tradeoff.png",
    *expand("results/plots/{kind}_{dataset}.png", kind=["confusion", "curves"], dataset=list(DATASETS)),
    "results/summary.csv",
    "results/choice.json",
    "results/summary.md",
    *LABEL_EFFICIENCY["csv"],
    *LABEL_EFFICIENCY["plots"],
]


def canonical(d):
    """Key order never matters to staleness: params are compared by their repr."""
    return dict(sorted(d.items()))


def split_config(dataset):
    """The top-level split settings with the dataset's own overrides applied."""
    return canonical({**config["split"], **DATASETS[dataset].get("split", {})})


def splits(dataset):
    return splits_for(DATASET_SPECS[dataset], SplitSpec(**split_config(dataset)))


# Datasets with download: true, and the file rule fetch_dataset makes for each (its source names it).
FETCHED = {name: sources.get(spec.source).fetch.file for name, spec in DATASET_SPECS.items() if spec.download}


PREPARE = config["prepare"]


def fetched_input(wildcards):
    spec = DATASET_SPECS[wildcards.dataset]
    if spec.download:
        return {"fetched": f"{spec.root}/{FETCHED[wildcards.dataset]}"}  # made by fetch_dataset
    return {}


def prepare_part_files(dataset):
    """The part files rule prepare_part makes for a dataset stored as pixels when
    prepare.parts > 1 (numbered from 1); none otherwise: one job decodes everything."""
    n = PREPARE["parts"]
    if n == 1 or DATASETS[dataset]["store"] != "pixels":
        return []
    return [f"results/datasets/parts/{dataset}/part-{k}-of-{n}.npy" for k in range(1, n + 1)]


def prepare_inputs(wildcards):
    return {**fetched_input(wildcards), "parts": prepare_part_files(wildcards.dataset)}


def prepare_params(wildcards):
    """The dataset's spec (with the networks' largest resize where its storage follows them),
    split settings and, for a local root, a fingerprint of its files (and of the files it
    lists, for a source whose root is a table)."""
    spec = dataset_entry(wildcards.dataset)
    local_root = spec.get("root") if not spec.get("download") else None
    listed = sources.get(spec["source"]).listed if local_root else None
    return canonical(
        {
            **spec,
            "split": split_config(wildcards.dataset),
            "files": tree_fingerprint(local_root) if local_root else None,
            **({"listed": files_fingerprint(listed(Path(local_root)))} if listed else {}),
        }
    )


# Pretrained weights files fetch_weights provides (torchvision checkpoints; timm weights from
# the Hugging Face hub or a URL): path under WEIGHTS_DIR -> where it comes from.
FETCHED_WEIGHTS = {w.path: w for w in (spec.fetched_weights for spec in NETWORKS.values()) if w}


def bottleneck(network, dataset, split):
    return f"results/bottleneck/{network}_{dataset}_bottleneck_features_{split}.p"


def backbone_inputs(network):
    """The files a network's weights come from, for every rule that loads the backbone."""
    inputs = {}
    spec = NETWORKS[network]
    if spec.weights_file:
        inputs["weights"] = spec.weights_file  # a local checkpoint: its changes make features stale
    if spec.fetched_weights:
        inputs["checkpoint"] = f"{WEIGHTS_DIR}/{spec.fetched_weights.path}"  # made by fetch_weights
    return inputs


# extract.parts: jobs per (network, dataset), the dataset's batches shared out among them.
EXTRACT_PARTS = ExtractSettings.from_config(config["extract"]).parts


def part_file(wildcards, part, ext):
    return f"results/parts/{wildcards.network}_{wildcards.dataset}/part-{part}-of-{EXTRACT_PARTS}.{ext}"


def extract_inputs(wildcards):
    """The images and the weights: what a job that runs the network on a dataset reads."""
    return {"dataset": f"results/datasets/{wildcards.dataset}.npz", **backbone_inputs(wildcards.network)}


def extract_features_inputs(wildcards):
    """One part: the images and the weights, as the job computes them. Several: the
    images (labels, class names) and the parts' files, which the job gathers."""
    if EXTRACT_PARTS == 1:
        return extract_inputs(wildcards)
    return {
        "dataset": f"results/datasets/{wildcards.dataset}.npz",
        "parts": [part_file(wildcards, k, "npy") for k in range(1, EXTRACT_PARTS + 1)],
        "records": [part_file(wildcards, k, "json") for k in range(1, EXTRACT_PARTS + 1)],
    }


def split_outputs(names):
    """An extraction job's pickles, one per split, named by split."""
    return {split: bottleneck("{network}", "{dataset}", split) for split in names}


# Extraction writes every split of a dataset in one job, so its outputs depend on which
# splits the dataset has: the datasets with a test split, and those without (test_fraction
# 0 on a source that has none), each have their rule.
TESTED = [d for d in DATASETS if "test" in splits(d)]
UNTESTED = [d for d in DATASETS if "test" not in splits(d)]


def part_params(wildcards):
    """Which part a job computes (its index from 0; files are numbered from 1, as
    prepare_part's are). Not the shard size that cuts the rows: like the batch size, it
    changes how features are computed, not their values (the gather checks that the parts
    it is given tile the dataset)."""
    return {"part": int(wildcards.part) - 1, "parts": int(wildcards.parts)}


def network_params(wildcards):
    """What defines a network's feature values: its spec, and the precision they are
    computed at. How a job computes them (batch size, threads, shard size, compile, CUDA
    graphs, where JPEGs are decoded, the device) does not: those settings reach the
    scripts through the config instead."""
    return {"spec": NETWORKS[wildcards.network].to_dict(), "precision": config["extract"]["precision"]}


def head_inputs(wildcards):
    return {split: bottleneck(wildcards.network, wildcards.dataset, split) for split in splits(wildcards.dataset)}


def head_shots(wildcards):
    """Images per class of a label-efficiency job; None for the full training set."""
    return int(wildcards.shots) if "shots" in wildcards.keys() else None


def head_repeats(wildcards):
    """Training runs of a head job: evaluation.repeats, or 1 where they would be copies."""
    return effective_repeats(HEADS[wildcards.head]["kind"], head_shots(wildcards), EVALUATION["repeats"])


def shots_outputs():
    return [f"results/shots/{n}_{d}_{h}_{s}shot.json" for (n, d), h, s in itertools.product(grid(), HEADS, SHOTS)]


def grid():
    """The (network, dataset) pairs that get full features, heads and comparison rows: every
    pair, or with selection the finalists of each dataset (known once its rungs are decided,
    so only input functions may ask)."""
    return [(n, d) for d in DATASETS for n in finalists(d)]


# --- selection: successive halving over the configured networks, per dataset ---

SELECTION = config["selection"]
RUNGS = SELECTION["rungs"] if SELECTION else []
# Rungs below 1.0 are followed by a cut; a last rung at 1.0 screens the finalists on their
# full training features (the ordinary extraction) and cuts nothing.
CUT_RUNGS = [k for k, fraction in enumerate(RUNGS) if fraction < 1]
FULL_RUNG = len(RUNGS) - 1 if RUNGS and RUNGS[-1] == 1 else None


# Parameters and ImageNet top-1 of every network (the static rankers; None where unknown):
# the selection table's columns, and the trade-off figure's parameters.
FACTS = {name: {"params": param_count(spec), "imagenet_top1": imagenet_top1(spec)} for name, spec in NETWORKS.items()}


def budget_candidates():
    """The networks screened at the first rung: every one, less those over
    selection.budget.max_params (left out before any extraction)."""
    limit = SELECTION["budget"]["max_params"] if SELECTION else None
    if limit is None:
        return list(NETWORKS)
    counts = {name: facts["params"] for name, facts in FACTS.items()}
    kept = [name for name, count in counts.items() if count is not None and count <= limit * 1e6]
    if not kept:
        raise WorkflowError(
            f"selection.budget.max_params: {limit} million leaves no network (parameters: "
            + ", ".join(f"{n} {c / 1e6:.1f} M" if c else f"{n} unknown" for n, c in counts.items())
            + "); raise it or remove it"
        )
    return kept


CANDIDATES = budget_candidates()


# Rungs are counted from 1 in file names, logs and the selection table; from 0 in RUNGS.


def rung_index(wildcards):
    """The rung of a job, as an index into RUNGS."""
    return int(wildcards.rung) - 1


def rung_file(dataset, k):
    """Rung k's records and decision, written by select_candidates: every candidate's scores, and who goes on."""
    return f"results/selection/{dataset}_rung-{k + 1}.json"


def screened(network, dataset, k):
    """A candidate's training features at rung k, below 1.0: the rung's subset, in row order."""
    return f"results/selection/features/{network}_{dataset}_rung-{k + 1}.p"


def screened_validation(network, dataset):
    """A candidate's validation features, extracted once (with its first rung) for every rung."""
    return f"results/selection/features/{network}_{dataset}_rung-1_validation.p"


# The code hashes of the selection's rules, taken at parse time (the workflow's folder is
# known only then): rung_definition needs them inside input functions.
SELECTION_CODE = {"screen_candidate": code("screen_candidate"), "select_candidates": code("select_candidates")}


@functools.cache
def rung_definition(dataset, k):
    """A digest of everything that decides rung k of a dataset: the candidates' specs, the
    images (the dataset's definition, the rungs up to k, the seed), the scoring and cut
    settings, the code and versions. select_candidates writes it into its file (a param),
    and survivors() trusts a decision file only with the current digest."""
    definition = {
        "candidates": {name: NETWORKS[name].to_dict() for name in CANDIDATES},
        "precision": config["extract"]["precision"],
        "dataset": prepare_params(types.SimpleNamespace(dataset=dataset)),
        "rungs": RUNGS[: k + 1],
        "selection": {key: SELECTION[key] for key in ("seed", "probe", "k", "rank_by", "keep")},
        "code": SELECTION_CODE,
        "versions": VERSIONS,
    }
    return hashlib.sha256(repr(canonical(definition)).encode()).hexdigest()[:16]


def survivors(dataset, k):
    """The candidates screened at rung k: all at the first, then those the previous rung kept.

    A previous decision whose file holds another definition (a setting, the data or the
    code changed since it was written) is about to be decided again: the rungs after it
    wait for that, as for a missing file. Snakemake would otherwise plan them from the
    old file's survivors, which it reads before it knows that the file is stale."""
    if k == 0:
        return CANDIDATES
    previous = checkpoints.select_candidates.get(dataset=dataset, rung=str(k))
    with open(previous.output[0]) as f:
        decided = json.load(f)
    if decided.get("definition") != rung_definition(dataset, k - 1):
        raise IncompleteCheckpointException(previous.rule, checkpoint_target(previous.output[0]))
    return decided["decision"]["kept"]


def finalists(dataset):
    """The networks with full features on a dataset: every one without selection; else the
    survivors of the last cut."""
    if not SELECTION:
        return list(NETWORKS)
    return survivors(dataset, len(CUT_RUNGS))


def screen_inputs(wildcards):
    """The images and weights; after the first rung, the candidate's previous features too
    (nested subsets: a rung computes only its new images)."""
    k = rung_index(wildcards)
    inputs = extract_inputs(wildcards)
    if k > 0:
        inputs["previous"] = screened(wildcards.network, wildcards.dataset, k - 1)
    return inputs


def screen_params(wildcards):
    """What defines a rung's features: the network, and which images (the dataset's split
    settings, the rung's fraction and the subsets' seed; not the other rungs)."""
    k = rung_index(wildcards)
    return {"fraction": RUNGS[k], "previous": RUNGS[k - 1] if k else None, "seed": SELECTION["seed"]}


def select_inputs(wildcards):
    """Every candidate screened at the rung: its features there (at 1.0, the full training
    pickle) and its validation features."""
    k, dataset = rung_index(wildcards), wildcards.dataset
    names = survivors(dataset, k)
    if k == FULL_RUNG:
        return {
            "train": [bottleneck(n, dataset, "train") for n in names],
            "validation": [bottleneck(n, dataset, "validation") for n in names],
            "extract": [f"results/extract/{n}_{dataset}.json" for n in names],
        }
    return {
        "train": [screened(n, dataset, k) for n in names],
        "validation": [screened_validation(n, dataset) for n in names],
    }


def select_params(wildcards):
    """What defines a rung's scores and decision: the probe, the kNN score's neighbours, the
    ranking, the share kept; and the rung's fraction (its records say it)."""
    keys = ("probe", "k", "rank_by", "keep")
    k = rung_index(wildcards)
    return canonical(
        {
            **{key: SELECTION[key] for key in keys},
            "fraction": RUNGS[k],
            "definition": rung_definition(wildcards.dataset, k),
        }
    )


def selection_inputs(wildcards):
    return {"rungs": [rung_file(d, k) for d in DATASETS for k in range(len(RUNGS))]}


SELECTION_OUTPUTS = (
    ["results/selection.csv", "results/selection.md"] + [f"results/plots/selection_{d}.png" for d in DATASETS]
    if SELECTION
    else []
)


def final_outputs():
    """What `snakemake` builds by default: the comparison, and every pickle and head.

    The pickles and heads are deliverables in their own right, and naming them as
    targets makes a deleted one come back (Snakemake >= 7.7 does not rebuild a
    missing intermediate file whose dependents are up to date).
    """
    return (
        COMPARISON
        + SELECTION_OUTPUTS
        + [bottleneck(n, d, s) for n, d in grid() for s in splits(d)]
        + [f"results/heads/{n}_{d}_{h}.pt" for (n, d), h in itertools.product(grid(), HEADS)]
        + finetune_outputs()
        + shots_outputs()
    )


def comparison_inputs(wildcards):
    return {
        "heads": [f"results/heads/{n}_{d}_{h}.json" for (n, d), h in itertools.product(grid(), HEADS)],
        "extract": [f"results/extract/{n}_{d}.json" for n, d in grid()],
        "finetune": [p for p in finetune_outputs() if p.endswith(".json")],
        "shots": shots_outputs(),
        "selection": ["results/selection_summary.rst"] if SELECTION else [],
    }


def comparison_evaluation():
    """What the comparison's numbers depend on beyond its inputs: how "best" is chosen, the
    bootstrap, and the shots list ('all' puts the full-data heads on the curves)."""
    keys = ("select_by", "confidence", "resamples", "bootstrap_seed", "shots")
    return canonical({k: EVALUATION[k] for k in keys})


def comparison_datasets():
    """What the comparison needs of each dataset to find published numbers for its rows
    (in config order, which is also the order of the per-dataset figures)."""
    return {
        name: {"source": spec["source"], "train_per_class": split_config(name)["train_per_class"]}
        for name, spec in DATASETS.items()
    }


def finetune_grid():
    """(network, dataset) pairs to fine-tune: the listed networks on the listed datasets
    (an empty dataset list means all of them)."""
    cfg = config["finetune"]
    return list(itertools.product(cfg["networks"], cfg["datasets"] or DATASETS))


def finetune_outputs():
    return [f"results/finetune/{n}_{d}.{ext}" for n, d in finetune_grid() for ext in ("pt", "json")]


def finetune_params(wildcards):
    """Training settings only: which networks and datasets are listed defines no artifact."""
    cfg = {k: v for k, v in config["finetune"].items() if k not in ("networks", "datasets")}
    return canonical(cfg)


# --- predict and export: one trained (network, dataset, head) applied to new images ---

PREDICT = config["predict"]


def predict_choice():
    """The predict section's (network, dataset, head) as far as the config decides it: a null
    key means the only one configured; a null network or head among several is the
    comparison's choice on that dataset (known once it has run: predict_chosen). What is
    left to choose."""
    chosen = [
        PREDICT[key] if PREDICT[key] is not None else (next(iter(names)) if len(names) == 1 else None)
        for key, names in (("network", NETWORKS), ("dataset", DATASETS), ("head", HEADS))
    ]
    missing = [] if chosen[1] else [f"predict.dataset (one of: {', '.join(DATASETS)})"]
    return tuple(chosen), missing


PREDICT_CHOICE, PREDICT_MISSING = predict_choice()
# Named by the (network, dataset, head); where the comparison chooses, by the dataset.
PREDICT_NAME = PREDICT["name"] or (
    "predictions"
    if PREDICT_MISSING
    else "_".join(PREDICT_CHOICE) if all(PREDICT_CHOICE) else f"{PREDICT_CHOICE[1]}_chosen"
)


def predict_chosen():
    """The (network, dataset, head) predict and export apply: the config's, with what it leaves
    null taken from the comparison's choice on validation (results/choice.json; the
    comparison runs first)."""
    if PREDICT_MISSING:
        raise WorkflowError(
            "predict/export: choose "
            + "; ".join(PREDICT_MISSING)
            + ", in config.yaml's predict section or e.g. --config 'predict={dataset: NAME}'"
        )
    network, dataset, head = PREDICT_CHOICE
    if network is None or head is None:
        with open(checkpoints.compare.get().output.choice) as f:
            choice = json.load(f)[dataset]
        if network is None and head is None:
            network, head = choice["network"], choice["head"]
        elif head is None:
            if network not in choice["head_of"]:
                raise WorkflowError(
                    f"predict.network: {network!r} has no row in the comparison on {dataset} (selection "
                    "cut it); name predict.head too, or leave predict.network null for the comparison's choice"
                )
            head = choice["head_of"][network]
        else:
            if head not in choice["network_of"]:
                raise WorkflowError(f"predict.head: {head!r} has no row in the comparison on {dataset}")
            network = choice["network_of"][head]
    return network, dataset, head


def predict_patterns():
    images = PREDICT["images"]
    return [images] if isinstance(images, str) else list(images or [])


def predict_inputs(wildcards):
    """The head, the backbone's weights and every existing image file (a changed or added
    image reruns predict; a missing one becomes an error row)."""
    network, dataset, head = predict_chosen()
    if not predict_patterns():
        raise WorkflowError(
            "predict: set predict.images to image files, folders or glob patterns, "
            "e.g. --config 'predict={images: my_photos/}'"
        )
    try:
        images = [str(p) for p in find_images(predict_patterns()) if p.is_file()]
    except NoImagesError as err:
        raise WorkflowError(f"predict.images: {err}")
    return {"head": trained_file(network, dataset, head), "images": images, **backbone_inputs(network)}


def trained_file(network, dataset, head):
    """What predict and export apply: a head file, or for head `finetune` the fine-tuned network."""
    if head == FINETUNED:
        return f"results/finetune/{network}_{dataset}.pt"
    return f"results/heads/{network}_{dataset}_{head}.pt"


def export_inputs(wildcards):
    return {
        "head": trained_file(wildcards.network, wildcards.dataset, wildcards.head),
        **backbone_inputs(wildcards.network),
    }


def exported_model(wildcards):
    return "results/export/{}_{}_{}.pt2".format(*predict_chosen())


def storage_spec(dataset):
    """What fixes a dataset's storage step (size and fit; none when it is kept as its files), and nothing else."""
    entry = dataset_entry(dataset)
    resize = {"network_resize": entry["network_resize"]} if "network_resize" in entry else {}
    return {"source": entry["source"], "image_size": entry.get("image_size"), "store": entry["store"], **resize}
