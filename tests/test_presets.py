"""The presets under config/ against the published references they are meant to reproduce.

A reference only reaches a row whose protocol is spelled exactly as in
src/transfer_lab/references.py (arch with its pretrained tag, weights, source, input size,
pooling, head, training-set size), so a preset that names the same network and dataset
slightly differently would silently lose its numbers. This reads the protocol each preset
row will record without building any network (the input side from the weights' metadata).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from transfer_lab.references import PENULTIMATE, REFERENCES, Protocol, Reference

ROOT = Path(__file__).parents[1]
SUITE = ROOT / "config/transfer-suite.yaml"


def default_input_size(arch: str, weights: str) -> int:
    """The side the network sees when the config leaves input_size unset: its weights' crop."""
    if arch.startswith("timm:"):
        import timm

        return int(timm.models.get_pretrained_cfg(arch.removeprefix("timm:")).input_size[-1])
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    return int((enum.DEFAULT if weights == "DEFAULT" else enum[weights]).transforms().crop_size[0])


def preset_rows(config: dict) -> list[tuple[str, str, Protocol]]:
    """(network, dataset, protocol) of every feature-extraction row the preset makes."""
    train_per_class = (config.get("split") or {}).get("train_per_class")
    rows = []
    for (net, n), (data, d), head in itertools.product(config["networks"].items(), config["datasets"].items(),
                                                       config["heads"].values()):
        weights = n.get("weights", "DEFAULT")
        rows.append((net, data, Protocol(
            arch=n["arch"], source=d["source"], head_kind=head["kind"],
            train_per_class=(d.get("split") or {}).get("train_per_class", train_per_class),
            weights=weights, input_size=n.get("input_size") or default_input_size(n["arch"], weights),
            layer=n.get("layer") or PENULTIMATE, pool=n.get("pool"),
        )))
    return rows


def base_arch(arch: str) -> str:
    """'timm:vit_base_patch16_clip_224.openai' -> 'vit_base_patch16_clip_224'."""
    return arch.removeprefix("timm:").split(".", 1)[0].lower()


def base_source(source: str) -> str:
    """'torchvision:CIFAR100' -> 'cifar100'."""
    return source.removeprefix("torchvision:").lower()


def covers(ref: Reference, row: Protocol) -> bool:
    """The row is of the reference's network and dataset, however either is spelled."""
    return (base_arch(ref.arch), base_source(ref.source)) == (base_arch(row.arch), base_source(row.source))


def mismatches(config: dict, references=REFERENCES) -> tuple[list[str], int]:
    """Rows of ``config`` that a full-training-set reference covers but does not reach, each
    with what differs, and how many covered rows there are."""
    problems, covered = [], 0
    for ref in references:
        if ref.train_per_class is not None:
            continue  # the lab's 100/class numbers: not a full-training-set preset's protocol
        for net, data, row in preset_rows(config):
            if not covers(ref, row):
                continue
            covered += 1
            differs = [f"{key} {got!r}, reference {want!r}" for key, got, want in (
                ("arch", row.arch, ref.arch), ("source", row.source, ref.source))
                if got != want]
            differs += [f"weights {row.weights!r}, reference {ref.weights}"] * (
                ref.weights is not None and row.weights not in ref.weights)
            differs += [f"input size {row.input_size}, reference {ref.input_size}"] * (
                ref.input_size is not None and row.input_size != ref.input_size)
            differs += [f"pool {row.pool!r}, reference {ref.pool!r}"] * (row.pool != ref.pool)
            if differs or not ref.matches(row):
                problems.append(f"{net} x {data}: " + ("; ".join(differs) or f"{row} != {ref}"))
    return problems, covered


@pytest.fixture(scope="module")
def suite_config():
    return yaml.safe_load(SUITE.read_text())


@pytest.fixture(scope="module")
def suite(suite_config):
    return preset_rows(suite_config)


def test_every_reference_the_suite_covers_reaches_its_rows(suite_config):
    """Each (network, dataset) of the suite that references.py has a number for follows that
    number's protocol exactly: arch and tag, weights, source, input size, pooling, head, full
    training set."""
    problems, covered = mismatches(suite_config)
    assert problems == []
    assert covered, "the suite should cover at least one published reference (ResNet-50 on CIFAR-10)"


def test_a_near_miss_spelling_is_caught(suite_config):
    ref = Reference("timm:vit_base_patch16_clip_224.openai", "torchvision:Flowers102", ("logreg",), None, "test",
                    0.9, 0.9, "a paper", metric="balanced_accuracy", weights=("DEFAULT",), input_size=224)
    assert mismatches(suite_config, (ref,)) == ([], 1)
    config = yaml.safe_load(SUITE.read_text())
    config["datasets"]["flowers"]["source"] = "torchvision:flowers102"
    config["networks"]["clip_b16"]["input_size"] = 96
    problems, _ = mismatches(config, (ref,))
    assert problems == ["clip_b16 x flowers: source 'torchvision:flowers102', reference 'torchvision:Flowers102'; "
                        "input size 96, reference 224"]


def test_the_suite_follows_the_linear_probe_protocol(suite_config, suite):
    config = suite_config
    assert {row.head_kind for _, _, row in suite} == {"logreg"}
    assert {row.train_per_class for _, _, row in suite} == {None}
    assert all(d.get("download") is True for d in config["datasets"].values())
    sources = {d["source"] for d in config["datasets"].values()}
    assert "cifar10" in sources and all(s == "cifar10" or s.startswith("torchvision:") for s in sources)
    # The weights' own resolution except DINOv2 (224 instead of 518, as its comment says).
    for net, entry in config["networks"].items():
        if net != "dinov2_small":
            assert entry.get("input_size") is None, net
    assert config["networks"]["dinov2_small"]["pool"] == "cls+mean"
    # Photos stored at the networks' largest resize (ResNet-50 IMAGENET1K_V1's 256), not a size of their own.
    from transfer_lab.specs import NetworkSpec, largest_resize

    assert largest_resize(NetworkSpec.from_config(entry) for entry in config["networks"].values()) == 256
    assert all("image_size" not in entry for entry in config["datasets"].values())
    assert "pool" not in config["networks"]["clip_b16"]  # CLIP's probes: the model's own (class token)


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_every_preset_validates(preset):
    """A preset is what people copy: it validates against the schema, archs, pretrained tags,
    pooling and sources checked as a run checks them."""
    from transfer_lab.config import load_schema, validate_config

    config = yaml.safe_load((ROOT / "config" / preset).read_text())
    validate_config(config, load_schema(ROOT / "workflow/schemas/config.schema.yaml"))


def test_the_suite_plans_every_download_and_extraction(tmp_path):
    """Its dry run, before any file exists: each dataset and each network's weights fetched
    once (local rules), every (network, dataset, split) extracted, one logreg head each."""
    from conftest import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path / "suite")
    run = snakemake(workdir, "-n", "--configfile", str(SUITE))
    config = yaml.safe_load(SUITE.read_text())
    networks, datasets = len(config["networks"]), len(config["datasets"])
    counts = {line.split()[0]: int(line.split()[1]) for line in run.output.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["fetch_dataset"] == datasets and counts["fetch_weights"] == networks
    assert counts["prepare_dataset"] == datasets
    assert counts["extract_features"] == networks * datasets
    assert counts["train_head"] == networks * datasets
