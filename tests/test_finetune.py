"""Fine-tuning: a real backbone trained end to end on real digits, on the CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_workflow, snakemake, write_config
from near_ties import accuracy_bounds, assert_same_class
from PIL import Image
from torch import nn

from transfer_lab.config import ConfigError, load_schema, validate_config
from transfer_lab.datasets import SplitSpec, load_prepared, prepare_dataset
from transfer_lab.export import export_model, load_exported
from transfer_lab.extract import Extractor
from transfer_lab.finetune import (
    _train_mode,
    build_classifier_net,
    finetune,
    is_finetuned,
    load_finetuned,
    param_groups,
    save_finetuned,
)
from transfer_lab.networks import load_backbone
from transfer_lab.predict import PredictError, load_predictor
from transfer_lab.sources import dataset_spec
from transfer_lab.specs import NetworkSpec

SPEC = NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=32)
SCHEMA_PATH = Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml"
# Logits of one network computed twice (another batch size, another process or thread
# count) round differently, by about 1e-5: a class leading by less is a near-tie.
LOGIT_MARGIN = 1e-3


def config(**over) -> dict:
    cfg = {"epochs": 2, "batch_size": 20, "lr": 1e-3, "backbone_lr": 1e-4, "weight_decay": 0.0,
           "batchnorm": "frozen", "seed": 0}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a small network's small batches: more threads mostly wait
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits: 10 training images per class, 50 for validation and for test."""
    ds = prepare_dataset(dataset_spec({"source": "digits"}),
                         SplitSpec(validation_fraction=0.2, test_fraction=0.2, seed=0, train_per_class=10))
    splits = {name: ds.subset(name) for name in ("train", "validation", "test")}
    splits["validation"] = tuple(a[:50] for a in splits["validation"])
    splits["test"] = tuple(a[:50] for a in splits["test"])
    return splits, ds.class_names


@pytest.fixture(scope="module")
def pretrained():
    return load_backbone(SPEC)


def run(pretrained, digits, **over):
    splits, class_names = digits
    return finetune(copy.deepcopy(pretrained), SPEC, config(**over), splits, class_names, device="cpu")


@pytest.fixture(scope="module")
def trained(pretrained, digits):
    return run(pretrained, digits)


def test_finetuning_learns_and_keeps_the_best_epoch(trained):
    _, metrics = trained
    # Chance is 10%; two epochs of 100 images at 32 px reach ~45% (measured).
    assert metrics["accuracy"]["validation"] > 0.25, metrics["accuracy"]
    assert metrics["accuracy"]["train"] > 0.25
    curve = metrics["curve"]
    assert [c["epoch"] for c in curve] == [1, 2]
    assert curve[1]["train_loss"] < curve[0]["train_loss"]
    losses = [c["validation_loss"] for c in curve]
    assert metrics["best_epoch"] == 1 + int(np.argmin(losses))
    # The kept epoch's validation accuracy is the one reported.
    assert metrics["accuracy"]["validation"] == pytest.approx(curve[metrics["best_epoch"] - 1]["validation_accuracy"])


def test_metrics_have_the_head_metrics_fields(trained):
    _, metrics = trained
    assert metrics["method"] == "finetune" and metrics["feature_dim"] == 1280
    assert metrics["n"] == {"train": 100, "validation": 50, "test": 50}
    assert metrics["class_names"] == [str(i) for i in range(10)]
    for split in ("train", "validation", "test"):
        cm = np.array(metrics["confusion_matrix"][split])
        assert cm.shape == (10, 10) and cm.sum() == metrics["n"][split]
        assert np.trace(cm) / cm.sum() == pytest.approx(metrics["accuracy"][split])
        assert set(metrics["per_class_accuracy"][split]) == set(metrics["class_names"])
    assert metrics["train_seconds"] > 0 and metrics["device"] == "cpu" and metrics["precision"] == "fp32"
    json.dumps(metrics)  # plain JSON types only


def test_seeded_runs_are_identical(pretrained, digits, trained):
    finetuned, metrics = run(pretrained, digits)
    assert metrics["curve"] == trained[1]["curve"]
    assert metrics["confusion_matrix"] == trained[1]["confusion_matrix"]
    for part in ("backbone", "classifier"):
        for key, value in finetuned[part].items():
            assert torch.equal(value, trained[0][part][key]), key


def test_saved_file_reloads_with_weights_only_and_classifies_the_same(trained, digits, tmp_path):
    finetuned, metrics = trained
    path = tmp_path / "net.pt"
    save_finetuned(path, finetuned)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["class_names"] == metrics["class_names"] and raw["spec"] == SPEC.to_dict()
    backbone, _ = load_finetuned(path)
    assert backbone.feature_dim == 10 and not backbone.model.training
    splits, _ = digits
    for split, (images, labels) in splits.items():
        logits = Extractor(backbone, "cpu").run(images, 64)  # fine-tuning scored batches of 20
        assert logits.shape == (len(images), 10)
        # The same classes, but where two classes' logits nearly tie (tie-aware, near_ties).
        low, high = accuracy_bounds(logits, labels, LOGIT_MARGIN)
        assert low - 1e-9 <= metrics["accuracy"][split] <= high + 1e-9, (split, low, high)
        if split in metrics["predictions"]:
            assert_same_class(np.array(metrics["predictions"][split]["predicted"]), logits, LOGIT_MARGIN,
                              err_msg=split)
    # The same weights give the same logits, whichever object holds them.
    again, _ = load_finetuned(path)
    images = splits["validation"][0]
    np.testing.assert_array_equal(Extractor(again, "cpu").run(images, 64),
                                  Extractor(backbone, "cpu").run(images, 64))


def test_predict_and_export_apply_a_finetuned_network_as_it_classifies(trained, digits, tmp_path):
    """predict's Classifier (and the exported program) on a fine-tuned file: the network's own
    classifier on unstandardised features, the probabilities softmax of its logits."""
    finetuned, _ = trained
    splits, class_names = digits
    images = splits["test"][0][:6]
    meta = {"network": "lite0", "dataset": "digits", "network_spec": SPEC.to_json(),
            "storage_size": images.shape[1], "storage_fit": "squash"}
    path = tmp_path / "lite0_digits.pt"
    save_finetuned(path, {**finetuned, "network_meta": meta})
    assert is_finetuned(path)
    predictor = load_predictor(path, network="lite0", config={"networks": {"lite0": SPEC.to_dict()}})
    assert predictor.head_kind == "finetune" and predictor.class_names == class_names
    backbone, _ = load_finetuned(path)
    logits = torch.from_numpy(Extractor(backbone, "cpu").run(images, 6))
    with torch.inference_mode():
        stored = torch.from_numpy(images)
        probs = predictor.model.classify(stored)
        one = predictor.model(stored[0])  # one image through the storage resize (same size: none)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(one, probs[0], rtol=0, atol=1e-6)
    export_model(predictor, tmp_path / "lite0_digits_finetune.pt2")
    module, record = load_exported(tmp_path / "lite0_digits_finetune.pt2")
    assert record["head"]["kind"] == "finetune" and record["class_names"] == class_names
    with torch.no_grad():
        torch.testing.assert_close(module(stored[1]), probs[1], rtol=0, atol=1e-4)
    with pytest.raises(PredictError, match="not of the requested network 'resnet'"):
        load_predictor(path, network="resnet")


def test_a_head_file_is_not_a_finetuned_network(tmp_path):
    path = tmp_path / "head.pt"
    torch.save({"kind": "linear", "state_dict": {}, "network_meta": {}}, path)
    assert not is_finetuned(path)


def test_load_refuses_a_file_that_is_not_a_finetuned_network(tmp_path):
    path = tmp_path / "head.pt"
    torch.save({"kind": "linear", "state_dict": {}}, path)
    with pytest.raises(ValueError, match="head.pt: not a fine-tuned network file"):
        load_finetuned(path)


def test_backbone_and_classifier_train_at_their_own_learning_rates(pretrained, digits, trained):
    net = build_classifier_net(copy.deepcopy(pretrained.model), 1280, 10)
    groups = param_groups(net, config(lr=0.01, backbone_lr=0.0003))
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 0.0003), ("classifier", 0.01)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # each parameter once
    assert all(p.requires_grad for p in net.parameters())

    before = pretrained.model.state_dict()
    changed = [k for k, v in trained[0]["backbone"].items() if not torch.equal(v, before[k])]
    assert len(changed) > 100  # the backbone was unfrozen: its weights moved
    # With backbone_lr 0 (and BatchNorm statistics frozen) only the classifier moves.
    frozen, _ = run(pretrained, digits, epochs=1, backbone_lr=0.0)
    assert all(torch.equal(v, before[k]) for k, v in frozen["backbone"].items())
    assert not torch.equal(frozen["classifier"]["weight"], trained[0]["classifier"]["weight"])


def test_frozen_batchnorm_keeps_running_statistics_in_training():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    _train_mode(net, "frozen")
    assert not net[1].training and net[0].training and net[2].training
    _train_mode(net, "train")
    assert net[1].training


# --- config -------------------------------------------------------------------------


def minimal_config(**finetune) -> dict:
    return {
        "networks": {"net": {"arch": "resnet18"}},
        "datasets": {"dig": {"source": "digits"}},
        "heads": {"h": {"kind": "linear"}},
        "finetune": finetune,
    }


def test_finetune_config_defaults_are_off():
    config = validate_config(minimal_config(), load_schema(SCHEMA_PATH), check_resources=False)
    assert config["finetune"] == {"networks": [], "datasets": [], "epochs": 3, "batch_size": 64, "lr": 0.001,
                                  "backbone_lr": 0.0001, "weight_decay": 0.0, "batchnorm": "frozen", "seed": 0}


def test_finetune_config_names_unknown_networks_and_datasets():
    with pytest.raises(ConfigError) as info:
        validate_config(minimal_config(networks=["net", "rsnet"], datasets=["digits"]), load_schema(SCHEMA_PATH),
                        check_resources=False)
    message = str(info.value)
    assert "finetune.networks: 'rsnet' is not a key of networks; valid: net" in message
    assert "finetune.datasets: 'digits' is not a key of datasets; valid: dig" in message


def test_finetune_is_a_head_name_for_predict_and_no_config_head_may_take_it():
    schema = load_schema(SCHEMA_PATH)
    config = {**minimal_config(networks=["net"]), "predict": {"head": "finetune"}}
    assert validate_config(config, schema, check_resources=False)["predict"]["head"] == "finetune"
    with pytest.raises(ConfigError) as info:
        validate_config({**config, "predict": {"head": "hh"}}, schema, check_resources=False)
    assert "predict.head: 'hh' is not in heads; valid: h, finetune" in str(info.value)
    with pytest.raises(ConfigError, match="heads: 'finetune' is the name of fine-tuned networks"):
        validate_config({**minimal_config(), "heads": {"finetune": {"kind": "linear"}}}, schema,
                        check_resources=False)


# --- workflow -----------------------------------------------------------------------

TINY = {
    "networks": {"lite0": SPEC.to_dict()},
    "datasets": {"digits": {"source": "digits"}},
    "split": {"validation_fraction": 0.1, "test_fraction": 0.0, "seed": 0, "train_per_class": 10},
    "heads": {"linear": {"kind": "linear", "epochs": 20}},
    "extract": {"batch_size": 256, "threads": 1},
    "finetune": {"networks": ["lite0"], "epochs": 1, "batch_size": 25},
}


@pytest.mark.integration
def test_finetune_rule_puts_its_row_beside_feature_extraction(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, TINY)
    first = snakemake(workdir)
    assert first.jobs == {"prepare_dataset": 1, "extract_features_without_test": 1, "train_head": 1, "finetune": 1,
                          "compare": 1}
    table = pd.read_csv(workdir / "results/comparison.csv")
    rows = table.set_index("head")
    assert sorted(rows.index) == ["finetune", "linear"]
    for column in ("network", "dataset", "arch", "weights", "feature_dim", "n_train", "n_validation"):
        assert rows.loc["finetune", column] == rows.loc["linear", column], column
    assert rows.loc["finetune", "validation_accuracy"] > 0.2  # chance: 0.1
    assert rows.loc["finetune", "method"] == "finetune" and rows.loc["linear", "method"] == "features"
    assert pd.isna(rows.loc["finetune", "images_per_second"])  # extraction cost is the heads' alone
    assert rows["best"].sum() == 1  # one best classifier for the (network, dataset), either method
    metrics = json.loads((workdir / "results/finetune/lite0_digits.json").read_text())
    assert metrics["head"] == "finetune" and metrics["method"] == "finetune"
    assert len(metrics["curve"]) == 1 and metrics["config"]["backbone_lr"] == 0.0001
    # One run, in the repeats format of heads: per-image predictions for paired verdicts.
    assert [r["seed"] for r in metrics["repeats"]] == [0] and set(metrics["labels"]) == {"validation"}
    assert len(metrics["repeats"][0]["predictions"]["validation"]["predicted"]) == rows.loc["finetune", "n_validation"]
    assert rows.loc["finetune", "repeats"] == 1
    finetuned = torch.load(workdir / "results/finetune/lite0_digits.pt", weights_only=True)
    assert finetuned["spec"]["arch"] == SPEC.arch and len(finetuned["class_names"]) == 10
    assert (workdir / "results/benchmarks/finetune/lite0_digits.tsv").is_file()
    assert "epoch 1: train loss" in (workdir / "results/logs/finetune/lite0_digits.log").read_text()
    meta = finetuned["network_meta"]
    assert (meta["network"], meta["dataset"], meta["storage_fit"]) == ("lite0", "digits", "squash")
    assert meta["storage_size"] > 0 and torch.__version__.startswith(meta["version_torch"])
    assert metrics["meta"]["seed"] == 0 and metrics["meta"]["version_torch"] == meta["version_torch"]
    assert finetuned["meta"] == metrics["meta"] and metrics["meta"]["split_seed"] == meta["seed"] == 0

    # predict applies the fine-tuned network (head `finetune`) as evaluation did.
    images = load_prepared(workdir / "results/datasets/digits.npz").subset("train")[0][:3]
    (workdir / "new").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(workdir / f"new/train_{i}.png")
    run = snakemake(workdir, "predict", "export", "--config", "predict={images: new/, head: finetune}")
    assert run.jobs == {"predict": 1, "export_model": 1, "export": 1}
    assert load_exported(workdir / "results/export/lite0_digits_finetune.pt2")[1]["head"]["kind"] == "finetune"
    rows = pd.read_csv(workdir / "results/predictions/lite0_digits_finetune.csv", keep_default_na=False)
    backbone, _ = load_finetuned(workdir / "results/finetune/lite0_digits.pt")
    evaluated = Extractor(backbone, "cpu").run(images, 3)
    predicted = [finetuned["class_names"].index(c) for c in rows["predicted"].astype(str)]
    assert_same_class(np.array(predicted), evaluated, LOGIT_MARGIN, min_clear=0.5)  # predict runs on other threads
    assert (rows["error"] == "").all()

    # A fine-tuning setting retrains the fine-tuned network only: no extraction, no head;
    # the same from the command line, where Snakemake hands nested numbers over as strings.
    override = "finetune={networks: [lite0], epochs: 1, batch_size: 25, lr: 0.002}"
    assert snakemake(workdir, "-n", "--config", override).jobs == {"finetune": 1, "compare": 1}
    changed = copy.deepcopy(TINY)
    changed["finetune"]["lr"] = 0.002
    write_config(workdir, changed)
    assert snakemake(workdir, "-n").jobs == {"finetune": 1, "compare": 1}
