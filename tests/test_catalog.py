"""The catalog of architecture and weights names: read once per library version, then cached."""

import json

import pytest

from transfer_lab import catalog
from transfer_lab.specs import NetworkSpec, check_network


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and no catalog remembered by this process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    catalog.catalog.cache_clear()
    yield tmp_path / "transfer-lab"
    catalog.catalog.cache_clear()


def test_the_first_call_reads_the_libraries_and_later_ones_the_cache_file(cache, monkeypatch):
    first = catalog.catalog()
    path = catalog.cache_path(catalog.library_versions())
    assert path.parent == cache and path.is_file()
    assert json.loads(path.read_text())["versions"] == catalog.library_versions()
    catalog.catalog.cache_clear()

    def fail():
        raise AssertionError("read the libraries although the cache file is there")

    monkeypatch.setattr(catalog, "read_libraries", fail)
    assert catalog.catalog() == first


def test_a_damaged_cache_file_is_read_again_from_the_libraries(cache):
    path = catalog.cache_path(catalog.library_versions())
    path.parent.mkdir(parents=True)
    path.write_text('{"versions": {"torch": "0.1"}, "torchvision": ')
    assert "resnet50" in catalog.catalog().torchvision
    assert json.loads(path.read_text())["versions"] == catalog.library_versions()


def test_an_unwritable_cache_folder_costs_only_the_slow_read(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    catalog.catalog.cache_clear()
    try:
        assert "resnet50" in catalog.catalog().torchvision
    finally:
        catalog.catalog.cache_clear()


def test_what_the_catalog_knows(cache):
    known = catalog.catalog()
    resnet50 = known.torchvision["resnet50"]
    assert resnet50.default == "IMAGENET1K_V2" and set(resnet50.urls) == {"IMAGENET1K_V1", "IMAGENET1K_V2"}
    assert resnet50.urls["IMAGENET1K_V1"].endswith("/resnet50-0676ba61.pth")
    # The smallest inputs come from the weights' metadata (they used to be a hand-kept table).
    assert (known.torchvision["alexnet"].min_size, known.torchvision["inception_v3"].min_size) == (63, 75)
    assert "tf_efficientnet_lite0" in known.timm and "vit_small_patch14_dinov2" in known.timm
    # timm: each architecture's pretrained tags, its default first, and where each file is.
    assert known.timm["vit_small_patch14_dinov2"][0] == "lvd142m" and "fb_in22k" in known.timm["convnext_tiny"]
    assert known.timm["beit3_giant_patch14_224"] == ()  # no pretrained weights
    assert known.timm_source("vit_base_patch16_clip_224", "openai") == {"hf_hub_id": "timm/vit_base_patch16_clip_224.openai"}
    assert known.timm_source("gcvit_xtiny", "in1k")["url"].endswith("/gcvit_xtiny_224_nvidia-274b92b7.pth")
    assert known.timm_source("cspnext_s", "rsb_a1_in1k") == {"hf_hub_id": "munehiro-k/cspnext_s.rsb_a1_in1k"}
    # Transformers (their features are tokens), not convolutional networks.
    assert {"vit_small_patch14_dinov2", "vit_base_patch16_clip_224", "deit_small_patch16_224", "eva02_small_patch14_224",
            "beit_base_patch16_224"} <= known.timm_tokens
    assert not {"tf_efficientnet_lite0", "convnext_tiny", "resnet50", "qwen3_vit_88m"} & known.timm_tokens
    # Each eval transform's resize and crop (torchvision), input side and crop_pct (timm's configs).
    assert resnet50.sizes == {"IMAGENET1K_V1": (256, 224), "IMAGENET1K_V2": (232, 224)}
    assert known.timm_size("vit_small_patch14_dinov2", "lvd142m") == (518, 1.0)
    assert known.timm_size("convnext_tiny", None) == known.timm_size("convnext_tiny", "in12k_ft_in1k") == (224, 0.95)
    assert known.timm_size("tf_efficientnet_lite0", None) == (224, 0.875)  # timm's defaults


def test_the_catalog_file_stays_small(cache):
    """It is read by every parse; timm's sources are stored only where they differ from its rule."""
    catalog.catalog()
    assert catalog.cache_path(catalog.library_versions()).stat().st_size < 150_000


def test_specs_resolve_weights_through_the_catalog(cache):
    assert NetworkSpec(arch="resnet50").fetched_weights.path == "checkpoints/resnet50-11ad3fa6.pth"  # IMAGENET1K_V2
    assert NetworkSpec(arch="resnet50", weights="IMAGENET1K_V1").fetched_weights.path == "checkpoints/resnet50-0676ba61.pth"
    assert NetworkSpec(arch="timm:convnext_tiny").fetched_weights.path == "timm/convnext_tiny.in12k_ft_in1k/model.safetensors"
    check_network("dino", NetworkSpec(arch="timm:vit_small_patch14_dinov2.lvd142m", weights="random"))  # a tag
    with pytest.raises(ValueError, match=r"networks.n.arch: unknown timm model 'vit_smal_patch16_224'; did you "
                                         r"mean: timm:vit_small_patch16_224"):
        check_network("n", NetworkSpec(arch="timm:vit_smal_patch16_224", weights="random"))
    with pytest.raises(ValueError, match=r"networks.n.weights: 'IMAGENET9K' is not a weights tag of resnet50; "
                                         r"valid: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2, random"):
        check_network("n", NetworkSpec(arch="resnet50", weights="IMAGENET9K"))
