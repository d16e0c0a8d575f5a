"""Preprocessing against Pillow: the storage step, the device transform, the matrices behind both."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision import transforms

from transfer_lab.networks import load_backbone
from transfer_lab.preprocess import (
    DevicePreprocess,
    Preprocess,
    Storage,
    StorageResize,
    resize_matrix,
    resize_rows,
)
from transfer_lab.specs import NetworkSpec
from transfer_lab.storage import to_storage


def pillow_matrix(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's (out, in) resize coefficients, transcribed from Resample.c (precompute_coeffs,
    then the 22-bit fixed point of normalize_coeffs_8bpc) in plain numpy, row by row."""
    scale = in_size / out_size
    if interpolation == "nearest":
        src = np.minimum(np.floor((np.arange(out_size) + 0.5) * scale).astype(int), in_size - 1)
        m = np.zeros((out_size, in_size))
        m[np.arange(out_size), src] = 1.0
        return m
    if interpolation == "bicubic":
        a = -0.5
        support = 2.0

        def kernel(x):
            x = np.abs(x)
            return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                            np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))
    else:
        support = 1.0

        def kernel(x):
            return np.clip(1.0 - np.abs(x), 0.0, None)
    filterscale = max(scale, 1.0)
    support *= filterscale
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = kernel((np.arange(lo, hi) - center + 0.5) / filterscale)
        m[i, lo:hi] = w / w.sum()
    one = float(1 << 22)
    return np.trunc(m * one + np.copysign(0.5, m)) / one


# --- the matrices ------------------------------------------------------------------------


@pytest.mark.parametrize("in_size,out_size", [(8, 36), (36, 8), (640, 64), (61, 32), (8, 8), (3, 17)])
def test_bicubic_rows_are_pillows_matrix(in_size, out_size):
    rows = resize_rows(in_size, torch.arange(out_size), torch.tensor(in_size / out_size, dtype=torch.float64),
                       "bicubic")
    assert np.array_equal(rows.numpy(), pillow_matrix(in_size, out_size, "bicubic"))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_resize_matrix_is_pillows_matrix(interpolation):
    """The device transform's matrices (any torchvision interpolation), up and down, odd sizes too."""
    for in_size, out_size in [(32, 342), (8, 109), (427, 256), (640, 256), (96, 96), (299, 224), (17, 5), (5, 17)]:
        got = resize_matrix(in_size, out_size, interpolation)
        assert got.dtype == torch.float64 and got.shape == (out_size, in_size)
        assert np.array_equal(got.numpy(), pillow_matrix(in_size, out_size, interpolation)), (in_size, out_size)


# --- the device transform ------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=64))


def reference_transform(p):
    """The naive path: per-image PIL resize and crop, as torchvision's transforms do it."""
    return transforms.Compose([
        transforms.Resize(p.resize, interpolation=transforms.InterpolationMode(p.interpolation)),
        transforms.CenterCrop(p.crop),
        transforms.ToTensor(),
        transforms.Normalize(p.mean, p.std),
    ])


def photographs(shape):
    """Real images at a given size: crops of scikit-learn's sample photos, and digits."""
    if shape == (8, 8):
        from sklearn.datasets import load_digits

        grey = np.rint(load_digits().images[:6] * 255 / 16).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    crops = []
    for name in ("china.jpg", "flower.jpg"):
        photo = load_sample_image(name)
        for y, x in [(0, 0), (150, 200), (300, 400)]:
            crop = Image.fromarray(photo[y:y + 120, x:x + 160]).resize(shape[::-1], Image.BILINEAR)
            crops.append(np.asarray(crop))
    return np.stack(crops)


@pytest.mark.parametrize("shape", [(8, 8), (40, 56), (120, 90)])
def test_fast_path_matches_per_image_reference(backbone, shape):
    images = photographs(shape)
    ref_t = reference_transform(backbone.preprocess)
    reference = torch.stack([ref_t(Image.fromarray(im)) for im in images])
    fast = DevicePreprocess(backbone.preprocess)(torch.from_numpy(images))
    assert fast.shape == reference.shape == (len(images), 3, 64, 64)
    # Pillow's own filter weights: at most one uint8 level apart (2/255 after std 0.5), rarely.
    assert (fast - reference).abs().max() <= 2 / 255 + 1e-6
    assert (fast - reference).abs().mean() < 0.002
    with torch.inference_mode():
        f_ref, f_fast = backbone.model(reference), backbone.model(fast)
    cosine = torch.nn.functional.cosine_similarity(f_ref, f_fast, dim=1)
    assert cosine.min() >= 0.999, cosine


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size, resize, crop", [((427, 640), 256, 224), ((32, 32), 342, 299), ((8, 8), 109, 96)])
def test_resize_reproduces_pillow(interpolation, size, resize, crop):
    """Shrinking (antialiased) and enlarging both land on Pillow's pixels, within one level."""
    photo = load_sample_image("china.jpg")
    image = np.array(Image.fromarray(photo).resize(size[::-1], Image.BILINEAR)) if size != photo.shape[:2] else photo.copy()
    identity = Preprocess(resize, crop, interpolation, (0.0, 0.0, 0.0), (1 / 255,) * 3)
    fast = DevicePreprocess(identity)(torch.from_numpy(image[None]))[0].permute(1, 2, 0).numpy()
    pil = transforms.CenterCrop(crop)(
        transforms.Resize(resize, interpolation=transforms.InterpolationMode(interpolation))(Image.fromarray(image))
    )
    diff = np.abs(fast - np.asarray(pil, dtype=np.float64))
    assert diff.max() <= 1.0
    assert (diff == 0).mean() > 0.99


# --- the storage step: preparation, and its twin in torch ------------------------------------


def test_to_storage_squash_crop_and_identity():
    wide = np.zeros((100, 200, 3), dtype=np.uint8)
    wide[:, :50] = (255, 0, 0)
    wide[:, 50:150] = (0, 255, 0)
    wide[:, 150:] = (0, 0, 255)
    cropped = to_storage(Image.fromarray(wide), 32, "crop")
    assert cropped.shape == (32, 32, 3) and cropped.dtype == np.uint8
    assert (cropped[..., 1] > 200).all() and (cropped[..., [0, 2]] < 50).all()  # only the green centre
    squashed = to_storage(Image.fromarray(wide), 32, "squash")
    assert squashed[:, 0, 0].min() > 200 and squashed[:, -1, 2].min() > 200  # every band kept
    same = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    assert to_storage(same, 8) is same
    grey16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    assert grey16.mode == "I;16"
    out = to_storage(grey16, 64)
    assert 100 < out.mean() < 155  # scaled to 8 bits, not clipped to white


def test_storage_resize_reproduces_to_storage():
    photo = load_sample_image("flower.jpg")
    differing = total = 0
    for (h, w), size, fit in [((427, 640), 64, "crop"), ((427, 640), 32, "squash"), ((50, 33), 8, "squash"),
                              ((97, 61), 32, "squash"), ((33, 50), 64, "crop"), ((5, 200), 8, "crop")]:
        image = np.array(photo[:h, :w])
        ref = to_storage(Image.fromarray(image), size, fit).astype(int)
        got = StorageResize(Storage(size, fit))(torch.from_numpy(image)).numpy().astype(int)
        assert got.shape == ref.shape == (size, size, 3)
        # Pillow 13 runs the vertical pass first for some shapes; its rounding then differs by one level.
        assert np.abs(got - ref).max() <= 1, (h, w, size, fit)
        differing += int((got != ref).sum())
        total += got.size
    assert differing / total < 0.1
    # An image already at the storage size (every prepared training image) is kept exactly.
    stored = np.array(photo[100:108, 200:208])
    assert np.array_equal(StorageResize(Storage(8, "squash"))(torch.from_numpy(stored)).numpy(), stored)
