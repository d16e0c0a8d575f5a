"""Selection through Snakemake: a three-rung successive halving on the quickstart's networks,
killed between rungs and resumed; what the user reads; what reruns when a selection setting
changes; and predict choosing the comparison's (network, head)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_run, copy_workflow, run_env, snakemake, write_config
from job_imports import assert_job_imports
from PIL import Image

from transfer_lab.bottleneck import read_bottleneck

pytestmark = pytest.mark.integration

QUICKSTART = yaml.safe_load((REPO / "config.yaml").read_text())
# The README's selection run, on the quickstart: 4 candidates, 2 go on after 10% of the
# training images, 1 after 30%, screened on all of them.
README_RUN = re.search(r"^snakemake --cores 2 --config '(selection=[^']+)'$", (REPO / "README.md").read_text(),
                       flags=re.M).group(1)
CONFIG = {**QUICKSTART, "selection": yaml.safe_load(README_RUN.removeprefix("selection="))}
NETWORKS = list(CONFIG["networks"])


def records(workdir, rung: int) -> dict:
    """Rung `rung`'s file (counted from 0 here, from 1 in file names)."""
    return json.loads((workdir / f"results/selection/digits_rung-{rung + 1}.json").read_text())


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """The selection run, killed with SIGKILL once the second rung's jobs have started (the
    first rung decided), then resumed; with the imports hook on."""
    workdir = copy_workflow(tmp_path_factory.mktemp("selection") / "wd")
    imports = workdir.parent / "imports"
    imports.mkdir()
    hooks = {"TRANSFER_LAB_TEST_IMPORTS": str(imports)}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor", "--config", README_RUN],
                            cwd=workdir,
                            env=run_env(workdir, hooks), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    second = workdir / "results/logs/screen_survivor"
    deadline, killed = time.monotonic() + 600, False
    while time.monotonic() < deadline and proc.poll() is None:
        if second.is_dir() and any(second.iterdir()):
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its jobs, at once
            killed = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed, "the run ended before the second rung started"
    assert not (workdir / "results/selection/digits_rung-2.json").exists()
    snakemake(workdir, "--unlock")
    resumed = snakemake(workdir, "--config", README_RUN, hooks=hooks)
    return workdir, resumed, imports


def test_the_resumed_run_keeps_the_first_rung_and_finishes(selected):
    workdir, resumed, imports = selected
    assert resumed.jobs["screen_candidate"] == 0 and resumed.jobs["prepare_dataset"] == 0, resumed.output
    assert resumed.jobs["select_candidates"] == 2, resumed.output  # rungs 1 and 2 (rung 0 was decided)
    assert 1 <= resumed.jobs["screen_survivor"] <= 2, resumed.output
    assert resumed.jobs["extract_features"] == 1 and resumed.jobs["train_head"] == 3, resumed.output
    assert_job_imports(imports, __file__)


def test_halving_cuts_by_rung_and_only_the_finalist_gets_full_features(selected):
    workdir, _, _ = selected
    rung0, rung1, rung2 = (records(workdir, k) for k in range(3))
    assert sorted(r["network"] for r in rung0["records"]) == sorted(NETWORKS)
    assert len(rung0["decision"]["kept"]) == 2 and rung0["decision"]["kept"] == rung0["decision"]["ranked"][:2]
    assert sorted(r["network"] for r in rung1["records"]) == sorted(rung0["decision"]["kept"])
    assert len(rung1["decision"]["kept"]) == 1
    (finalist,) = rung1["decision"]["kept"]
    assert [r["network"] for r in rung2["records"]] == [finalist] and rung2["decision"]["cut"] == []
    # Ranked by the probe's validation accuracy, best first.
    accuracy = {r["network"]: r["accuracy"] for r in rung0["records"]}
    assert [accuracy[n] for n in rung0["decision"]["ranked"]] == sorted(accuracy.values(), reverse=True)
    # The rungs' subsets grow; validation is the same split at every rung (never test).
    sizes = [{r["n_train"] for r in rung["records"]} for rung in (rung0, rung1, rung2)]
    assert all(len(s) == 1 for s in sizes) and sizes[0].pop() < sizes[1].pop() < sizes[2].pop()
    assert len({r["n_validation"] for rung in (rung0, rung1, rung2) for r in rung["records"]}) == 1
    bottleneck = sorted(p.name for p in (workdir / "results/bottleneck").glob("*.p"))
    assert bottleneck == [f"{finalist}_digits_bottleneck_features_{s}.p" for s in ("test", "train", "validation")]
    assert sorted(p.name for p in (workdir / "results/heads").glob("*.pt")) == [
        f"{finalist}_digits_{head}.pt" for head in sorted(QUICKSTART["heads"])]
    comparison = pd.read_csv(workdir / "results/comparison.csv")
    assert set(comparison["network"]) == {finalist}


def test_a_later_rung_computes_only_its_new_images_and_reuses_the_earlier_ones(selected):
    workdir, _, _ = selected
    name = records(workdir, 1)["records"][0]["network"]
    first = read_bottleneck(workdir / f"results/selection/features/{name}_digits_rung-1.p")
    second = read_bottleneck(workdir / f"results/selection/features/{name}_digits_rung-2.p")
    assert second.meta["n_computed"] == len(second.labels) - len(first.labels)
    # Nested: every first-rung row is in the second rung, with the very same features.
    rows = {row.tobytes() for row in second.features}
    assert all(row.tobytes() in rows for row in first.features)
    full = read_bottleneck(workdir / f"results/bottleneck/{records(workdir, 2)['records'][0]['network']}"
                           "_digits_bottleneck_features_train.p")
    assert len(full.labels) == records(workdir, 2)["records"][0]["n_train"]


def test_the_selection_table_figure_and_report_section(selected):
    workdir, _, _ = selected
    table = pd.read_csv(workdir / "results/selection.csv")
    assert sorted(table["network"]) == sorted(NETWORKS) and len(table) == 4
    md = (workdir / "results/selection.md").read_text()
    # The README's numbers: 1 of 4 reached the end, at 54% of the forward passes of trying all 4.
    assert "1 of 4 candidates reached the full training set" in md and "spent 54% of the forward passes" in md, md
    assert (workdir / "results/plots/selection_digits.png").stat().st_size > 10_000
    summary = (workdir / "results/comparison_summary.rst").read_text()
    assert summary.index("halving") < summary.index("Summary") if "Summary" in summary else "halving" in summary


def test_predict_applies_the_comparisons_choice_when_the_config_names_none(selected, tmp_path):
    workdir = copy_run(selected[0], tmp_path / "wd")
    choice = json.loads((workdir / "results/choice.json").read_text())["digits"]
    (finalist,) = records(workdir, 1)["decision"]["kept"]
    assert choice["network"] == finalist and choice["head"] == choice["head_of"][finalist]
    run = snakemake(workdir, "-n", "export", "--config", README_RUN)
    assert run.jobs == {"export_model": 1, "export": 1}, run.output
    assert f"results/export/{finalist}_digits_{choice['head']}.pt2" in run.output


def rerun(workdir, selection: dict) -> dict:
    config = copy.deepcopy(CONFIG)
    config["selection"] = {**config["selection"], **selection}
    write_config(workdir, config)
    return snakemake(workdir).jobs


def test_scoring_settings_rescore_every_rung_and_compute_no_features(selected, tmp_path):
    workdir = copy_run(selected[0], tmp_path / "wd")
    features = {p: p.stat().st_mtime_ns for p in (workdir / "results/selection/features").iterdir()}
    jobs = rerun(workdir, {"probe": "knn", "k": 5})
    assert jobs["select_candidates"] == 3 and jobs["summarize_selection"] == 1, jobs
    assert jobs["screen_candidate"] == 0, jobs
    # No features computed again: a candidate that now goes on is screened at its new rung only.
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in features.items())
    assert len(list((workdir / "results/selection/features").iterdir())) == len(features) + jobs["screen_survivor"]
    jobs = rerun(workdir, {"probe": "knn", "k": 5})
    assert jobs == {}, jobs


def test_a_changed_rung_rescreens_from_that_rung_on(selected, tmp_path):
    workdir = copy_run(selected[0], tmp_path / "wd")
    before = (workdir / "results/selection/digits_rung-1.json").stat().st_mtime_ns
    jobs = rerun(workdir, {"rungs": [0.1, 0.5, 1.0]})
    assert jobs["screen_candidate"] == 0 and jobs["screen_survivor"] == 2, jobs
    assert jobs["select_candidates"] == 2, jobs  # rungs 1 and 2
    assert (workdir / "results/selection/digits_rung-1.json").stat().st_mtime_ns == before
    jobs = rerun(workdir, {"seed": 1, "rungs": [0.1, 0.5, 1.0]})
    assert jobs["screen_candidate"] == 4 and jobs["select_candidates"] == 3, jobs


def test_the_images_per_second_budget_marks_and_reruns_only_the_summaries(selected, tmp_path):
    workdir = copy_run(selected[0], tmp_path / "wd")
    jobs = rerun(workdir, {"budget": {"min_images_per_second": 1e9}})
    assert jobs == {"summarize_selection": 1, "compare": 1}, jobs
    table = pd.read_csv(workdir / "results/selection.csv")
    assert table["over_budget"].all()


def test_a_parameter_budget_leaves_candidates_out_before_any_extraction(selected, tmp_path):
    workdir = copy_run(selected[0], tmp_path / "wd")
    config = copy.deepcopy(CONFIG)
    config["selection"]["budget"] = {"max_params": 5.0}  # Lite0 (4.7 M) and its random control
    write_config(workdir, config)
    run = snakemake(workdir, "-n")
    assert run.jobs["screen_candidate"] == 0 and run.jobs["select_candidates"] >= 1, run.output
    config["selection"]["budget"] = {"max_params": 1.0}
    write_config(workdir, config)
    refused = snakemake(workdir, "-n", check=False)
    assert refused.returncode != 0 and "selection.budget.max_params: 1.0 million leaves no network" in refused.output


@pytest.mark.parametrize(("selection", "message"), [
    ({"rungs": [0.0, 1.0]}, "selection.rungs"),
    ({"rungs": [0.5, 0.3]}, "selection.rungs"),
    ({"rungs": [0.1, 1.5]}, "selection.rungs"),
    ({"keep": 0}, "selection.keep"),
    ({"keep": 1.5}, "selection.keep"),
])
def test_bad_selection_settings_are_refused_before_any_job(tmp_path, selection, message):
    workdir = copy_workflow(tmp_path / "wd")
    config = copy.deepcopy(CONFIG)
    config["selection"] = {**config["selection"], **selection}
    write_config(workdir, config)
    run = snakemake(workdir, "-n", check=False)
    assert run.returncode != 0 and message in run.output, run.output


def test_a_first_rung_smaller_than_one_image_per_class_fails_naming_the_setting(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    config = {**copy.deepcopy(CONFIG), "heads": {"logreg": {"kind": "logreg"}}}
    config["networks"] = {"lite0": {**CONFIG["networks"]["efficientnet_lite0"], "input_size": 32}}
    config["selection"] = {"rungs": [0.001, 1.0]}
    write_config(workdir, config)
    run = snakemake(workdir, check=False)
    log = (workdir / "results/logs/screen_candidate/lite0_digits_rung-1.log").read_text()
    assert run.returncode != 0 and "selection.rungs" in log and "dataset 'digits'" in log, log
    assert (workdir / "results/datasets/digits.npz").exists()  # nothing already computed is lost


def test_the_quickstart_with_other_heads_predicts_without_naming_one(tmp_path):
    """The quickstart's config names no (network, head): with its heads replaced by a kNN
    head, predict and export are planned, not refused ("predict.head: 'linear' is not in
    heads" before)."""
    workdir = copy_workflow(tmp_path / "wd")
    config = copy.deepcopy(QUICKSTART)
    config["heads"] = {"knn": {"kind": "knn"}}
    write_config(workdir, config)
    (workdir / "new").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(workdir / "new/blank.png")
    for target in ("predict", "export"):
        run = snakemake(workdir, "-n", target, "--config", "predict={images: new/}", check=False)
        assert run.returncode == 0 and "not in heads" not in run.output, run.output
        assert run.jobs["compare"] == 1, run.output  # the choice is the comparison's


def test_a_zoo_plans_exactly_the_networks_it_expands_to(tmp_path):
    """A zoo entry behaves as its networks written by hand: the same jobs, the same files."""
    from transfer_lab.zoo import expand_zoo

    zoo = {"lite": {"arch": "timm:tf_efficientnet_lite[01]", "input_size": 32}}
    base = {"datasets": {"digits": {"source": "digits"}}, "heads": {"logreg": {"kind": "logreg"}}}
    plans = []
    for name, config in (("zoo", {**base, "zoo": zoo}), ("networks", {**base, "networks": expand_zoo(zoo)})):
        workdir = copy_workflow(tmp_path / name)
        write_config(workdir, config)
        run = snakemake(workdir, "--summary", check=False)
        plans.append((run.returncode, sorted(line.split("\t")[0] for line in run.output.splitlines()
                                             if line.startswith("results/") or line.startswith("resources/"))))
    assert plans[0] == plans[1] and plans[0][0] == 0 and len(plans[0][1]) > 5, plans


def test_a_zoo_candidate_whose_weights_cannot_be_fetched_offline_names_both_places(tmp_path):
    """A zoo candidate's weights go through fetch_weights like a hand-written network's:
    offline and not in the hub cache, the job fails naming the file, where to put it in the
    project and where in the hub cache; no screening job starts without them."""
    workdir = copy_workflow(tmp_path / "wd")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    write_config(workdir, {"zoo": {"lite": {"arch": "timm:tf_efficientnet_lite0", "input_size": 32}},
                           "datasets": {"digits": {"source": "digits"}}, "heads": {"logreg": {"kind": "logreg"}},
                           "selection": {"rungs": [0.5, 1.0]}})
    run = snakemake(workdir, check=False, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    name = "tf_efficientnet_lite0.in1k"
    log = (workdir / f"results/logs/fetch_weights/timm/{name}/model.safetensors.log").read_text()
    assert run.returncode != 0 and f"the Hugging Face hub repository timm/{name}" in log, log
    assert f"put the file at resources/weights/timm/{name}/model.safetensors" in log, log
    assert str(cache / f"models--timm--{name}/snapshots/<revision>/model.safetensors") in log, log
    assert run.jobs["screen_candidate"] == 0, run.output
