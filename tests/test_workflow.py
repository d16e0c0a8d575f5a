"""Integration: Snakemake end to end on a tiny grid, and the caching users rely on."""

import copy
import json
import re

import pandas as pd
import pytest
from conftest import copy_run, copy_workflow, snakemake, write_config
from job_imports import assert_job_imports

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.compare import COLUMNS

pytestmark = pytest.mark.integration

TINY = {
    "networks": {
        "lite0": {"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 32},
    },
    "datasets": {"digits": {"source": "digits"}},
    "split": {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    "heads": {
        "linear": {"kind": "linear", "epochs": 20},
        "mlp": {"kind": "mlp", "epochs": 20, "hidden": 64},
    },
    "extract": {"batch_size": 256},
}
SPLITS = ("train", "validation", "test")


def pickle_path(workdir, network, split, dataset="digits"):
    return workdir / f"results/bottleneck/{network}_{dataset}_bottleneck_features_{split}.p"


def mtimes(workdir):
    return {p.relative_to(workdir): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*")
            if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny grid, run once; tests take copies to change."""
    workdir = copy_workflow(tmp_path_factory.mktemp("built"))
    write_config(workdir, TINY)
    first = snakemake(workdir)
    return workdir, first


@pytest.fixture
def workdir(built, tmp_path):
    return copy_run(built[0], tmp_path / "wd")


def test_first_run_builds_every_artifact_in_the_contract_format(built):
    workdir, first = built
    assert first.jobs == {"prepare_dataset": 1, "extract_features": 1, "train_head": 2, "compare": 1}
    sizes = {}
    for split in SPLITS:
        b = read_bottleneck(pickle_path(workdir, "lite0", split))
        assert b.features.dtype.name == "float32" and b.features.shape[1] == 1280
        assert b.labels.dtype.name == "int64"
        assert b.class_names == [str(i) for i in range(10)]
        assert b.meta["arch"] == "timm:tf_efficientnet_lite0" and b.meta["split"] == split
        assert b.meta["input_size"] == 32 and b.meta["version_torch"]
        # How the images were stored, so a prediction on a new image can repeat it.
        assert (b.meta["storage_size"], b.meta["storage_fit"]) == (8, "squash")
        sizes[split] = len(b.labels)
    assert sum(sizes.values()) == 1797
    table = pd.read_csv(workdir / "results/comparison.csv")
    assert list(table.columns) == COLUMNS
    assert (table["method"] == "features").all() and table["best"].sum() == 1
    assert sorted(table["head"]) == ["linear", "mlp"]
    assert (table["n_train"] == sizes["train"]).all() and (table["n_test"] == sizes["test"]).all()
    # Real features of real digits: far above chance (10%) even at 32 px and 20 epochs.
    assert (table["validation_accuracy"] > 0.6).all(), table
    assert (table["images_per_second"] > 0).all() and (table["extract_seconds"] > 0).all()
    assert (workdir / "results/comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lite0 " in (workdir / "results/comparison.md").read_text()
    for rule in ("prepare_dataset", "extract_features", "train_head"):
        logs = list((workdir / "results/logs" / rule).glob("*.log"))
        assert logs and all(log.stat().st_size > 0 for log in logs), rule
        # The job's time and peak memory: what a benchmark file says, for the rules that may be
        # cached between workflows (which Snakemake allows no benchmark file).
        assert all(re.search(r"time: total [\d.]+ s at [\d.]+, peak memory \d+ MiB", log.read_text()) for log in logs), rule
    assert list((workdir / "results/benchmarks/train_head").glob("*.tsv"))
    assert "img/s" in (workdir / "results/logs/extract_features/lite0_digits.log").read_text()


def test_report_builds_offline_with_the_comparison_on_its_first_page(workdir):
    snakemake(workdir, "--report", "results/report.html")
    page = (workdir / "results/report.html").read_text()
    assert len(page) > 100_000  # self-contained: scripts, styles and figures inlined
    # The front page (the workflow description) carries the summary table.
    best = pd.read_csv(workdir / "results/comparison.csv").query("best").iloc[0]
    assert "Best per dataset" in page and f"lite0 (timm:tf_efficientnet_lite0, {best['head']} head" in page
    for figure in ("comparison.html", "comparison.png", "tradeoff.png", "confusion_digits.png",
                   "curves_digits.png"):
        assert figure in page, figure
    # The summary across datasets comes first, then the table with its test interval.
    assert page.index("Summary across datasets") < page.index("Best per dataset")
    r = best
    assert f"{100 * r['test_accuracy']:.1f}% [{100 * r['test_accuracy_low']:.1f}, " \
           f"{100 * r['test_accuracy_high']:.1f}]" in page
    for caption in ("chosen on **validation**", "Up and to the right is", "Rows are the true classes",
                    "the kept epoch"):
        assert caption.replace("**", "") in page.replace("<strong>", "").replace("</strong>", ""), caption


def test_shots_plan_head_jobs_only_and_draw_the_curve_into_the_report(workdir):
    """Label efficiency reads the cached training features: no preparation, no extraction."""
    config = copy.deepcopy(TINY)
    config["evaluation"] = {"shots": [2, 5, "all"]}
    write_config(workdir, config)
    before = mtimes(workdir)
    assert snakemake(workdir, "-n").jobs == {"train_shots": 4, "compare": 1}
    imports = workdir.parent / "imports"
    imports.mkdir()
    run = snakemake(workdir, hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert run.jobs == {"train_shots": 4, "compare": 1}, run.output
    assert_job_imports(imports, __file__)  # torch alone, as train_head
    after = mtimes(workdir)
    upstream = [p for p in before if p.parts[1] in ("datasets", "bottleneck", "extract", "heads")]
    assert upstream and all(after[p] == before[p] for p in upstream)
    curve = pd.read_csv(workdir / "results/label_efficiency.csv", dtype={"shots": str})
    assert sorted(set(curve["shots"])) == ["2", "5", "all"] and len(curve) == 6
    assert curve.loc[curve["shots"] == "2", "n_train"].tolist() == [20.0, 20.0]  # 2 images x 10 classes
    assert (curve["accuracy_low"] <= curve["accuracy"]).all() and (curve["accuracy"] <= curve["accuracy_high"]).all()
    assert curve["selected"].sum() == 3  # one network: its chosen head, at each of the three points
    shots_log = (workdir / "results/logs/train_shots/lite0_digits_linear_2shot.log").read_text()
    assert "2 images per class" in shots_log and "seed 0: 20 training images" in shots_log
    # Another shot count adds its own jobs; the others stand.
    config["evaluation"]["shots"] = [2, 5, 10, "all"]
    write_config(workdir, config)
    assert snakemake(workdir, "-n").jobs == {"train_shots": 2, "compare": 1}
    # Repeats redraw every subset: all shots jobs rerun, with the seeded full-data heads.
    config["evaluation"] = {"shots": [2, 5, "all"], "repeats": 2}
    write_config(workdir, config)
    assert snakemake(workdir, "-n").jobs == {"train_shots": 4, "train_head": 2, "compare": 1}
    config["evaluation"] = {"shots": [2, 5, "all"]}
    write_config(workdir, config)
    snakemake(workdir, "--report", "results/report.html")
    page = (workdir / "results/report.html").read_text()
    assert "label_efficiency_digits.png" in page and "Label efficiency" in page
    assert "labelled training images per class, on a log scale" in page
    assert "Summary across datasets" in page


def test_select_by_and_the_bootstrap_settings_rerun_the_comparison_only(workdir):
    config = copy.deepcopy(TINY)
    config["evaluation"] = {"select_by": "balanced_accuracy", "resamples": 2000, "confidence": 0.9,
                            "bootstrap_seed": 1}
    write_config(workdir, config)
    assert snakemake(workdir, "-n").jobs == {"compare": 1}


def test_repeats_retrain_the_heads_that_depend_on_their_seed(workdir):
    config = copy.deepcopy(TINY)
    config["heads"]["probe"] = {"kind": "logreg", "c_grid": [0.1, 1.0]}
    write_config(workdir, config)
    assert snakemake(workdir).jobs == {"train_head": 1, "compare": 1}
    config["evaluation"] = {"repeats": 2}
    write_config(workdir, config)
    run = snakemake(workdir)
    assert run.jobs == {"train_head": 2, "compare": 1}, run.output  # linear and mlp; logreg ignores its seed
    table = pd.read_csv(workdir / "results/comparison.csv").set_index("head")
    assert table["repeats"].to_dict() == {"linear": 2, "mlp": 2, "probe": 1}
    assert table.loc["linear", "test_accuracy_sd"] >= 0 and pd.isna(table.loc["probe", "test_accuracy_sd"])
    metrics = json.loads((workdir / "results/heads/lite0_digits_mlp.json").read_text())
    assert [r["seed"] for r in metrics["repeats"]] == [0, 1]
    assert len(metrics["repeats"][1]["predictions"]["test"]["predicted"]) == len(metrics["labels"]["test"])
    assert " ± " in (workdir / "results/comparison.md").read_text()


def test_a_knn_k_above_the_training_set_fails_naming_the_key(workdir):
    config = copy.deepcopy(TINY)
    config["heads"]["probe"] = {"kind": "knn", "k": [10, 5000]}
    write_config(workdir, config)
    run = snakemake(workdir, check=False)
    assert run.returncode != 0
    log = (workdir / "results/logs/train_head/lite0_digits_probe.log").read_text()
    assert "heads.probe.k: k = 5000 is larger than the training set (1151 images)" in log
    assert not (workdir / "results/heads/lite0_digits_probe.pt").exists()


def _break_schema(c):
    c["datasets"]["digits"]["source"] = "mnist"
    c["heads"]["linear"]["kind"] = "svm"
    c["heads"]["mlp"]["epochs"] = "ten"


@pytest.mark.parametrize(
    "change, expected",
    [
        # Everything the schema catches is reported at once.
        (_break_schema, [
            "datasets.digits.source: 'mnist' is not valid; valid choices: cifar10, csv, digits, gtsrb, hf, imagefolder",
            "heads.linear.kind: 'svm' is not valid; valid choices: linear, logreg, mlp",
            "heads.mlp.epochs: 'ten' is not of type 'integer'",
        ]),
        (lambda c: c["networks"]["lite0"].update(arch="resnet5"),
         ["networks.lite0.arch: unknown arch 'resnet5'; did you mean: resnet50", "alexnet"]),
        (lambda c: c.update(evaluation={"repeats": 0, "select_by": "f1"}),
         ["evaluation.repeats: 0 is less than the minimum of 1",
          "evaluation.select_by: 'f1' is not valid; valid choices: accuracy, balanced_accuracy"]),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, change, expected):
    workdir = copy_workflow(tmp_path / "wd")
    config = copy.deepcopy(TINY)
    change(config)
    write_config(workdir, config)
    run = snakemake(workdir, check=False)
    assert run.returncode != 0
    for text in expected:
        assert text in run.output, run.output
    assert not (workdir / "results").exists()
