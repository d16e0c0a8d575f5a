"""Integration: Snakemake end to end on a tiny grid, and the caching users rely on."""

import copy
import shutil

import pandas as pd
import pytest

from conftest import copy_workflow, snakemake, write_config
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
    dest = tmp_path / "wd"
    shutil.copytree(built[0], dest, symlinks=True, copy_function=shutil.copy2)
    return dest


def test_first_run_builds_every_artifact_in_the_contract_format(built):
    workdir, first = built
    assert first.jobs == {"prepare_dataset": 1, "extract_features": 3, "train_head": 2, "compare": 1}
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
        assert list((workdir / "results/benchmarks" / rule).glob("*.tsv")), rule
    assert "img/s" in (workdir / "results/logs/extract_features/lite0_digits_train.log").read_text()


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
    for caption in ("chosen on **validation**", "Up and to the right is", "Rows are the true classes",
                    "the kept epoch"):
        assert caption.replace("**", "") in page.replace("<strong>", "").replace("</strong>", ""), caption


def _break_schema(c):
    c["datasets"]["digits"]["source"] = "mnist"
    c["heads"]["linear"]["kind"] = "svm"
    c["heads"]["mlp"]["epochs"] = "ten"


@pytest.mark.parametrize(
    "change, expected",
    [
        # Everything the schema catches is reported at once.
        (_break_schema, [
            "datasets.digits.source: 'mnist' is not valid; valid choices: cifar10, digits, gtsrb, imagefolder",
            "heads.linear.kind: 'svm' is not valid; valid choices: linear, logreg, mlp",
            "heads.mlp.epochs: 'ten' is not of type 'integer'",
        ]),
        (lambda c: c["networks"]["lite0"].update(arch="resnet5"),
         ["networks.lite0.arch: unknown arch 'resnet5'; did you mean: resnet50", "alexnet"]),
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
