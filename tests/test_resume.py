"""A run killed with SIGKILL mid-extraction resumes: only the missing shards are computed."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import copy_workflow, snakemake, write_config
from job_imports import assert_job_imports

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.extract import Extractor, extract_sharded
from transfer_lab.networks import load_backbone
from transfer_lab.specs import NetworkSpec

pytestmark = pytest.mark.integration

NETWORK = {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 128}
CONFIG = {
    "networks": {"lite0": NETWORK},
    "datasets": {"digits": {"source": "digits"}},
    # 50 training images; about 20 each for validation and test (2 a class).
    "split": {"train_per_class": 5, "validation_fraction": 0.01, "test_fraction": 0.01},
    "heads": {"linear": {"kind": "linear", "epochs": 3}},
    "extract": {"batch_size": 16, "shard_size": 32, "threads": 2},
}
SPLITS = ("train", "validation", "test")


@contextlib.contextmanager
def job_threads():
    """The extraction jobs' thread count (extract.threads 2, --cores 2) in this process: on one
    thread, a split's last, short batch comes out other last bits than on two or more (with
    OMP_NUM_THREADS=1 exported, or on a one-core machine, the test process has one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(CONFIG["extract"]["threads"])
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference_features(workdir, network: dict, tmp_path) -> dict:
    """Each split's features as one uninterrupted extraction in this process computes them."""
    dataset = load_prepared(workdir / "results/datasets/digits.npz")
    extractor = Extractor(load_backbone(NetworkSpec(**network)), "cpu", "fp32")
    with job_threads():
        return {split: extract_sharded(extractor, dataset.subset(split)[0], tmp_path / f"reference-{split}",
                                       shard_size=32, batch_size=16).features for split in SPLITS}


def test_killed_extraction_resumes_with_only_the_missing_shards(tmp_path):
    """One job extracts every split of (lite0, digits); killed once a split has two shards,
    the rerun computes only the rows no shard covers, in every split, and the pickles hold
    the features of an uninterrupted run."""
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, CONFIG)
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    job = workdir / "results/shards/lite0_digits"
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # split/definition/device-precision
            killed = any(len(list(folder.glob("rows-*.npy"))) >= 2 for folder in job.glob("*/*/*"))
        except FileNotFoundError:  # the finished job removed its shard folder while it was listed
            pass
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, at once
            break
        time.sleep(0.05)
    proc.wait()
    assert killed, "extraction finished before two shards were seen"
    survived = {folder.parent.parent.name: sum(len(np.load(p)) for p in folder.glob("rows-*.npy"))
                for folder in job.glob("*/*/*")}
    survived = {split: n for split, n in survived.items() if n}
    shards = {folder.parent.parent.name: len(list(folder.glob("rows-*.npy"))) for folder in job.glob("*/*/*")}
    assert not list((workdir / "results/bottleneck").glob("*.p"))  # nothing half-done looks done

    snakemake(workdir, "--unlock")
    rerun = snakemake(workdir)
    log = (workdir / "results/logs/extract_features/lite0_digits.log").read_text()
    metrics = json.loads((workdir / "results/extract/lite0_digits.json").read_text())
    for split, n in survived.items():
        total = metrics["splits"][split]["n_images"]
        assert f"resuming: {n} of {total} images already extracted, in {shards[split]} shard(s)" in log, log
    for split in SPLITS:  # only the rest was computed
        assert metrics["splits"][split]["n_computed"] == metrics["splits"][split]["n_images"] - survived.get(split, 0)
    assert metrics["n_computed"] == metrics["n_images"] - sum(survived.values())
    assert not job.exists()  # cleaned up once the pickles are written

    # The same features as an uninterrupted extraction with the same shards and batches.
    reference = reference_features(workdir, NETWORK, tmp_path)
    for split in SPLITS:
        features = read_bottleneck(workdir / f"results/bottleneck/lite0_digits_bottleneck_features_{split}.p").features
        assert features.tobytes() == reference[split].tobytes(), split
    assert rerun.jobs["compare"] == 1


def test_a_dataset_in_parts_keeps_finished_parts_refuses_too_many_and_gathers_the_one_part_features(tmp_path):
    """extract.parts: a part that finished is kept when the run stops (here: it was the only
    target), more parts than images fail in the part job with a message naming the setting
    and lose nothing, the gathered pickles hold the features of a one-part run, and a
    dataset of fewer batches than parts runs with empty last parts, saying so."""
    workdir = copy_workflow(tmp_path / "wd")
    network = {**NETWORK, "input_size": 32}
    config = {**CONFIG, "networks": {"lite0": network}, "extract": {**CONFIG["extract"], "shard_size": 16}}
    pickles = [f"results/bottleneck/lite0_digits_bottleneck_features_{split}.p" for split in SPLITS]
    write_config(workdir, {**config, "extract": {**config["extract"], "parts": 3}})
    first = snakemake(workdir, "results/parts/lite0_digits/part-1-of-3.npy")
    assert first.jobs == {"prepare_dataset": 1, "extract_part": 1}
    kept = (workdir / "results/parts/lite0_digits/part-1-of-3.npy").read_bytes()
    sizes = load_prepared(workdir / "results/datasets/digits.npz").split_sizes()
    n, batches = sum(sizes.values()), sum(-(-k // 16) for k in sizes.values())
    assert sizes["train"] == 50 and 3 < batches < n

    # n images: n + 1 parts cannot each have one.
    write_config(workdir, {**config, "extract": {**config["extract"], "parts": n + 1}})
    failed = snakemake(workdir, pickles[0], check=False)
    assert failed.returncode != 0
    log = next((workdir / "results/logs/extract_part").glob(f"lite0_digits_part-*-of-{n + 1}.log")).read_text()
    assert (f"ValueError: extract.parts: {n + 1} for dataset digits, which has {n} image(s): each part needs at "
            f"least one. Set extract.parts to at most {n} for this dataset.") in log, log
    assert (workdir / "results/parts/lite0_digits/part-1-of-3.npy").read_bytes() == kept

    write_config(workdir, {**config, "extract": {**config["extract"], "parts": 3}})
    imports = tmp_path / "imports"
    imports.mkdir()
    rerun = snakemake(workdir, *pickles, hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert rerun.jobs == {"extract_part": 2, "extract_features": 1}  # part 1 was kept
    assert_job_imports(imports, __file__)
    reference = reference_features(workdir, network, tmp_path)
    for split, pickle in zip(SPLITS, pickles, strict=True):
        assert read_bottleneck(workdir / pickle).features.tobytes() == reference[split].tobytes(), split
    assert list((workdir / "results/parts/lite0_digits").glob("*.npy")) == []  # temp: gone once gathered
    # The parts' images and seconds, per split as each part recorded them for its segments.
    metrics = json.loads((workdir / "results/extract/lite0_digits.json").read_text())
    assert {split: m["n_computed"] for split, m in metrics["splits"].items()} == sizes
    assert [p["n_computed"] for p in metrics["parts"]] == [sum(hi - lo for _, lo, hi in p["segments"])
                                                          for p in metrics["parts"]]
    assert metrics["seconds"] == pytest.approx(sum(p["seconds"] for p in metrics["parts"]))
    # The shard size reruns nothing, as without parts (README).
    write_config(workdir, {**config, "extract": {**config["extract"], "shard_size": 8, "parts": 3}})
    assert snakemake(workdir, *pickles, "-n").jobs == {}

    # One part more than the dataset has batches: the first parts take one batch each and
    # the last computes nothing (without loading the network), and the logs say so.
    parts = batches + 1
    write_config(workdir, {**config, "extract": {**config["extract"], "parts": parts}})
    more = snakemake(workdir, *pickles)
    assert more.jobs == {"extract_part": parts, "extract_features": 1}
    for split, pickle in zip(SPLITS, pickles, strict=True):
        assert read_bottleneck(workdir / pickle).features.tobytes() == reference[split].tobytes(), split
    logs = workdir / "results/logs/extract_part"
    last = (logs / f"lite0_digits_part-{parts}-of-{parts}.log").read_text()
    assert f"part {parts} of {parts}: no rows to compute" in last and "extracting" not in last, last
    assert (f"digits: {n} images are {batches} batch(es) of extract.batch_size 16, and parts are cut on "
            f"batches: {batches} of the {parts} parts compute them, the others nothing") in last, last
    assert "extracting 16 train images of digits (rows 16..32 of 50)" in (
        logs / f"lite0_digits_part-2-of-{parts}.log").read_text()
