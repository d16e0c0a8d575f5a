"""Integration: a pretrained timm transformer through the workflow, offline.

fetch_weights (a local rule) takes the weights from a Hugging Face hub cache seeded as the
hub lays it out, with HF_HUB_OFFLINE=1; extraction, fine-tuning and export load the file it
put under resources/weights/, which the DAG tracks: the hub cache is gone by then.
"""

import json
import os
import shutil

import pytest
import torch
from conftest import copy_workflow, snakemake, write_config
from fixtures import HF_REVISION, write_timm_hub_cache
from job_imports import assert_job_imports

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.specs import NetworkSpec

pytestmark = pytest.mark.integration

VIT = "test_vit.r160_in1k"
WEIGHTS = f"resources/weights/timm/{VIT}/model.safetensors"
GRID = {
    "networks": {"vit": {"arch": f"timm:{VIT}", "input_size": 32, "pool": "cls+mean"}},
    "datasets": {"digits": {"source": "digits", "split": {"train_per_class": 10}}},
    "split": {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    "heads": {"linear": {"kind": "linear", "epochs": 5}},
    "extract": {"threads": 1},
    "finetune": {"networks": ["vit"], "epochs": 1, "batch_size": 50},
}


def test_fetch_weights_feeds_extraction_finetuning_and_export_offline(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, GRID)
    cache = tmp_path / "hf-cache"
    write_timm_hub_cache(cache, VIT, seed=1)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}

    imports = tmp_path / "imports"
    imports.mkdir()
    fetched = snakemake(workdir, WEIGHTS, env=env, hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert fetched.jobs == {"fetch_weights": 1}
    assert_job_imports(imports, __file__, also={"fetch_weights"})  # timm allowed for its file
    assert "localrule fetch_weights:" in fetched.output  # on a cluster: the login node
    assert os.path.samefile(workdir / WEIGHTS, cache / f"models--timm--{VIT}/snapshots/{HF_REVISION}/model.safetensors")
    shutil.rmtree(cache)  # from here on only resources/weights/ holds the weights

    run = snakemake(workdir, "all", "export", env=env)
    assert run.jobs == {"prepare_dataset": 1, "extract_features": 1, "train_head": 1, "finetune": 1, "compare": 1,
                        "export_model": 1, "export": 1}, run.output
    test = read_bottleneck(workdir / "results/bottleneck/vit_digits_bottleneck_features_test.p")
    assert test.features.shape[1] == 128  # cls+mean: twice the width of 64
    assert NetworkSpec.from_json(test.meta["network_spec"]) == NetworkSpec(
        arch=f"timm:{VIT}", weights="DEFAULT", input_size=32, pool="cls+mean")
    assert test.meta["preprocess_mean"] == "(0.5, 0.5, 0.5)"  # the tag's pretrained config
    metrics = json.loads((workdir / "results/heads/vit_digits_linear.json").read_text())
    assert metrics["feature_dim"] == 128

    # The fetched file is an input of every rule that loads the backbone.
    (workdir / WEIGHTS).touch()
    assert snakemake(workdir, "-n", "all", "export", env=env).jobs == {
        "extract_features": 1, "train_head": 1, "finetune": 1, "compare": 1, "export_model": 1, "export": 1}

    # And the features are those of the weights in the file.
    from transfer_lab.datasets import load_prepared
    from transfer_lab.extract import extract_features
    from transfer_lab.networks import load_backbone

    backbone = load_backbone(NetworkSpec.from_json(test.meta["network_spec"]), workdir / "resources/weights")
    images, _ = load_prepared(workdir / "results/datasets/digits.npz").subset("test")
    expected = extract_features(backbone, images, device="cpu", precision="fp32").features
    torch.testing.assert_close(torch.from_numpy(test.features), torch.from_numpy(expected))
