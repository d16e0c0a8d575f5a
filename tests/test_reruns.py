"""The README's "What reruns when", row by row: what each change makes Snakemake plan.

One grid is run once (two networks, two datasets, two heads, fine-tuning, predict and
export) with a hook recording which library modules each job loaded. Each test changes
one thing in a copy and asks Snakemake for its plan (a dry run, which is what a rerun
would do) or, where the files themselves must be checked, reruns it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, copy_run, copy_workflow, snakemake, write_config
from job_imports import assert_job_imports
from PIL import Image
from sklearn.datasets import load_digits

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.provenance import PACKAGE, module_closure, module_file

pytestmark = pytest.mark.integration

LITE0 = {"arch": "timm:tf_efficientnet_lite0", "input_size": 32}
GRID = {
    "networks": {"lite0": {**LITE0, "weights": "bundled"}, "control": {**LITE0, "weights": "random"}},
    "datasets": {"digits": {"source": "digits"}, "few": {"source": "digits", "split": {"train_per_class": 10}}},
    "split": {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    "heads": {"linear": {"kind": "linear", "epochs": 10}, "mlp": {"kind": "mlp", "epochs": 10, "hidden": 64}},
    "extract": {"batch_size": 256, "threads": 1},
    "finetune": {"networks": ["lite0"], "datasets": ["few"], "epochs": 1, "batch_size": 25},
    "predict": {"network": "lite0", "dataset": "digits", "head": "linear", "images": "new/"},
}
TARGETS = ("all", "predict", "export")  # the grid, and what the predict section asks for
RULES = ("prepare_dataset", "extract_features", "train_head", "finetune", "compare", "predict", "export_model")
# What each rule's outputs feed, in this grid (export: the target rule of export_model).
FEEDS = {
    "prepare_dataset": {"extract_features", "finetune"},
    "extract_features": {"train_head"},
    "train_head": {"compare", "predict", "export_model"},
    "finetune": {"compare"},
    "export_model": {"export"},
}


def downstream(rules: set[str]) -> set[str]:
    out, pending = set(rules), list(rules)
    while pending:
        for after in FEEDS.get(pending.pop(), ()):
            if after not in out:
                out.add(after)
                pending.append(after)
    return out


def mtimes(workdir: Path) -> dict:
    return {p.relative_to(workdir): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*")
            if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The grid, run once, recording the library modules each job loads; tests take copies."""
    workdir = copy_workflow(tmp_path_factory.mktemp("reruns") / "wd")
    write_config(workdir, GRID)
    (workdir / "new").mkdir()
    for i, image in enumerate(load_digits().images[:3]):
        Image.fromarray((image * 15).astype(np.uint8)).save(workdir / f"new/digit_{i}.png")
    imports = workdir.parent / "imports"
    imports.mkdir()
    first = snakemake(workdir, *TARGETS, hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert first.jobs == {"prepare_dataset": 2, "extract_features": 4, "train_head": 8, "finetune": 1,
                          "compare": 1, "predict": 1, "export_model": 1, "export": 1}, first.output
    loaded: dict[str, set[str]] = {}
    for record in imports.glob("*.json"):
        record = json.loads(record.read_text())
        script = re.fullmatch(r"tmp\w+\.(\w+)\.py", record["script"])
        loaded.setdefault(script[1] if script else "snakemake", set()).update(record["modules"])
    assert set(loaded) == {*RULES, "snakemake"}, loaded.keys()
    # Parsing the workflow, preparation (whose decoding workers it forks) and the comparison
    # import no torch, heads no torchvision: each job keeps to its row of job_imports.RULES.
    assert_job_imports(imports, __file__)
    return workdir, loaded


@pytest.fixture
def workdir(built, tmp_path):
    return copy_run(built[0], tmp_path / "wd")


def plan(workdir: Path, *args: str) -> Counter:
    """The jobs a rerun would run (a dry run)."""
    return snakemake(workdir, "-n", *TARGETS, *args).jobs


def reconfigure(workdir: Path, change) -> None:
    config = copy.deepcopy(GRID)
    change(config)
    write_config(workdir, config)


def test_nothing_reruns_nothing(workdir):
    """Row: nothing."""
    before = mtimes(workdir)
    assert snakemake(workdir, *TARGETS).jobs == {}
    assert mtimes(workdir) == before


def test_a_head_hyperparameter_retrains_that_head(workdir):
    """Row: a head's hyperparameter."""
    reconfigure(workdir, lambda c: c["heads"]["linear"].update(seed=1))  # predict and export apply linear
    assert plan(workdir) == {"train_head": 4, "compare": 1, "predict": 1, "export_model": 1, "export": 1}
    reconfigure(workdir, lambda c: c["heads"]["mlp"].update(lr=0.01))
    before = mtimes(workdir)
    assert snakemake(workdir, *TARGETS).jobs == {"train_head": 4, "compare": 1}
    after = mtimes(workdir)
    changed = {p.as_posix() for p in after if after[p] != before.get(p)}
    comparison = {"comparison.csv", "comparison.md", "comparison.png", "comparison.html", "comparison_summary.rst",
                  "summary.csv", "summary.md", "choice.json", "plots/tradeoff.png",
                  *(f"plots/{kind}_{d}.png" for kind in ("confusion", "curves")
                                          for d in GRID["datasets"])}
    heads = {f"heads/{n}_{d}_mlp.{ext}" for n in GRID["networks"] for d in GRID["datasets"] for ext in ("pt", "json")}
    assert changed == {f"results/{name}" for name in comparison | heads}


def test_adding_a_network_runs_that_network_only(workdir):
    """Row: add a network."""
    reconfigure(workdir, lambda c: c["networks"].update(resnet={"arch": "resnet18", "weights": "random",
                                                                "input_size": 32}))
    assert plan(workdir) == {"extract_features": 2, "train_head": 4, "compare": 1}


@pytest.mark.parametrize("key, value", [("arch", "resnet18"), ("weights", "bundled"), ("input_size", 48),
                                        ("layer", "blocks.5"), ("pool", "cls+mean")])
def test_a_network_setting_reruns_that_network(workdir, key, value):
    """Row: a network's `arch`, `weights`, `input_size`, `layer` or `pool`."""
    # pool applies to transformers: for it the control becomes one (timm's tiny test ViT) first.
    base = {"arch": "timm:test_vit.r160_in1k"} if key == "pool" else {}
    if base:
        reconfigure(workdir, lambda c: c["networks"]["control"].update(base))
        snakemake(workdir, *TARGETS)
    reconfigure(workdir, lambda c: c["networks"]["control"].update({**base, key: value}))
    assert plan(workdir) == {"extract_features": 2, "train_head": 4, "compare": 1}
    reconfigure(workdir, lambda c: (c["networks"]["control"].update(base),
                                    c["networks"]["lite0"].update(input_size=48)))  # also fine-tuned, predicts
    assert plan(workdir) == {"extract_features": 2, "train_head": 4, "finetune": 1, "compare": 1, "predict": 1,
                             "export_model": 1, "export": 1}


def test_precision_reruns_every_extraction(workdir):
    """Row: `extract.precision`."""
    reconfigure(workdir, lambda c: c["extract"].update(precision="fp32"))  # auto is fp32 here too: still stale
    assert plan(workdir) == {"extract_features": 4, "train_head": 8, "finetune": 1, "compare": 1, "predict": 1,
                             "export_model": 1, "export": 1}


@pytest.mark.parametrize("key, value", [
    ("batch_size", 64), ("threads", 2), ("shard_size", 100), ("compile", True), ("compile", False),
    ("compile_cache", "/shared/compile-cache"), ("device", "cpu"), ("cuda_graph", True), ("decode", "cpu"),
])
def test_how_extraction_computes_reruns_nothing(workdir, key, value):
    """Row: `extract.batch_size`, `threads`, `shard_size`, `compile`, `compile_cache`, `cuda_graph`, `decode` or
    `device`."""
    reconfigure(workdir, lambda c: c["extract"].update({key: value}))
    assert plan(workdir) == {}


def test_preparation_threads_rerun_nothing(workdir):
    """Row: `prepare.threads`."""
    reconfigure(workdir, lambda c: c.update(prepare={"threads": 3}))
    assert plan(workdir) == {}


def test_extraction_parts_rerun_extraction_and_what_follows(workdir):
    """Row: `extract.parts`."""
    reconfigure(workdir, lambda c: c["extract"].update(parts=1))  # the default, said
    assert plan(workdir) == {}
    reconfigure(workdir, lambda c: c["extract"].update(parts=2))
    assert plan(workdir) == {"extract_part": 8, "extract_features": 4, "train_head": 8, "compare": 1, "predict": 1,
                             "export_model": 1, "export": 1}


def test_a_dataset_split_override_reruns_that_dataset(workdir):
    """Row: a dataset's `split` settings."""
    reconfigure(workdir, lambda c: c["datasets"]["few"]["split"].update(train_per_class=12))
    assert plan(workdir) == {"prepare_dataset": 1, "extract_features": 2, "train_head": 4, "finetune": 1,
                             "compare": 1}
    reconfigure(workdir, lambda c: c["split"].update(seed=1))  # the top-level settings: every dataset
    assert plan(workdir) == {"prepare_dataset": 2, "extract_features": 4, "train_head": 8, "finetune": 1,
                             "compare": 1, "predict": 1, "export_model": 1, "export": 1}


def test_deleting_a_pickle_rebuilds_it_and_its_dependents(workdir):
    """Row: delete a bottleneck pickle or head."""
    target = workdir / "results/bottleneck/control_digits_bottleneck_features_validation.p"
    original = read_bottleneck(target).features
    siblings = {split: (workdir / f"results/bottleneck/control_digits_bottleneck_features_{split}.p").read_bytes()
                for split in ("train", "test")}
    target.unlink()
    # One job writes every split of (control, digits): the siblings again, the same bytes.
    assert snakemake(workdir, *TARGETS).jobs == {"extract_features": 1, "train_head": 2, "compare": 1}
    assert read_bottleneck(target).features.tobytes() == original.tobytes()  # deterministic on CPU
    for split, data in siblings.items():
        assert (workdir / f"results/bottleneck/control_digits_bottleneck_features_{split}.p").read_bytes() == data
    (workdir / "results/heads/lite0_few_mlp.pt").unlink()
    assert plan(workdir) == {"train_head": 1, "compare": 1}


def test_extraction_code_reruns_extraction_and_a_comment_nothing(workdir):
    """Row: the library code a step runs."""
    module = workdir / "src/transfer_lab/preprocess.py"
    original = module.read_text()
    module.write_text(original.replace("# Horizontal pass", "# The horizontal pass"))
    assert "# The horizontal pass" in module.read_text()
    assert plan(workdir) == {}
    module = workdir / "src/transfer_lab/extract.py"
    module.write_text(module.read_text() + "\nEDITED = True\n")
    assert plan(workdir) == {"extract_features": 4, "train_head": 8, "finetune": 1, "compare": 1, "predict": 1,
                             "export_model": 1, "export": 1}


def test_any_library_module_reruns_the_steps_that_run_it(built, workdir):
    """Row: the library code a step runs, for every module of the library in turn.

    A step's code hash follows its script's imports; that is checked against what each
    job really loaded (recorded by the hook): no module a job ran can change unnoticed.
    """
    _, loaded = built
    scripts = workdir / "workflow/scripts"
    closure = {rule: set(module_closure(scripts / f"{rule}.py")) for rule in RULES}
    modules = _all_modules()
    assert {"transfer_lab.extract", "transfer_lab.compare", "transfer_lab.specs"} <= set(modules)
    for name in modules:
        path = workdir / "src" / module_file(name).relative_to(REPO / "src")
        original = path.read_text()
        path.write_text(original + "\nCODE_HASH_PROBE = 1\n")
        planned = set(plan(workdir))
        path.write_text(original)
        direct = {rule for rule in RULES if name in closure[rule]}
        assert planned == downstream(direct), name
        assert {rule for rule in RULES if name in loaded[rule]} <= planned, name
    assert plan(workdir) == {}


def _all_modules() -> list[str]:
    root = REPO / "src" / PACKAGE
    return [".".join([PACKAGE, *p.relative_to(root).with_suffix("").parts]).removesuffix(".__init__")
            for p in root.rglob("*.py")]


def test_a_finetune_setting_refits_the_finetuned_networks(workdir):
    """Row: a `finetune` setting."""
    reconfigure(workdir, lambda c: c["finetune"].update(lr=0.002))
    assert plan(workdir) == {"finetune": 1, "compare": 1}
    reconfigure(workdir, lambda c: c["finetune"].update(datasets=["few", "digits"]))
    assert plan(workdir) == {"finetune": 1, "compare": 1}


def test_a_new_image_to_predict_reruns_predict_only(workdir):
    """Row: add or change an image under `predict.images`."""
    shutil.copy(workdir / "new/digit_0.png", workdir / "new/digit_3.png")
    assert plan(workdir) == {"predict": 1}


def test_a_file_under_a_dataset_root_reprepares_that_dataset(tmp_path):
    """Row: a file under a dataset's `root`."""
    from fixtures import write_imagefolder

    workdir = copy_workflow(tmp_path / "wd")
    root = write_imagefolder(tmp_path / "photos", classes=("cat", "dog"), per_class=10)
    config = {
        "networks": {"lite0": {**LITE0, "weights": "random"}},
        "datasets": {"photos": {"source": "imagefolder", "root": str(root), "image_size": 32}},
        "split": {"validation_fraction": 0.25, "test_fraction": 0.25},
        "heads": {"linear": {"kind": "linear", "epochs": 3}},
    }
    write_config(workdir, config)
    first = snakemake(workdir)
    assert first.jobs == {"prepare_dataset": 1, "extract_features": 1, "train_head": 1, "compare": 1}
    Image.new("RGB", (40, 30), (200, 30, 30)).save(root / "cat" / "new.png")
    again = snakemake(workdir)
    assert again.jobs == {"prepare_dataset": 1, "extract_features": 1, "train_head": 1, "compare": 1}, again.output
    table = pd.read_csv(workdir / "results/comparison.csv")
    assert table.loc[0, ["n_train", "n_validation", "n_test"]].sum() == 21


def test_networks_that_change_the_largest_resize_reprepare_the_photos_stored_at_it(tmp_path):
    """Row: a network that changes the networks' largest resize (the same photos kept as their
    files, store: files, store no pixels: they are not prepared again)."""
    from fixtures import write_imagefolder

    from transfer_lab.datasets import load_prepared

    workdir = copy_workflow(tmp_path / "wd")
    root = write_imagefolder(tmp_path / "photos", classes=("cat", "dog"), per_class=4)
    config = {
        "networks": {"lite0": {**LITE0, "weights": "random"}},  # resizes to floor(32 / 0.875) = 36, then crops 32
        "datasets": {"photos": {"source": "imagefolder", "root": str(root)}, "digits": {"source": "digits"},
                     "files": {"source": "imagefolder", "root": str(root), "store": "files"}},
        "heads": {"linear": {"kind": "linear", "epochs": 3}},
    }
    prepared = ["results/datasets/photos.npz", "results/datasets/digits.npz", "results/datasets/files.npz"]
    write_config(workdir, config)
    assert snakemake(workdir, *prepared).jobs == {"prepare_dataset": 3}
    photos = load_prepared(workdir / prepared[0])
    assert photos.images.shape[1:] == (36, 36, 3) and photos.meta["storage_size"] == 36
    files = load_prepared(workdir / prepared[2])
    assert files.images is None and files.meta["store"] == "files" and "storage_size" not in files.meta
    config["networks"]["small"] = {**LITE0, "weights": "random", "input_size": 24}  # resizes to 27: less
    write_config(workdir, config)
    assert snakemake(workdir, "-n", *prepared).jobs == {}
    config["networks"]["small"]["input_size"] = 48  # resizes to 54: the photos (not the digits) are stored at it
    write_config(workdir, config)
    run = snakemake(workdir, "-n", *prepared)
    assert run.jobs == {"prepare_dataset": 1} and "dataset=photos" in run.output, run.output
    assert "dataset=digits" not in run.output and "dataset=files" not in run.output


ROWS = {  # the first column of the README's table -> its test, here or in another file
    "nothing": test_nothing_reruns_nothing,
    "a head's hyperparameter": test_a_head_hyperparameter_retrains_that_head,
    "`evaluation.repeats`": "test_workflow.py::test_repeats_retrain_the_heads_that_depend_on_their_seed",
    "`evaluation.shots` (a value added or changed)":
        "test_workflow.py::test_shots_plan_head_jobs_only_and_draw_the_curve_into_the_report",
    "`evaluation.select_by`, `confidence`, `resamples`, `bootstrap_seed`":
        "test_workflow.py::test_select_by_and_the_bootstrap_settings_rerun_the_comparison_only",
    "add a network": test_adding_a_network_runs_that_network_only,
    "a network's `arch`, `weights`, `input_size`, `layer` or `pool`": test_a_network_setting_reruns_that_network,
    "`extract.precision`": test_precision_reruns_every_extraction,
    "`extract.batch_size`, `threads`, `shard_size`, `compile`, `compile_cache`, `cuda_graph`, `decode` or `device`":
        test_how_extraction_computes_reruns_nothing,
    "`prepare.threads`": test_preparation_threads_rerun_nothing,
    "`extract.parts`": test_extraction_parts_rerun_extraction_and_what_follows,
    "a file under a dataset's `root` (added, removed, rewritten)": test_a_file_under_a_dataset_root_reprepares_that_dataset,
    "an image a `csv` table lists, wherever it lies, rewritten":
        "test_own_files.py::test_csv_and_hf_datasets_through_preparation_and_extraction",
    "a dataset's `split` settings": test_a_dataset_split_override_reruns_that_dataset,
    "a network that changes the networks' largest resize":
        test_networks_that_change_the_largest_resize_reprepare_the_photos_stored_at_it,
    "delete a bottleneck pickle or head": test_deleting_a_pickle_rebuilds_it_and_its_dependents,
    "the library code a step runs": test_any_library_module_reruns_the_steps_that_run_it,
    "a `finetune` setting": test_a_finetune_setting_refits_the_finetuned_networks,
    "add or change an image under `predict.images`": test_a_new_image_to_predict_reruns_predict_only,
    "`selection.probe`, `k`, `rank_by` or `keep`":
        "test_selection_workflow.py::test_scoring_settings_rescore_every_rung_and_compute_no_features",
    "`selection.rungs` (a fraction changed)": "test_selection_workflow.py::test_a_changed_rung_rescreens_from_that_rung_on",
    "`selection.seed`": "test_selection_workflow.py::test_a_changed_rung_rescreens_from_that_rung_on",
    "`selection.budget.max_params`":
        "test_selection_workflow.py::test_a_parameter_budget_leaves_candidates_out_before_any_extraction",
    "`selection.budget.min_images_per_second`":
        "test_selection_workflow.py::test_the_images_per_second_budget_marks_and_reruns_only_the_summaries",
    "a `zoo:` entry, its pattern or filters":
        "test_selection_workflow.py::test_a_zoo_plans_exactly_the_networks_it_expands_to",
}


def test_every_row_of_the_readme_table_has_its_test():
    text = (REPO / "README.md").read_text()
    table = text.split("## What reruns when", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == list(ROWS)
    for test in ROWS.values():
        if isinstance(test, str):  # a test of another file: it must exist there
            file, name = test.split("::")
            assert re.search(rf"^def {name}\(", (REPO / "tests" / file).read_text(), flags=re.M), test
