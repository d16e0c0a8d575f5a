"""The network registry: the bundled weights' mapping, penultimate layers, preprocessing, weight sources."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from transfer_lab.networks import (
    bundled_efficientnet_lite0_state_dict,
    load_backbone,
)


@pytest.fixture(scope="module")
def lite0_classifier():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(bundled_efficientnet_lite0_state_dict(model))
    return model.eval()


@pytest.mark.parametrize("image, imagenet_class", [("flower.jpg", 985), ("china.jpg", 698)])
def test_bundled_weights_map_onto_timm(lite0_classifier, image, imagenet_class):
    """DESIGN.md's check: with timm's own eval transform, a correct mapping ranks
    daisy (985) first for flower.jpg and palace (698) first for china.jpg."""
    cfg = timm.data.resolve_data_config({}, model=lite0_classifier)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**cfg)
    x = transform(Image.fromarray(load_sample_image(image))).unsqueeze(0)
    with torch.inference_mode():
        logits = lite0_classifier(x)
    assert logits.argmax(1).item() == imagenet_class


def test_bundled_backbone_gives_the_classifiers_pre_logits(lite0_classifier):
    backbone = load_backbone({"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 64})
    assert backbone.feature_dim == 1280
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = lite0_classifier.forward_head(lite0_classifier.forward_features(x), pre_logits=True)
        got = backbone.model(x)
    torch.testing.assert_close(got, expected)


def test_timm_preprocessing_from_the_weights_metadata():
    p = load_backbone({"arch": "timm:tf_efficientnet_lite0", "weights": "random"}).preprocess
    assert (p.crop, p.resize, p.interpolation) == (224, 256, "bicubic")  # crop_pct 0.875
    assert p.mean == (0.5, 0.5, 0.5)
    small = load_backbone({"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 96}).preprocess
    assert (small.crop, small.resize) == (96, 109)


def test_random_weights_are_reproducible():
    spec = {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}
    a, b = load_backbone(spec).model, load_backbone(spec).model
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name


@pytest.mark.parametrize(
    "arch, dim, crop, resize, interpolation",
    [
        ("resnet18", 512, 224, 256, "bilinear"),
        ("alexnet", 4096, 224, 256, "bilinear"),  # fc7, as in the AlexNet lab
        ("inception_v3", 2048, 299, 342, "bilinear"),
    ],
)
def test_torchvision_penultimate_layer_and_preprocessing(arch, dim, crop, resize, interpolation):
    backbone = load_backbone({"arch": arch, "weights": "random"})
    p = backbone.preprocess
    assert backbone.feature_dim == dim
    assert (p.crop, p.resize, p.interpolation) == (crop, resize, interpolation)
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.inference_mode():
        out = backbone.model(torch.randn(2, 3, 80, 80))
    assert out.shape == (2, dim)


def test_input_size_keeps_the_weights_resize_ratio():
    p = load_backbone({"arch": "resnet18", "weights": "random", "input_size": 64}).preprocess
    assert (p.crop, p.resize) == (64, 73)


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
    backbone = load_backbone({"arch": "resnet18", "weights": "DEFAULT"})
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(x), reference(x))


def test_offline_download_names_the_file_and_folder(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty-hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(RuntimeError) as err:
        load_backbone({"arch": "resnet18", "weights": "DEFAULT"})
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "empty-hub" / "checkpoints") in message


def test_local_state_dict_path(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(7)
    model = resnet18()
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    backbone = load_backbone({"arch": "resnet18", "weights": str(path)})
    random = load_backbone({"arch": "resnet18", "weights": "random"})
    model.fc = torch.nn.Identity()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(x), model.eval()(x))
        assert not torch.allclose(random.model(x), backbone.model(x))


def test_checkpoint_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": np.zeros(3, dtype=object)}, path)  # not loadable with weights_only
    with pytest.raises(ValueError, match="weights_only"):
        load_backbone({"arch": "resnet18", "weights": str(path)})
