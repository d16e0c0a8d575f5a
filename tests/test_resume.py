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
    "split": {"train_per_class": 5},
    "heads": {"linear": {"kind": "linear", "epochs": 3}},
    "extract": {"batch_size": 16, "shard_size": 32, "threads": 2},
}


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


def test_killed_extraction_resumes_with_only_the_missing_shards(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, CONFIG)
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    shards = workdir / "results/shards"
    deadline = time.monotonic() + 300
    killed_in = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for folder in shards.glob("*/*/*") if shards.exists() else []:  # job/definition/device-precision
                if len(list(folder.glob("rows-*.npy"))) >= 2:
                    killed_in = folder
                    break
        except FileNotFoundError:  # a finished job removed its shard folder while it was listed
            pass
        if killed_in:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, at once
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_in is not None, "extraction finished before two shards were seen"
    split_name = killed_in.parent.parent.name.rsplit("_", 1)[1]
    survivors = sorted(p.name for p in killed_in.glob("rows-*.npy"))
    survived_images = sum(len(np.load(p)) for p in killed_in.glob("rows-*.npy"))
    target = workdir / f"results/bottleneck/lite0_digits_bottleneck_features_{split_name}.p"
    assert not target.exists()  # nothing half-done looks done

    snakemake(workdir, "--unlock")
    rerun = snakemake(workdir)
    log = (workdir / f"results/logs/extract_features/lite0_digits_{split_name}.log").read_text()
    assert f"resuming: {survived_images} of {metrics_n(workdir, split_name)} images already extracted, in " \
           f"{len(survivors)} shard(s)" in log, log
    metrics = json.loads((workdir / f"results/extract/lite0_digits_{split_name}.json").read_text())
    assert metrics["n_computed"] == metrics["n_images"] - survived_images  # only the rest was computed
    assert not (workdir / "results/shards" / killed_in.parent.parent.name).exists()  # cleaned up once gathered
    features = read_bottleneck(target).features

    # The same features as an uninterrupted extraction with the same shards and batches.
    images, _ = load_prepared(workdir / "results/datasets/digits.npz").subset(split_name)
    extractor = Extractor(load_backbone(NetworkSpec(**NETWORK)), "cpu", "fp32")
    with job_threads():
        reference = extract_sharded(extractor, images, tmp_path / "reference", shard_size=32, batch_size=16)
    assert features.tobytes() == reference.features.tobytes()
    assert rerun.jobs["compare"] == 1


def metrics_n(workdir, split: str) -> int:
    return json.loads((workdir / f"results/extract/lite0_digits_{split}.json").read_text())["n_images"]


def test_a_split_in_parts_keeps_finished_parts_refuses_too_many_and_gathers_the_one_part_features(tmp_path):
    """extract.parts: a part that finished is kept when the run stops (here: it was the only
    target), more parts than images fail in the part job with a message naming the setting
    and lose nothing, the gathered pickle holds the features of a one-part run, and a split
    of fewer batches than parts runs with empty last parts, saying so."""
    workdir = copy_workflow(tmp_path / "wd")
    network = {**NETWORK, "input_size": 32}
    config = {**CONFIG, "networks": {"lite0": network}, "extract": {**CONFIG["extract"], "shard_size": 16}}
    write_config(workdir, {**config, "extract": {**config["extract"], "parts": {"train": 3}}})
    train = "results/bottleneck/lite0_digits_bottleneck_features_train.p"
    first = snakemake(workdir, "results/parts/lite0_digits_train/part-1-of-3.npy")
    assert first.jobs == {"prepare_dataset": 1, "extract_part": 1}
    kept = (workdir / "results/parts/lite0_digits_train/part-1-of-3.npy").read_bytes()

    # 50 training images: 51 parts cannot each have one.
    write_config(workdir, {**config, "extract": {**config["extract"], "parts": {"train": 51}}})
    failed = snakemake(workdir, train, check=False)
    assert failed.returncode != 0
    log = next((workdir / "results/logs/extract_part").glob("lite0_digits_train_part-*-of-51.log")).read_text()
    assert ("ValueError: extract.parts: 51 for split train of digits, which has 50 image(s): each part needs at "
            "least one. Set extract.parts to at most 50 for this split.") in log, log
    assert (workdir / "results/parts/lite0_digits_train/part-1-of-3.npy").read_bytes() == kept

    write_config(workdir, {**config, "extract": {**config["extract"], "parts": {"train": 3}}})
    imports = tmp_path / "imports"
    imports.mkdir()
    rerun = snakemake(workdir, train, hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert rerun.jobs == {"extract_part": 2, "extract_features": 1}  # part 1 was kept
    assert_job_imports(imports, __file__)
    features = read_bottleneck(workdir / train).features
    images, _ = load_prepared(workdir / "results/datasets/digits.npz").subset("train")
    extractor = Extractor(load_backbone(NetworkSpec(**network)), "cpu", "fp32")
    with job_threads():
        reference = extract_sharded(extractor, images, tmp_path / "reference", batch_size=16)
    assert features.tobytes() == reference.features.tobytes()
    assert list((workdir / "results/parts/lite0_digits_train").glob("*.npy")) == []  # temp: gone once gathered
    # The shard size reruns nothing, as without parts (README).
    write_config(workdir, {**config, "extract": {**config["extract"], "shard_size": 8, "parts": {"train": 3}}})
    assert snakemake(workdir, train, "-n").jobs == {}

    # 50 images are 4 batches of 16: of 5 parts, the first 4 take one batch each and the
    # last computes nothing (without loading the network), and the logs say so.
    write_config(workdir, {**config, "extract": {**config["extract"], "parts": {"train": 5}}})
    five = snakemake(workdir, train)
    assert five.jobs == {"extract_part": 5, "extract_features": 1}
    assert read_bottleneck(workdir / train).features.tobytes() == reference.features.tobytes()
    logs = workdir / "results/logs/extract_part"
    last = (logs / "lite0_digits_train_part-5-of-5.log").read_text()
    assert "part 5 of 5: no rows to compute" in last and "extracting" not in last, last
    assert ("split train of digits: 50 images are 4 batch(es) of extract.batch_size 16, and parts are cut on "
            "batches: 4 of the 5 parts compute them, the others nothing") in last, last
    assert "extracting 16 train images of digits (rows 16..32 of 50)" in (
        logs / "lite0_digits_train_part-2-of-5.log").read_text()
