"""Extraction from original image files (decode.py), and the CUDA-only extraction options on the CPU."""


import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_image

from transfer_lab.decode import decode_device, orient
from transfer_lab.extract import Extractor, extract_sharded, shard_name
from transfer_lab.networks import load_backbone
from transfer_lab.sources.base import DatasetError
from transfer_lab.specs import NetworkSpec
from transfer_lab.storage import to_storage


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=64))


def photos() -> list[np.ndarray]:
    """Photo-like crops of different aspects (landscape, portrait, square), downscaled to stay small."""
    china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")
    return [china[::3, ::3], flower[40:400, 200:420][::2, ::2], china[100:300, 200:400]]


def small() -> list[np.ndarray]:
    """Tiny photo crops (landscape, portrait, square), for tests of the batch loop, not of pixels."""
    return [a[::4, ::4] for a in photos()]


def save(image: Image.Image, path, **kw) -> str:
    image.save(path, **kw)
    return str(path)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def pil_reference(backbone, paths: list[str]) -> np.ndarray:
    """Features through the weights' own per-image PIL transform, on images read as preparation reads them."""
    from torchvision import transforms

    from transfer_lab.images import read_image

    p = backbone.preprocess
    transform = transforms.Compose([
        transforms.Resize(p.resize, interpolation=transforms.InterpolationMode(p.interpolation)),
        transforms.CenterCrop(p.crop), transforms.ToTensor(), transforms.Normalize(p.mean, p.std),
    ])
    x = torch.stack([transform(Image.fromarray(read_image(path))) for path in paths])
    with torch.inference_mode():
        return backbone.model(x).numpy()


def test_features_from_files_match_the_weights_own_transform(backbone, tmp_path):
    """Files decoded, resized and cropped at extraction ~ the per-image PIL transform of the weights."""
    arrays = photos()
    paths = [save(Image.fromarray(a), tmp_path / f"p{k}.jpg", quality=95) for k, a in enumerate(arrays)]
    # Grey and CMYK JPEGs and a PNG, read as preparation reads them (PIL, to RGB).
    paths.append(save(Image.fromarray(arrays[0]).convert("L"), tmp_path / "grey.jpg", quality=95))
    paths.append(save(Image.fromarray(arrays[1]).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95))
    paths.append(save(Image.fromarray(arrays[2]), tmp_path / "photo.png"))
    extractor = Extractor(backbone, "cpu", "fp32", decode="auto")
    from_files = extractor.run(np.array(paths), batch_size=4)  # 2 batches, one of 2
    assert from_files.shape == (6, backbone.feature_dim)
    assert cosine(from_files, pil_reference(backbone, paths)).min() >= 0.999
    # Batch composition changes nothing: images are resized one size group at a time.
    np.testing.assert_allclose(extractor.run(np.array(paths[::-1]), batch_size=5)[::-1], from_files,
                               rtol=1e-4, atol=1e-5)
    # Landscape and square files ~ the pixel store at the network's resize size. (A portrait
    # one can land a pixel off: to_storage's crop offset floors, the centre crop rounds.)
    from transfer_lab.images import read_image

    stored = np.stack([to_storage(read_image(paths[k]), backbone.preprocess.resize, fit="crop") for k in (0, 2)])
    assert cosine(extractor.run(stored, batch_size=2), from_files[[0, 2]]).min() >= 0.999


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_a_rotated_jpeg_is_read_upright(backbone, tmp_path):
    upright = photos()[0]
    image = Image.fromarray(np.rot90(upright, 1).copy())  # stored turned; EXIF 6 turns it back clockwise
    exif = image.getexif()
    exif[0x0112] = 6
    rotated = save(image, tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    sideways = save(image, tmp_path / "sideways.jpg", quality=95)  # the same pixels, no EXIF
    features = Extractor(backbone, "cpu", "fp32").run(np.array([rotated, sideways]), batch_size=2)
    reference = pil_reference(backbone, [rotated])  # read_image turns it upright, as preparation
    assert cosine(features[:1], reference)[0] >= 0.999 > cosine(features[1:], reference)[0]


def test_an_unreadable_file_is_named(backbone, tmp_path):
    good = save(Image.fromarray(photos()[2]), tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 10)
    extractor = Extractor(backbone, "cpu", "fp32")
    with pytest.raises(DatasetError, match="bad.jpg: not a readable JPEG"):
        extractor.run(np.array([good, str(bad)]), batch_size=2)
    with pytest.raises(DatasetError, match="missing.png: no such file"):
        extractor.run(np.array([good, str(tmp_path / "missing.png")]), batch_size=2)


def test_the_batched_decode_path_gives_the_host_decoders_pixels(backbone, tmp_path):
    """The path nvjpeg takes (bytes from the threads, one batched decode_jpeg call, orientation
    after), run with the CPU decoder: the pixels of decoding on the host threads; a file the
    batch decoder rejects is decoded alone, and one nobody can decode is named."""
    from transfer_lab.decode import FileInputs, read_raw

    image = Image.fromarray(np.rot90(small()[0], 1).copy())
    exif = image.getexif()
    exif[0x0112] = 8
    paths = [save(Image.fromarray(a), tmp_path / f"{k}.jpg") for k, a in enumerate(small())]
    paths += [save(image, tmp_path / "rotated.jpg", exif=exif.tobytes()), save(image, tmp_path / "p.png")]
    inputs = FileInputs(Extractor(backbone, "cpu", "fp32").prep, torch.device("cpu"))
    batched = inputs.to_input([read_raw(p, gpu_jpeg=True) for p in paths])
    assert batched.numpy().tobytes() == inputs.to_input([read_raw(p, gpu_jpeg=False) for p in paths]).numpy().tobytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 10)
    with pytest.raises(DatasetError, match="bad.jpg: not a readable JPEG"):
        inputs.to_input([read_raw(p, gpu_jpeg=True) for p in [*paths, str(bad)]])


def test_file_datasets_extract_in_resumable_shards(backbone, tmp_path):
    paths = np.array([save(Image.fromarray(a), tmp_path / f"{k}.jpg") for k, a in enumerate(small() * 2)])
    extractor = Extractor(backbone, "cpu", "fp32")
    whole = extract_sharded(extractor, paths, tmp_path / "s", shard_size=3, batch_size=3)  # 6 files: 2 shards
    (tmp_path / "s" / "cpu-fp32" / shard_name(3, 6)).unlink()  # killed before the last shard
    resumed = extract_sharded(extractor, paths, tmp_path / "s", shard_size=3, batch_size=3)
    assert resumed.n_computed == 3 and resumed.features.tobytes() == whole.features.tobytes()


def test_out_of_memory_halves_a_batch_of_files(backbone, tmp_path, monkeypatch):
    paths = np.array([save(Image.fromarray(a), tmp_path / f"{k}.jpg") for k, a in enumerate(small() + small()[:1])])
    extractor = Extractor(backbone, "cpu", "fp32")
    expected = extractor.run(paths, batch_size=2)
    seen, forward = [], backbone.model.forward

    def forward_or_oom(x):
        seen.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(backbone.model, "forward", forward_or_oom)
    features = extractor.run(paths, batch_size=4)
    assert seen == [4, 2, 2] and extractor.max_batch_size == 2, seen  # 4 -> 2, then kept
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_the_cuda_options_leave_cpu_features_unchanged(backbone):
    """On the CPU, staging, graphs and GPU decoding are never taken: the features are today's
    computation, bit for bit (the network on the preprocessed batch)."""
    images = np.random.default_rng(0).integers(0, 256, (7, 20, 24, 3), dtype=np.uint8)
    extractor = Extractor(backbone, "cpu", "fp32", cuda_graph=True, decode="auto")
    with torch.inference_mode():
        expected = backbone.model(extractor.prep(torch.from_numpy(images))).numpy()
    assert extractor.run(images, batch_size=7).tobytes() == expected.tobytes()
    assert not extractor.cuda_graph and extractor.shard_tag(files=True) == "cpu-fp32"


def test_decode_settings():
    assert decode_device("auto", torch.device("cpu")).type == "cpu"
    assert decode_device("cpu", torch.device("cuda", 0)).type == "cpu"
    assert decode_device("auto", torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="gpu needs a CUDA"):
        decode_device("gpu", torch.device("cpu"))
    with pytest.raises(ValueError, match="extract.compile"):
        Extractor.__init__(object.__new__(Extractor), None, compile="fast")
