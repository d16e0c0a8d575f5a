"""timm models: pretrained weights through fetch_weights (the Hugging Face hub cache, offline),
pretrained tags, and the pooling of a transformer's tokens."""

import os

import pytest
import timm
import torch
from fixtures import HF_REVISION, write_hf_cache, write_timm_hub_cache

from transfer_lab.catalog import catalog
from transfer_lab.networks import fetch_weights, load_backbone
from transfer_lab.specs import NetworkSpec, check_network

VIT = "test_vit.r160_in1k"  # timm's tiny test ViT: 6 blocks, width 64, one class token


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, offline (HF_HUB_OFFLINE=1, HF_HUB_CACHE), as a login
    node without internet sees it; huggingface_hub reads both once, at import."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _pre_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def test_fetch_links_the_cached_file_and_extraction_loads_it(tmp_path, hub_cache):
    reference = write_timm_hub_cache(hub_cache, VIT, seed=3)
    spec = NetworkSpec(arch=f"timm:{VIT}")
    fetched = spec.fetched_weights
    assert (fetched.path, fetched.hf_hub_id) == (f"timm/{VIT}/model.safetensors", f"timm/{VIT}")
    weights = tmp_path / "resources" / "weights"
    path = fetch_weights(fetched, weights)
    assert path == weights / "timm" / VIT / "model.safetensors"
    blob = hub_cache / f"models--timm--{VIT}" / "snapshots" / HF_REVISION / "model.safetensors"
    assert os.path.samefile(path, blob)  # hard-linked from the cache: no second copy
    assert fetch_weights(fetched, weights) == path  # there already: nothing to do

    backbone = load_backbone(spec, checkpoint_dir=weights)
    assert backbone.feature_dim == 64
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(x), _pre_logits(reference, x))
    random = load_backbone(NetworkSpec(arch=f"timm:{VIT}", weights="random"))
    with torch.inference_mode():
        assert not torch.allclose(random.model(x), backbone.model(x))


def test_the_same_weights_by_tag_in_the_arch_or_as_weights(tmp_path, hub_cache):
    write_timm_hub_cache(hub_cache, VIT)
    tagged, by_weights, default = (NetworkSpec(arch=f"timm:{VIT}"), NetworkSpec(arch="timm:test_vit", weights="r160_in1k"),
                                   NetworkSpec(arch="timm:test_vit"))
    for spec in (tagged, by_weights, default):
        check_network("n", spec)
    assert tagged.fetched_weights == by_weights.fetched_weights == default.fetched_weights  # r160_in1k: its only tag
    fetch_weights(tagged.fetched_weights, tmp_path)
    x = torch.randn(1, 3, 48, 48)
    with torch.inference_mode():
        a, b = (load_backbone(s, tmp_path).model(x) for s in (
            NetworkSpec(arch=f"timm:{VIT}", input_size=48), NetworkSpec(arch="timm:test_vit", weights="r160_in1k", input_size=48)))
    torch.testing.assert_close(a, b)


def test_across_file_systems_the_cached_file_is_copied(tmp_path, hub_cache, monkeypatch):
    import errno

    write_timm_hub_cache(hub_cache, VIT)

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    path = fetch_weights(NetworkSpec(arch=f"timm:{VIT}").fetched_weights, tmp_path)
    blob = hub_cache / f"models--timm--{VIT}" / "snapshots" / HF_REVISION / "model.safetensors"
    assert not os.path.samefile(path, blob) and path.read_bytes() == blob.read_bytes()


def test_fetch_weights_finds_the_cache_under_hf_home(tmp_path):
    """Without HF_HUB_CACHE, huggingface_hub's cache is $HF_HOME/hub (read at its import: a fresh process)."""
    import subprocess
    import sys

    write_timm_hub_cache(tmp_path / "home" / "hub", VIT)
    code = ("from transfer_lab.networks import fetch_weights; from transfer_lab.specs import NetworkSpec; "
            f"print(fetch_weights(NetworkSpec(arch='timm:{VIT}').fetched_weights, 'weights'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"weights/timm/{VIT}/model.safetensors"
    assert os.path.samefile(tmp_path / out.stdout.strip(),
                            tmp_path / "home/hub" / f"models--timm--{VIT}/snapshots/{HF_REVISION}/model.safetensors")


def test_a_repository_with_only_pytorch_model_bin_is_fetched_as_safetensors(tmp_path, hub_cache):
    """timm's fallback when a repository has no model.safetensors; the file keeps the name the DAG knows."""
    reference = write_timm_hub_cache(hub_cache, VIT, seed=5, safetensors=False)
    spec = NetworkSpec(arch=f"timm:{VIT}")
    path = fetch_weights(spec.fetched_weights, tmp_path)
    assert path.name == "model.safetensors" and not path.with_name("pytorch_model.bin").exists()
    x = torch.randn(1, 3, 160, 160)
    with torch.inference_mode():
        torch.testing.assert_close(load_backbone(spec, tmp_path).model(x), _pre_logits(reference, x))


def test_offline_and_not_cached_names_the_file_and_where_to_put_it(tmp_path, hub_cache):
    spec = NetworkSpec(arch="timm:vit_small_patch14_dinov2.lvd142m")
    with pytest.raises(RuntimeError) as err:
        fetch_weights(spec.fetched_weights, tmp_path / "weights")
    message = str(err.value)
    assert "model.safetensors of the Hugging Face hub repository timm/vit_small_patch14_dinov2.lvd142m" in message
    assert str(tmp_path / "weights/timm/vit_small_patch14_dinov2.lvd142m/model.safetensors") in message
    assert str(hub_cache / "models--timm--vit_small_patch14_dinov2.lvd142m/snapshots/<revision>/model.safetensors") in message
    assert not (tmp_path / "weights").exists()  # nothing half-made


def test_a_job_never_goes_online_for_timm_weights(tmp_path, hub_cache):
    """Without the fetched file, loading fails naming it and how to fetch it (even with the file in the hub cache)."""
    write_timm_hub_cache(hub_cache, VIT)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/timm/{VIT}/model.safetensors: the pretrained weights .* "
                                                rf"`snakemake resources/weights/timm/{VIT}/model.safetensors`"):
        load_backbone(NetworkSpec(arch=f"timm:{VIT}"), checkpoint_dir=tmp_path)


def test_timm_weights_without_a_hub_repository_are_fetched_by_url():
    spec = NetworkSpec(arch="timm:gcvit_xtiny")  # in1k, a GitHub release URL only
    check_network("n", spec)
    fetched = spec.fetched_weights
    assert fetched.hf_hub_id is None and fetched.url.endswith("/gcvit_xtiny_224_nvidia-274b92b7.pth")
    assert fetched.path == "checkpoints/gcvit_xtiny_224_nvidia-274b92b7.pth"  # where fetch_checkpoint puts it


def test_a_url_checkpoint_of_timm_loads_through_timm_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The URL path of fetch_weights (the torch hub cache), for a timm model; loaded by timm's own loader."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = "https://example.invalid/releases/test_vit_r160-0123abcd.pth"
    monkeypatch.setitem(catalog().timm_sources, VIT, {"url": url})  # as timm's config of gcvit_xtiny.in1k
    spec = NetworkSpec(arch="timm:test_vit", weights="r160_in1k", input_size=32)
    torch.manual_seed(9)
    reference = timm.create_model("test_vit.r160_in1k", img_size=32).eval()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "test_vit_r160-0123abcd.pth")
    path = fetch_weights(spec.fetched_weights, tmp_path / "weights")
    assert path == tmp_path / "weights" / "checkpoints" / "test_vit_r160-0123abcd.pth"
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(load_backbone(spec, tmp_path / "weights").model(x), _pre_logits(reference, x))


def test_unknown_names_tags_and_contradictions_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"networks.n.arch: unknown timm model 'vit_smal_patch14_dinov2.lvd142m'; "
                                         r"did you mean: timm:vit_small_patch14_dinov2"):
        check_network("n", NetworkSpec(arch="timm:vit_smal_patch14_dinov2.lvd142m"))
    with pytest.raises(ValueError, match=r"networks.n.arch: timm:convnext_tiny has no pretrained tag 'fb_in21k'; "
                                         r"valid: .*timm:convnext_tiny.fb_in22k\b"):
        check_network("n", NetworkSpec(arch="timm:convnext_tiny.fb_in21k"))
    with pytest.raises(ValueError, match=r"networks.n.weights: 'fb_in21k' is not a pretrained tag of timm:convnext_tiny "
                                         r"\(did you mean .*fb_in22k.*valid: DEFAULT \(= in12k_ft_in1k\), .*fb_in22k, "):
        check_network("n", NetworkSpec(arch="timm:convnext_tiny", weights="fb_in21k"))
    with pytest.raises(ValueError, match=r"networks.n.weights: tag 'fb_in1k' contradicts the tag in arch "
                                         r"'timm:convnext_tiny.fb_in22k'"):
        check_network("n", NetworkSpec(arch="timm:convnext_tiny.fb_in22k", weights="fb_in1k"))
    with pytest.raises(ValueError, match=r"networks.n.weights: timm has no pretrained weights for timm:beit3_giant_patch14_224"):
        check_network("n", NetworkSpec(arch="timm:beit3_giant_patch14_224"))
    check_network("n", NetworkSpec(arch="timm:beit3_giant_patch14_224", weights="random"))


@pytest.mark.parametrize("arch, mean, crop, resize", [
    ("timm:vit_base_patch16_clip_224.openai", (0.48145466, 0.4578275, 0.40821073), 224, 248),  # crop_pct 0.9
    ("timm:vit_small_patch14_dinov2.lvd142m", (0.485, 0.456, 0.406), 518, 518),  # crop_pct 1.0
    ("timm:convnext_tiny.fb_in22k", (0.485, 0.456, 0.406), 224, 256),
])
def test_preprocessing_is_the_pretrained_tags(arch, mean, crop, resize):
    """The tag's pretrained config decides mean, std and crop, for its weights and for random ones alike."""
    p = load_backbone(NetworkSpec(arch=arch, weights="random")).preprocess
    assert p.mean == pytest.approx(mean) and (p.crop, p.resize, p.interpolation) == (crop, resize, "bicubic")


def test_a_transformer_runs_at_the_input_size_asked():
    backbone = load_backbone(NetworkSpec(arch=f"timm:{VIT}", weights="random", input_size=48))
    assert (backbone.preprocess.crop, backbone.preprocess.resize) == (48, 50)  # crop_pct 0.95
    with torch.inference_mode():
        assert backbone.model(torch.randn(2, 3, 48, 48)).shape == (2, 64)


def _reference(backbone, name: str, size: int) -> torch.nn.Module:
    """A second copy of the model in ``backbone`` (its weights, by state dict), built by hand."""
    model = timm.create_model(name, img_size=size, num_classes=0).eval()
    model.load_state_dict(backbone.model.model.state_dict())
    return model


@pytest.mark.parametrize("pool", ["cls", "mean", "cls+mean"])
def test_pooled_tokens_by_hand(pool):
    backbone = load_backbone(NetworkSpec(arch=f"timm:{VIT}", weights="random", input_size=32, pool=pool))
    model = _reference(backbone, VIT, 32)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        tokens = model.forward_features(x)  # (3, 1 + 4 patches, 64), final norm applied
        cls, mean = tokens[:, 0], tokens[:, 1:].mean(dim=1)
        expected = {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[pool]
        got = backbone.model(x)
        own = _pre_logits(model, x)
    assert backbone.feature_dim == expected.shape[1] == {"cls": 64, "mean": 64, "cls+mean": 128}[pool]
    torch.testing.assert_close(got, expected)
    if pool == "cls":  # the model's own pooling (global_pool 'token') is the class token
        torch.testing.assert_close(got, own)


def test_mean_leaves_out_register_tokens_and_keeps_the_head_norm():
    """test_vit2: one register token and no class token, average pooling with fc_norm after it."""
    name = "test_vit2.r160_in1k"
    assert "test_vit2" in catalog().timm_tokens
    backbone = load_backbone(NetworkSpec(arch=f"timm:{name}", weights="random", input_size=32, pool="mean"))
    model = _reference(backbone, name, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        tokens = model.forward_features(x)
        assert model.num_prefix_tokens == 1 and tokens.shape[1] == 5
        torch.testing.assert_close(backbone.model(x), model.fc_norm(tokens[:, 1:].mean(dim=1)))
        torch.testing.assert_close(backbone.model(x), _pre_logits(model, x))  # its own pooling
    with pytest.raises(ValueError, match="has no class token .*use pool: mean"):
        load_backbone(NetworkSpec(arch=f"timm:{name}", weights="random", input_size=32, pool="cls"))


@pytest.mark.parametrize("pool, block", [("cls+mean", 2), (None, 5)])
def test_a_blocks_tokens_pooled_by_hand(pool, block):
    """layer: blocks.<k> takes that block's tokens, with the final norm (DINOv2's protocol);
    pool null: the model's own pooling (test_vit: the class token)."""
    backbone = load_backbone(NetworkSpec(arch=f"timm:{VIT}", weights="random", input_size=32, layer=f"blocks.{block}",
                                         pool=pool))
    model = _reference(backbone, VIT, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for blk in model.blocks[:block + 1]:
            h = blk(h)
        h = model.norm(h)
        expected = torch.cat([h[:, 0], h[:, 1:].mean(dim=1)], dim=1) if pool else h[:, 0]
        torch.testing.assert_close(backbone.model(x), expected)
    assert backbone.feature_dim == expected.shape[1]
    if block == 5:  # the last block: the same as no layer
        with torch.inference_mode():
            torch.testing.assert_close(backbone.model(x), _pre_logits(model, x))


def test_a_block_that_does_not_exist_or_pooling_a_block_cannot_take():
    with pytest.raises(ValueError, match=r"no layer 'blocks.6'; its blocks are blocks.0 to blocks.5"):
        load_backbone(NetworkSpec(arch=f"timm:{VIT}", weights="random", input_size=32, layer="blocks.6", pool="cls"))
    with pytest.raises(ValueError, match=r"pools its tokens as 'map'.*set the network's pool"):
        load_backbone(NetworkSpec(arch="timm:test_vit3.r160_in1k", weights="random", input_size=32, layer="blocks.1"))


def test_pool_is_refused_where_features_are_not_tokens():
    with pytest.raises(ValueError, match=r"networks.lite0.pool: timm:tf_efficientnet_lite0 computes feature maps, "
                                         r"not tokens"):
        check_network("lite0", NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", pool="cls"))
    with pytest.raises(ValueError, match=r"networks.r.pool: resnet18 computes feature maps"):
        check_network("r", NetworkSpec(arch="resnet18", weights="random", pool="mean"))
    with pytest.raises(ValueError, match=r"networks.v.layer: with pool, layer names a transformer block, blocks.<k>"):
        check_network("v", NetworkSpec(arch=f"timm:{VIT}", weights="random", layer="norm", pool="mean"))
    check_network("v", NetworkSpec(arch="timm:vit_small_patch14_dinov2.lvd142m", pool="cls+mean", layer="blocks.9"))


def test_a_spec_written_before_pool_existed_still_loads():
    old = '{"arch": "timm:tf_efficientnet_lite0", "input_size": 96, "layer": null, "weights": "bundled"}'
    spec = NetworkSpec.from_json(old)
    assert spec.pool is None and spec == NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=96)
    assert NetworkSpec.from_json(NetworkSpec(arch=f"timm:{VIT}", pool="cls+mean").to_json()).pool == "cls+mean"


def test_the_random_init_is_seeded_for_token_pools_too():
    spec = NetworkSpec(arch=f"timm:{VIT}", weights="random", input_size=32, pool="mean")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(load_backbone(spec).model(x), load_backbone(spec).model(x))


def test_hub_cache_fixture_is_what_hf_hub_download_reads(hub_cache):
    """The fixture's layout is the hub's: huggingface_hub itself finds the file offline."""
    from huggingface_hub import hf_hub_download

    snapshot = write_hf_cache(hub_cache, "someone/model", {"config.json": b"{}"})
    assert hf_hub_download("someone/model", "config.json") == str(snapshot / "config.json")


def test_a_layer_of_a_tf_ported_timm_model_is_traced_with_timms_helpers():
    """`layer:` on timm's TF ports (their "same" padding branches on the input size, which
    torchvision's tracer alone cannot follow): a module's name stands for its last node, and
    the pooled output is that of the model's own first blocks."""
    import timm

    spec = NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=64, layer="blocks.5")
    backbone = load_backbone(spec)
    assert backbone.feature_dim == 192
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    missing, _ = reference.load_state_dict(backbone.model.extractor.state_dict(), strict=False)
    assert not any(key.startswith(("conv_stem", "bn1", "blocks.0", "blocks.5")) for key in missing)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = reference.blocks[:6](reference.bn1(reference.conv_stem(x))).mean(dim=(2, 3))
        torch.testing.assert_close(backbone.model(x), expected)
    with pytest.raises(ValueError, match="no layer 'blocks.9'"):
        load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=64, layer="blocks.9"))
