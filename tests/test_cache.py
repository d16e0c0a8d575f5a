"""Snakemake's between-workflow cache: two checkouts share prepared datasets and features."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import copy_workflow, snakemake, write_config

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.files import check_output_cache

pytestmark = pytest.mark.integration

CONFIG = {
    "networks": {"lite0": {"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 32}},
    "datasets": {"digits": {"source": "digits"}},
    "split": {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    "heads": {"logreg": {"kind": "logreg"}},
}
TRAIN = "results/bottleneck/lite0_digits_bottleneck_features_train.p"
TEST = "results/bottleneck/lite0_digits_bottleneck_features_test.p"


def _clone(path, config):
    workdir = copy_workflow(path)
    write_config(workdir, config)
    return workdir


def test_a_second_checkout_takes_features_from_the_cache_and_new_weights_miss(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    first = _clone(tmp_path / "first", CONFIG)
    run = snakemake(first, TRAIN, TEST, "--cache", env=env)
    assert run.jobs == {"prepare_dataset": 1, "extract_features": 1}  # one job writes every split
    # One entry per output, named by it: the three pickles, the metrics.
    assert len(list(cache.glob("*.npz"))) == 1 and len(list(cache.glob("*.p"))) == 3
    assert sorted(p.name.split("_", 1)[1] for p in cache.glob("*_*")) == ["metrics.json", "test.p", "train.p",
                                                                           "validation.p"]

    # Another checkout, same network, weights, data and code: the jobs are planned, and every
    # result comes from the cache; no job computes (each log stays as Snakemake made it: empty).
    second = _clone(tmp_path / "second", CONFIG)
    run = snakemake(second, TRAIN, TEST, "--cache", env=env)
    assert run.jobs == {"prepare_dataset": 1, "extract_features": 1}
    # The npz, three pickles and the metrics, each linked from the cache; nothing moved into it.
    assert run.output.count("Symlinking output file") == 5 and "Moving output file" not in run.output, run.output
    logs = list((second / "results/logs").rglob("*.log"))
    assert len(logs) == 2 and all(log.stat().st_size == 0 for log in logs)
    for target in (TRAIN, TEST):
        assert (second / target).is_symlink()
        ours, theirs = read_bottleneck(first / target), read_bottleneck(second / target)
        assert np.array_equal(ours.features, theirs.features) and ours.meta == theirs.meta
    # Train and test features are two entries, not one.
    assert not np.array_equal(read_bottleneck(second / TRAIN).labels[:50], read_bottleneck(second / TEST).labels[:50])

    # Other weights: the features miss the cache and are computed; the dataset still hits.
    third = _clone(tmp_path / "third", {**CONFIG, "networks": {"lite0": {**CONFIG["networks"]["lite0"],
                                                                          "weights": "random"}}})
    run = snakemake(third, TRAIN, "--cache", env=env)
    assert run.jobs == {"prepare_dataset": 1, "extract_features": 1}
    assert f"Moving output file {TRAIN} to cache" in run.output
    assert "Moving output file results/datasets/digits.npz" not in run.output
    assert "peak memory" in (third / "results/logs/extract_features/lite0_digits.log").read_text()
    assert (third / "results/logs/prepare_dataset/digits.log").stat().st_size == 0
    assert len(list(cache.glob("*.p"))) == 6


def test_a_cache_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    check_output_cache(cache)
    # As root (CI) every folder is writable: the refusal is checked through os.access.
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and str(path) == str(cache)))
    with pytest.raises(ValueError, match=f"SNAKEMAKE_OUTPUT_CACHE={cache}: this user cannot write there"):
        check_output_cache(cache)


def test_a_missing_cache_folder_stops_the_workflow_before_any_job(tmp_path):
    workdir = _clone(tmp_path / "w", CONFIG)
    run = snakemake(workdir, TRAIN, "--cache", check=False, env={"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path / "nowhere")})
    assert run.returncode != 0 and f"SNAKEMAKE_OUTPUT_CACHE={tmp_path / 'nowhere'}: no such folder" in run.output
    assert not (workdir / "results").exists()  # nothing ran, nothing was made or lost
