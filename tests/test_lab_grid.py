"""The lab's grid (config/udacity.yaml) end to end on fixture data in the published formats.

The four torchvision networks load their IMAGENET1K_V1 checkpoints the way a user's do:
fetch_weights finds them in the torch hub cache (seeded here with randomly initialised
weights under the official file names) and copies them into resources/weights/.
"""

import shutil

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, copy_workflow, snakemake
from fixtures import write_cifar10, write_traffic_pickle
from job_imports import assert_job_imports

from transfer_lab.bottleneck import read_bottleneck

pytestmark = pytest.mark.integration

NETWORKS = {"vgg": 512, "inception": 2048, "resnet": 2048, "alexnet": 4096}
TINY_INPUT = {"vgg": 32, "inception": 75, "resnet": 32, "alexnet": 63}


def seed_hub_cache(torch_home):
    """Checkpoints under torchvision's official names, as a download would leave them."""
    from torchvision.models import get_model, get_model_weights

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for arch in ("vgg16", "inception_v3", "resnet50", "alexnet"):
        kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
        torch.manual_seed(0)
        state = get_model(arch, weights=None, **kwargs).state_dict()
        torch.save(state, folder / get_model_weights(arch).IMAGENET1K_V1.url.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("lab"))
    shutil.copytree(REPO / "config", workdir / "config")
    cifar = write_cifar10(tmp_path_factory.mktemp("cifar"), per_class=4, tarball=True)
    tarball = cifar if cifar.is_file() else next(cifar.rglob("cifar-10-python.tar.gz"))
    (workdir / "resources/raw/cifar10").mkdir(parents=True)
    shutil.copy2(tarball, workdir / "resources/raw/cifar10/cifar-10-python.tar.gz")
    traffic = write_traffic_pickle(tmp_path_factory.mktemp("traffic"), n_classes=3, per_class=12)
    shutil.copytree(traffic, workdir / "resources/raw/traffic-signs-data")
    torch_home = tmp_path_factory.mktemp("torch")
    seed_hub_cache(torch_home)
    return workdir, torch_home


def test_udacity_preset_plans_the_full_grid_before_the_data_is_there(tmp_path):
    workdir = copy_workflow(tmp_path / "plan")
    shutil.copytree(REPO / "config", workdir / "config")
    run = snakemake(workdir, "-n", "--configfile", "config/udacity.yaml")
    assert run.jobs == {
        "fetch_weights": 4, "fetch_dataset": 1, "prepare_dataset": 2, "extract_features": 4 * 2,
        "train_head": 4 * 2, "compare": 1,
    }, run.output


def test_udacity_grid_runs_end_to_end_with_tiny_inputs(lab, tmp_path):
    workdir, torch_home = lab
    config = yaml.safe_load((workdir / "config/udacity.yaml").read_text())
    for name, size in TINY_INPUT.items():
        config["networks"][name]["input_size"] = size
    config["heads"]["linear"]["epochs"] = 5
    (workdir / "config/tiny.yaml").write_text(yaml.safe_dump(config))
    imports = tmp_path / "imports"  # not beside workdir: other modules' folders share that parent
    imports.mkdir()
    run = snakemake(workdir, "--configfile", "config/tiny.yaml", env={"TORCH_HOME": str(torch_home)},
                    hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert run.jobs["fetch_weights"] == 4 and run.jobs["extract_features"] == 8, run.output
    # torchvision networks: fetching their checkpoints and extracting import no timm.
    assert_job_imports(imports, __file__)
    checkpoints = sorted(p.name for p in (workdir / "resources/weights/checkpoints").iterdir())
    assert checkpoints == sorted([
        "alexnet-owt-7be5be79.pth", "inception_v3_google-0cc3c7bd.pth",
        "resnet50-0676ba61.pth", "vgg16-397923af.pth",
    ])
    for network, dim in NETWORKS.items():
        for dataset in ("cifar10", "traffic"):
            for split in ("train", "validation", "test"):
                path = workdir / f"results/bottleneck/{network}_{dataset}_bottleneck_features_{split}.p"
                b = read_bottleneck(path)
                assert b.features.shape[1] == dim, (network, b.features.shape)
                assert b.meta["weights"] == "IMAGENET1K_V1"
    cifar_names = read_bottleneck(workdir / "results/bottleneck/resnet_cifar10_bottleneck_features_train.p").class_names
    assert cifar_names[:3] == ["airplane", "automobile", "bird"]
    table = pd.read_csv(workdir / "results/comparison.csv")
    assert len(table) == 8 and set(table["network"]) == set(NETWORKS)
