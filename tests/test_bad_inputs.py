"""The bad-input table of docs/troubleshooting.md, one test per row: each bad input and the exact error the
user sees (where part of it is a library's own reason, that part is in parentheses and
matched loosely; everything the project writes is matched exactly).

Also: every pickle read goes through the restricted unpickler, no code calls bare
``pickle.load`` or ``torch.load`` without ``weights_only=True``, and archive members are
never trusted by name alone.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
import urllib.request
from pathlib import Path

import fixtures
import numpy as np
import pytest
import torch
from conftest import REPO, copy_workflow, snakemake, write_config
from fixtures import decoded
from PIL import Image

from transfer_lab import sources
from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.files import UnsafePickleError, load_pickle
from transfer_lab.networks import load_backbone
from transfer_lab.sources import cifar10, gtsrb, imagefolder, traffic_pickle
from transfer_lab.sources.base import DatasetError, DatasetSpec
from transfer_lab.sources.cifar10 import MD5 as CIFAR10_MD5
from transfer_lab.sources.cifar10 import URL as CIFAR10_URL
from transfer_lab.specs import NetworkSpec

OFFICIAL = f"the official cifar-10-python.tar.gz (md5 {CIFAR10_MD5}) from {CIFAR10_URL}"


def spec(source: str, root=None, **kw) -> DatasetSpec:
    """A dataset spec in a workflow whose networks resize to 64 at most (the photos' storage size)."""
    d = {"source": source, "download": False, "image_size": None, "crop_roi": False, "network_resize": 64, **kw}
    if root is not None:
        d["root"] = str(root)
    return sources.dataset_spec(d)


def raises_exactly(exc_type, message: str, call, *args, reason: bool = False):
    """``call(*args)`` raises ``exc_type`` with exactly ``message``; with ``reason``, a
    ``({reason})`` placeholder in it stands for a library's own words in parentheses."""
    with pytest.raises(exc_type) as info:
        decoded(call(*args))  # a source decodes its files when they are used
    got = str(info.value)
    if reason:
        pattern = re.escape(message).replace(re.escape("({reason})"), r"\(.+\)")
        assert re.fullmatch(pattern, got, flags=re.S), f"\n got: {got}\nwant: {message}"
    else:
        assert got == message, f"\n got: {got}\nwant: {message}"
    return info.value


# --- hostile files -------------------------------------------------------------------------


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_course_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path / "data")
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"features": _RunsACommand(marker), "labels": [0]}, protocol=4)
    (root / "train.p").write_bytes(payload)
    system = f"{os.system.__module__}.system"  # posix.system
    raises_exactly(
        DatasetError,
        f"{root / 'train.p'}: refused to load global '{system}'. Only numpy arrays and plain containers "
        "are allowed in data pickles; this file may run code when loaded with plain pickle. "
        "Regenerate it or check where it came from.",
        traffic_pickle.read, spec("traffic-pickle", root),
    )
    # The same file handed in as bottleneck features.
    with pytest.raises(UnsafePickleError, match=re.escape(f"{root / 'train.p'}: refused to load global")):
        read_bottleneck(root / "train.p")
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real: plain pickle runs the command
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_admits_only_numpy_and_plain_containers(tmp_path, protocol):
    import collections
    import datetime

    ok = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([1, 2]), "d": np.dtype("int64"),
          "s": np.float64(1.5), "l": [1, "a", (2.0, None)], "b": b"raw", "set": {1, 2}}
    back = load_pickle(_dump(tmp_path / "ok.p", ok, protocol))
    assert back["l"] == [1, "a", (2.0, None)] and back["d"] == np.dtype("int64") and back["s"] == 1.5
    for bad, name in [(collections.Counter("ab"), "collections.Counter"),
                      (datetime.date(2020, 1, 1), "datetime.date"),
                      (np.ma.masked_array([1, 2]), "numpy.ma.core")]:
        with pytest.raises(UnsafePickleError, match=re.escape(name)):
            load_pickle(_dump(tmp_path / "bad.p", {"x": bad}, protocol))


def _dump(path: Path, obj, protocol: int) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_checkpoint_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _RunsACommand(marker)}, path)
    err = raises_exactly(
        ValueError,
        f"{path}: refused by torch.load(weights_only=True): the checkpoint holds more than tensors "
        "({reason}); loading it would run code "
        "from the file. Save the weights alone, with torch.save(model.state_dict(), path)",
        load_backbone, NetworkSpec(arch="resnet18", weights=str(path)), reason=True,
    )
    assert f"{os.system.__module__}.system" in str(err)  # names the refused global
    assert not marker.exists()


def test_hostile_file_under_a_torchvision_checkpoint_name_is_refused_and_nothing_runs(tmp_path):
    """torchvision itself loads cached checkpoints with weights_only=False; a file a user
    placed in the cache (or resources/weights/checkpoints/) under the official name must
    still load weights-only."""
    from torchvision.models import ResNet18_Weights

    name = ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _RunsACommand(marker)}, tmp_path / "checkpoints" / name)
    raises_exactly(
        ValueError,
        f"{tmp_path / 'checkpoints' / name}: refused by torch.load(weights_only=True): the checkpoint holds more "
        f"than tensors; loading it would run code from the file. Delete it and place the official {name} from "
        f"{ResNet18_Weights.DEFAULT.url} there",
        load_backbone, NetworkSpec(arch="resnet18", weights="DEFAULT"), tmp_path,
    )
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # set only while loading


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    raises_exactly(
        ValueError,
        f"{path}: not a readable PyTorch checkpoint ({{reason}}); truncated or another format. "
        "Expected a state dict saved with torch.save(model.state_dict(), path)",
        load_backbone, NetworkSpec(arch="resnet18", weights=str(path)), reason=True,
    )


def _tarball(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.mark.parametrize("name", ["../data_batch_1", "/etc/data_batch_1", "cifar-10-batches-py/../../data_batch_1"])
def test_archive_member_outside_the_archive_is_refused(tmp_path, name):
    path = _tarball(tmp_path / "cifar-10-python.tar.gz", [tarfile.TarInfo(name)])
    raises_exactly(
        DatasetError,
        f"{path}: refused archive member {name!r}: an absolute path or '..' in a member name is the mark of a "
        f"crafted archive. Use the official cifar-10-python.tar.gz from {CIFAR10_URL}",
        cifar10.read, spec("cifar10", path),
    )


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_archive_member_that_is_a_link_is_refused(tmp_path, kind):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = kind, "/home/user/.ssh/id_rsa"
    path = _tarball(tmp_path / "cifar-10-python.tar.gz", [link])
    raises_exactly(
        DatasetError,
        f"{path}: refused archive member 'cifar-10-batches-py/data_batch_1': a link to '/home/user/.ssh/id_rsa'. "
        f"Use the official cifar-10-python.tar.gz from {CIFAR10_URL}",
        cifar10.read, spec("cifar10", path),
    )


def test_archive_with_a_batch_twice_is_refused(tmp_path):
    files = fixtures.cifar10_batches()
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(fixtures.cifar10_tarball_bytes({**files, "x/data_batch_1": files["data_batch_2"]}))
    raises_exactly(
        DatasetError,
        f"{path}: two members named data_batch_1 (cifar-10-batches-py/data_batch_1 and "
        "cifar-10-batches-py/x/data_batch_1); the official cifar-10-python.tar.gz has one. Use the official archive",
        cifar10.read, spec("cifar10", path),
    )


# --- the table -----------------------------------------------------------------------------


def test_truncated_tarball(tmp_path):
    root = fixtures.write_cifar10(tmp_path, tarball=True)
    path = root / "cifar-10-python.tar.gz"
    path.write_bytes(path.read_bytes()[:2000])
    raises_exactly(
        DatasetError,
        f"{path}: not a readable tar.gz archive ({{reason}}); truncated (an interrupted download?) or another "
        f"file. Replace it with {OFFICIAL}",
        cifar10.read, spec("cifar10", root), reason=True,
    )


def test_wrong_checksum(tmp_path, monkeypatch):
    data = fixtures.cifar10_tarball_bytes(fixtures.cifar10_batches())

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(data))
    raises_exactly(
        DatasetError,
        f"{CIFAR10_URL}: the downloaded cifar-10-python.tar.gz has md5 {hashlib.md5(data).hexdigest()}, "
        f"expected {CIFAR10_MD5}; removed it. Try again, or download cifar-10-python.tar.gz from {CIFAR10_URL} "
        f"on a machine with network access and place it in {tmp_path.resolve()}{os.sep} (md5 {CIFAR10_MD5}), "
        "then rerun",
        cifar10.fetch, tmp_path,
    )
    assert list(tmp_path.iterdir()) == []


def test_wrong_checksum_of_a_tarball_in_place_offline(tmp_path, monkeypatch):
    data = b"not the archive"
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(data)

    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    raises_exactly(
        DatasetError,
        f"could not download {CIFAR10_URL} (<urlopen error [Errno -3] Temporary failure in name resolution>); "
        f"the {tmp_path / 'cifar-10-python.tar.gz'} in place has md5 {hashlib.md5(data).hexdigest()}, not "
        f"{CIFAR10_MD5} (truncated or another file): download cifar-10-python.tar.gz from {CIFAR10_URL} on a "
        f"machine with network access and place it in {tmp_path.resolve()}{os.sep} (md5 {CIFAR10_MD5}), then rerun",
        cifar10.fetch, tmp_path,
    )


def _cifar_with(tmp_path: Path, batch: dict) -> tuple[Path, Path]:
    folder = fixtures.write_cifar10(tmp_path) / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(fixtures.py2_pickle(batch))
    return tmp_path, folder / "data_batch_2"


def test_cifar_batch_with_the_wrong_key(tmp_path):
    root, path = _cifar_with(tmp_path, {"pixels": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]})
    raises_exactly(
        DatasetError,
        f"{path}: expected a CIFAR-10 batch with keys 'data' and 'labels', got keys ['labels', 'pixels']",
        cifar10.read, spec("cifar10", root),
    )


def test_cifar_batch_with_the_wrong_shape(tmp_path):
    root, path = _cifar_with(tmp_path, {"data": np.zeros((3, 1024), np.uint8), "labels": [0, 1, 2]})
    raises_exactly(
        DatasetError,
        f"{path}: 'data' must be uint8 (N, 3072) rows of 3x32x32 RGB planes, got uint8 (3, 1024)",
        cifar10.read, spec("cifar10", root),
    )


def test_gtsrb_csv_with_missing_columns(tmp_path):
    root = fixtures.write_gtsrb(tmp_path, n_classes=1, per_class=2, test_per_class=0)
    csv_path = root / "GTSRB/Final_Training/Images/00000/GT-00000.csv"
    csv_path.write_text("Filename;Width;Height\n00000_00000.ppm;30;30\n")
    raises_exactly(
        DatasetError,
        f"{csv_path}: expected the header Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId "
        "(semicolon-separated), got 'Filename;Width;Height' - this is the unlabelled GT-final_test.test.csv "
        "format; the labels are in GT-final_test.csv from GTSRB_Final_Test_GT.zip",
        gtsrb.read, spec("gtsrb", root),
    )


def test_class_folder_with_no_images(tmp_path):
    root = fixtures.write_imagefolder(tmp_path / "photos")
    (root / "emu").mkdir()
    (root / "emu" / "readme.txt").write_text("no pictures yet")
    raises_exactly(
        DatasetError,
        f"{root / 'emu'}: class folder 'emu' has no images (expected files ending in .jpg, .jpeg, .png, .ppm, "
        ".bmp); add images or remove the folder",
        imagefolder.read, spec("imagefolder", root),
    )


def _imagefolder_with(tmp_path: Path, name: str, write) -> tuple[Path, Path]:
    root = fixtures.write_imagefolder(tmp_path / "photos")
    path = root / "cat" / name
    write(path)
    return root, path


def test_unreadable_image(tmp_path):
    root, path = _imagefolder_with(tmp_path, "broken.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg"))
    raises_exactly(
        DatasetError,
        f"{path}: not a readable image ({{reason}}); replace or remove the file",
        imagefolder.read, spec("imagefolder", root), reason=True,
    )


def test_zero_byte_image(tmp_path):
    root, path = _imagefolder_with(tmp_path, "empty.png", lambda p: p.write_bytes(b""))
    raises_exactly(
        DatasetError,
        f"{path}: empty file (0 bytes), not an image; replace or remove the file",
        imagefolder.read, spec("imagefolder", root),
    )


def test_one_by_one_image(tmp_path):
    root, path = _imagefolder_with(tmp_path, "pixel.png", lambda p: Image.new("RGB", (1, 1)).save(p))
    raises_exactly(
        DatasetError,
        f"{path}: a 1x1 image; images must be at least 8x8 pixels (a placeholder or tracking pixel?); "
        "replace or remove the file",
        imagefolder.read, spec("imagefolder", root),
    )


def test_sixteen_bit_png_loads_scaled_to_eight_bits(tmp_path):
    """Not an error: 16-bit greys are scaled (/257), not clipped to white."""
    grey16 = np.full((16, 16), 32896, np.uint16)  # 128 * 257
    root = tmp_path / "photos"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(grey16).save(root / name / "deep.png")
    with Image.open(root / "a" / "deep.png") as image:
        assert image.mode.startswith("I")  # really a 16-bit file
    raw = decoded(imagefolder.read(spec("imagefolder", root, image_size=16)))
    assert raw.images.dtype == np.uint8 and (raw.images == 128).all()


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    """Not an error: CMYK (print) JPEGs are converted to RGB."""
    root = tmp_path / "photos"
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.fromarray(rgb).convert("CMYK").save(root / name / "print.jpg", quality=100)
    with Image.open(root / "a" / "print.jpg") as image:
        assert image.mode == "CMYK"
    raw = decoded(imagefolder.read(spec("imagefolder", root, image_size=16)))
    assert raw.images.shape == (2, 16, 16, 3)
    assert np.abs(raw.images.reshape(-1, 3).mean(0) - [200, 0, 0]).max() < 6


def test_labels_out_of_range(tmp_path):
    root, path = _cifar_with(tmp_path, {"data": np.zeros((2, 3072), np.uint8), "labels": [3, 12]})
    raises_exactly(
        DatasetError,
        f"{path}: label 12 but batches.meta names only 10 classes",
        cifar10.read, spec("cifar10", root),
    )


def test_labels_out_of_range_in_bottleneck_features(tmp_path):
    path = tmp_path / "mine_bottleneck_features_train.p"
    _dump(path, {"features": np.zeros((3, 4), np.float32), "labels": np.array([0, 1, 5]),
                 "class_names": ["a", "b"]}, 4)
    raises_exactly(ValueError, f"{path}: labels range 0..5 but 2 classes", read_bottleneck, path)


def test_features_and_labels_of_different_lengths(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path)
    data = load_pickle(root / "train.p")
    data["labels"] = data["labels"][:5]
    _dump(root / "train.p", data, 4)
    raises_exactly(
        DatasetError,
        f"{root / 'train.p'}: 5 labels for 12 images; they must match one to one",
        traffic_pickle.read, spec("traffic-pickle", root),
    )


def test_features_and_labels_of_different_lengths_in_bottleneck_features(tmp_path):
    path = tmp_path / "x_bottleneck_features_train.p"
    _dump(path, {"features": np.zeros((4, 2), np.float32), "labels": np.zeros(3, np.int64)}, 4)
    raises_exactly(ValueError, f"{path}: 4 feature rows but labels of shape (3,)", read_bottleneck, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_features(tmp_path, bad):
    path = tmp_path / "x_bottleneck_features_train.p"
    features = np.zeros((5, 3), np.float32)
    features[3, 1] = features[4, 2] = bad
    _dump(path, {"features": features, "labels": np.zeros(5, np.int64)}, 4)
    raises_exactly(
        ValueError,
        f"{path}: features contain NaN or infinite values (2 values, first in row 3); regenerate the file",
        read_bottleneck, path,
    )


def _tiny_backbone(*layers: torch.nn.Module):
    """A backbone on 4x4 inputs (pixels / 255, nothing else): what it computes is the layers' own doing."""
    from transfer_lab.networks import Backbone
    from transfer_lab.preprocess import Preprocess

    model = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(48, 2)).eval()
    return Backbone(model, Preprocess(4, 4, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), 2)


def test_nan_or_infinite_features_at_extraction():
    """fp32 says why (the weights, else the network's own arithmetic); fp16 and bf16 suggest fp32."""
    from transfer_lab.extract import Extractor

    images = np.zeros((3, 8, 8, 3), np.uint8)
    images[1] = 255  # white: 48 inputs of 1.0
    nan_weights = _tiny_backbone()
    with torch.no_grad():
        nan_weights.model[1].weight[0, 5] = float("nan")
    raises_exactly(
        FloatingPointError,
        "non-finite features from fp32 extraction: NaN or infinite values for 3 of 3 images, and the network's "
        "weights hold NaN or infinite values (1 of 2 tensors: 1.weight): the weights file is damaged or was "
        "saved from a training that diverged; use another checkpoint",
        Extractor(nan_weights, "cpu", "fp32").run, images, 2,
    )
    negative_variance = _tiny_backbone(torch.nn.BatchNorm2d(3))
    negative_variance.model[0].running_var.fill_(-1.0)
    raises_exactly(
        FloatingPointError,
        "non-finite features from fp32 extraction: NaN or infinite values for 3 of 3 images, though the network's "
        "weights are finite: a layer went beyond float32's range, or took the square root of a negative "
        "batch-norm running_var; check that the weights file belongs to this network (its arch) and is not damaged",
        Extractor(negative_variance, "cpu", "fp32").run, images, 2,
    )
    large = _tiny_backbone()
    with torch.no_grad():
        large.model[1].weight.fill_(3000.0)  # the white image: 144,000, beyond fp16's 65,504
    raises_exactly(
        FloatingPointError,
        "non-finite features from fp16 extraction: NaN or infinite values for 1 of 3 images; half precision "
        "overflows or rounds away what fp32 keeps: try extract.precision: fp32",
        Extractor(large, "cpu", "fp16").run, images, 2,
    )
    assert np.isfinite(Extractor(large, "cpu", "fp32").run(images, 2)).all()


def test_truncated_pickle(tmp_path):
    root = fixtures.write_traffic_pickle(tmp_path)
    path = root / "test.p"
    path.write_bytes(path.read_bytes()[:300])
    raises_exactly(
        DatasetError,
        f"{path}: not a readable pickle ({{reason}}); the file may be truncated or in another format",
        traffic_pickle.read, spec("traffic-pickle", root), reason=True,
    )


def test_more_extraction_parts_than_the_dataset_has_images():
    """The row's message as the extract_part job raises it (its run: test_resume.py)."""
    from transfer_lab.extract import part_bounds

    raises_exactly(ValueError, "extract.parts: 60 for dataset digits, which has 50 image(s): each part needs "
                   "at least one. Set extract.parts to at most 50 for this dataset.", part_bounds,
                   {"train": 30, "validation": 10, "test": 10}, 60, 16, "dataset digits")


def test_parts_of_one_dataset_computed_differently(tmp_path):
    from transfer_lab.extract import gather_parts

    paths = [tmp_path / "part-1-of-2.npy", tmp_path / "part-2-of-2.npy"]
    for path in paths:
        np.save(path, np.zeros((6, 4), np.float32))
    records = [{"part": k, "parts": 2, "segments": [["train", 6 * k, 6 * k + 6]], "device": "cuda",
                "precision": "fp32", "meta": {}} for k in range(2)]
    records[1]["precision"] = "bf16"
    raises_exactly(ValueError, f"{paths[1]}: computed with precision 'bf16', part 1 with 'fp32'; parts of one "
                   "dataset must be computed alike. Delete the dataset's results/parts/ folder (or pin extract.device "
                   "and extract.precision) and rerun", gather_parts, paths, records, {"train": 12})
    records[1].update(precision="fp32", segments=[["train", 7, 12]])
    raises_exactly(ValueError, f"{paths[1]}: rows 7..12 of split train, expected split train from row 6; the parts "
                   "were made with different extract.batch_size or datasets: delete the dataset's results/parts/ "
                   "folder and rerun", gather_parts, paths, records, {"train": 12})


def test_config_naming_a_dataset_folder_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    raises_exactly(
        ValueError,
        f"datasets.mine.root: {missing} does not exist; expected one subfolder per class holding .jpg, .jpeg, "
        ".png, .ppm, .bmp images",
        sources.check_dataset, "mine", spec("imagefolder", missing),
    )


@pytest.mark.integration
def test_config_naming_files_that_do_not_exist_through_snakemake(tmp_path):
    """What the user sees on the console: a missing weights file stops the workflow before
    any job; a missing dataset folder fails its prepare_dataset job, whose log says why."""
    workdir = copy_workflow(tmp_path / "wd")
    weights = tmp_path / "my_finetuned.pth"
    config = {
        "networks": {"mine": {"arch": "resnet18", "weights": str(weights)}},
        "datasets": {"photos": {"source": "imagefolder", "root": str(tmp_path / "photos")}},
        "heads": {"linear": {"kind": "linear"}},
    }
    write_config(workdir, config)
    run = snakemake(workdir, "-n", check=False)
    assert run.returncode != 0
    assert (f"invalid config:\n  networks.mine.weights: file '{weights}' does not exist (expected a .pth "
            "state dict)") in run.output, run.output
    config["networks"] = {"lite0": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}}
    write_config(workdir, config)
    run = snakemake(workdir, check=False)
    assert run.returncode != 0 and "results/logs/prepare_dataset/photos.log" in run.output, run.output
    log = (workdir / "results/logs/prepare_dataset/photos.log").read_text()
    assert (f"ValueError: datasets.photos.root: {tmp_path / 'photos'} does not exist; expected one subfolder "
            "per class holding .jpg, .jpeg, .png, .ppm, .bmp images") in log, log
    assert not (workdir / "results/datasets").exists() or not list((workdir / "results/datasets").iterdir())


@pytest.mark.integration
def test_csv_table_without_a_column_stops_the_workflow_before_any_job(tmp_path):
    """A table's header is read when the workflow is parsed (a root that is not there yet is left
    for prepare_dataset: a dry run plans before the data is in place)."""
    workdir = copy_workflow(tmp_path / "wd")
    table = fixtures.write_csv_table(tmp_path / "table")
    table.write_text(table.read_text().replace("path,label", "path,class", 1))
    write_config(workdir, {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {"mine": {"source": "csv", "root": str(table)}},
        "heads": {"linear": {"kind": "linear"}},
    })
    run = snakemake(workdir, "-n", check=False)
    assert run.returncode != 0
    assert (f"invalid config:\n  datasets.mine.root: {table} has no column 'label' (its columns: path, class, note, "
            f"split); expected {sources.get('csv').expects}") in run.output, run.output
    assert not run.jobs and not (workdir / "results").exists()


# --- no unsafe loading anywhere ----------------------------------------------------------------


def _code_files():
    for folder in ("src", "workflow", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*")) if (REPO / folder).is_dir() else []:
            if path.suffix in (".py", ".smk"):
                yield path
    yield REPO / "Snakefile"


def _code_only(text: str) -> str:
    """``text`` with its comments and string literals blanked out (docstrings may name
    ``pickle.load``: the lab's own code reads our files that way)."""
    import tokenize

    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    out = list(text)
    kinds = {tokenize.STRING, tokenize.COMMENT} | {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in kinds:
            start = offsets[tok.start[0] - 1] + tok.start[1]
            end = offsets[tok.end[0] - 1] + tok.end[1]
            out[start:end] = [c if c == "\n" else " " for c in text[start:end]]
    return "".join(out)


def unsafe_loads(text: str, is_files_module: bool = False) -> list[str]:
    """Calls in ``text`` that could unpickle without restriction."""
    text = _code_only(text)
    problems = []
    for m in re.finditer(r"\b(?:pickle|cPickle|dill|joblib|_pickle)\s*\.\s*(?:load|loads|Unpickler)\b", text):
        if is_files_module and m.group(0).endswith("Unpickler"):
            continue  # the restricted unpickler itself
        problems.append(m.group(0))
    for m in re.finditer(r"\btorch\s*\.\s*load\s*\(", text):
        call = text[m.start():_call_end(text, m.end())]
        if not re.search(r"weights_only\s*=\s*True", call):
            problems.append(" ".join(call.split()))
    for m in re.finditer(r"\bnp\s*\.\s*load\s*\(", text):
        call = text[m.start():_call_end(text, m.end())]
        if "allow_pickle=True" in call.replace(" ", ""):
            problems.append(" ".join(call.split()))
    if re.search(r"\bfrom\s+(?:pickle|torch)\s+import\s+[^\n]*\bloads?\b", text):
        problems.append("from pickle/torch import load")
    return problems


def _call_end(text: str, start: int) -> int:
    """Index just past the parenthesis closing a call whose '(' ends at ``start``."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def test_no_code_calls_bare_pickle_load_or_torch_load_without_weights_only():
    """Every unpickling goes through files.load_pickle/loads_pickle (the restricted
    unpickler) or torch.load(..., weights_only=True); np.load never allows pickles."""
    problems = [
        f"{path.relative_to(REPO)}: {call}"
        for path in _code_files()
        for call in unsafe_loads(path.read_text(), path.name == "files.py")
    ]
    assert problems == []


def test_the_unsafe_load_check_can_fail():
    bad = ("data = pickle.load(f)\nx = pickle.loads(b)\nstate = torch.load(\n    path,\n"
           "    map_location=torch.device('cpu'))\nok = torch.load(p, weights_only=True)\n"
           "z = np.load(p, allow_pickle=True)\nfrom pickle import loads\n"
           "'mentions pickle.load(f) in a docstring'\n# and torch.load(p) in a comment\n")
    assert unsafe_loads(bad) == [
        "pickle.load", "pickle.loads", "torch.load( path, map_location=torch.device( ))",  # strings blanked
        "np.load(p, allow_pickle=True)", "from pickle/torch import load",
    ]
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)") == []
