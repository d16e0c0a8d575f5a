"""The extension point: a new dataset format is one new module in transfer_lab/sources/."""

import fixtures
import numpy as np
import pandas as pd
import pytest
from conftest import copy_workflow, snakemake, write_config

from transfer_lab import sources
from transfer_lab.datasets import load_prepared

pytestmark = pytest.mark.integration

# A whole source: one .npy array of images per class. Nothing else in the copy changes.
PLUGIN = '''"""One .npy array of images per class: root/<class>.npy, each uint8 (N, H, W, 3)."""

from pathlib import Path

import numpy as np

from transfer_lab.sources import storage_size
from transfer_lab.sources.base import DatasetError, RawDataset, Source, resize_all


def read(spec):
    files = sorted(Path(spec.root).glob("*.npy"))
    images, labels = [], []
    for label, path in enumerate(files):
        x = np.load(path, allow_pickle=False)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise DatasetError(f"{path}: expected uint8 (N, H, W, 3) images, got {x.dtype} {x.shape}")
        images.append(resize_all(x, storage_size(spec)))
        labels.append(np.full(len(x), label, dtype=np.int64))
    return RawDataset(np.concatenate(images), np.concatenate(labels), [p.stem for p in files])


SOURCE = Source(
    name="npy-classes",
    title="one .npy array of images per class",
    read=read,
    image_size=16,
    expects="<class>.npy files, each uint8 (N, H, W, 3) images",
    check=lambda root: None if any(root.glob("*.npy")) else "has no .npy files",
)
'''


def test_a_new_source_is_one_new_file(tmp_path):
    workdir = copy_workflow(tmp_path / "wd")
    (workdir / "src/transfer_lab/sources/npy_classes.py").write_text(PLUGIN)
    root = tmp_path / "arrays"
    root.mkdir()
    rng = np.random.default_rng(0)
    for label, name in enumerate(("amber", "blue", "cyan")):
        np.save(root / f"{name}.npy", np.stack([fixtures.class_image(label, 20, 24, rng) for _ in range(12)]))
    config = {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {"arrays": {"source": "npy", "root": str(root)}},
        "split": {"validation_fraction": 0.25, "test_fraction": 0.25},
        "heads": {"linear": {"kind": "linear", "epochs": 3}},
    }
    write_config(workdir, config)
    refused = snakemake(workdir, "-n", check=False)
    assert refused.returncode != 0
    choices = ", ".join(sorted([*sources.names(), "npy-classes"]))
    assert f"datasets.arrays.source: 'npy' is not valid; valid choices: {choices}" in refused.output, refused.output

    config["datasets"]["arrays"]["source"] = "npy-classes"
    write_config(workdir, config)
    run = snakemake(workdir)
    assert run.jobs == {"prepare_dataset": 1, "extract_features": 1, "train_head": 1, "compare": 1}, run.output
    prepared = load_prepared(workdir / "results/datasets/arrays.npz")
    assert prepared.images.shape == (36, 16, 16, 3) and prepared.class_names == ["amber", "blue", "cyan"]
    assert (prepared.meta["source"], prepared.meta["storage_size"]) == ("npy-classes", 16)
    table = pd.read_csv(workdir / "results/comparison.csv")
    assert list(table["dataset"]) == ["arrays"] and list(table["head"]) == ["linear"]
    assert table.loc[0, ["n_train", "n_validation", "n_test"]].sum() == 36
