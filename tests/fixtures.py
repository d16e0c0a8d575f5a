"""Writers of each dataset source's on-disk format, as published, at toy size.

Plain functions, imported by unit and integration tests alike. Every image carries its
class: a class colour (:func:`class_colour`) plus noise, so a classifier can learn them
and a test can check that labels travel with their images. Each writer returns the path
to put in a config's ``root``.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# A pixel written into the first image of data_batch_1: (row, column), (R, G, B).
# Row != column and three different channel values, so a transposed or channel-swapped
# reader cannot find it where it belongs.
CIFAR10_MARKER = ((1, 2), (250, 10, 130))
NOISE = 12  # +- per channel around the class colour


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, mid-range colour per class (also distinct luminance for the first classes)."""
    return (40 + (53 * label) % 180, 40 + (97 * label + 90) % 180, 40 + (31 * label + 150) % 180)


def class_image(label: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (height, width, 3): the class colour plus uniform noise."""
    noise = rng.integers(-NOISE, NOISE + 1, size=(height, width, 3))
    return (np.array(class_colour(label)) + noise).clip(0, 255).astype(np.uint8)


# --- CIFAR-10: Python 2 cPickle (protocol 2) batches ---------------------------------------


def _py2_str(b: bytes | str) -> bytes:
    b = b.encode("latin1") if isinstance(b, str) else b
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def _py2_ndarray(a: np.ndarray) -> bytes:
    """A C-order array of a plain little-endian number type as numpy 1.x under Python 2
    pickled it (the data as a str, numpy.core names)."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    assert a.dtype.kind in "uif"
    order = "|" if a.dtype.itemsize == 1 else "<"
    dtype = (
        b"cnumpy\ndtype\n" + _py2_str(f"{a.dtype.kind}{a.dtype.itemsize}") + _py2_int(0) + _py2_int(1) + b"\x87R"
        + b"(" + _py2_int(3) + _py2_str(order) + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
    )
    shape = b"(" + b"".join(_py2_int(n) for n in a.shape) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + _py2_int(0) + b"\x85" + _py2_str("b") + b"\x87R"
        + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(a.tobytes()) + b"tb"
    )


def _py2_value(v) -> bytes:
    if isinstance(v, np.ndarray):
        return _py2_ndarray(v)
    if isinstance(v, (str, bytes)):
        return _py2_str(v)
    if isinstance(v, (int, np.integer)):
        return _py2_int(int(v))
    if isinstance(v, list):
        out = b"]"
        for start in range(0, len(v), 1000):  # cPickle appends in batches of 1000
            out += b"(" + b"".join(_py2_value(x) for x in v[start:start + 1000]) + b"e"
        return out
    raise TypeError(type(v))


def py2_pickle(d: dict) -> bytes:
    """A dict of str keys as Python 2's cPickle.dump(d, f, 2) wrote the CIFAR-10 batches
    (the memo opcodes left out: they change nothing a loader sees)."""
    body = b"".join(_py2_str(k) + _py2_value(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."


def cifar10_batches(per_class: int = 3, seed: int = 0) -> dict[str, bytes]:
    """File name -> bytes of each file in cifar-10-batches-py/ (batches with per_class images per class)."""
    rng = np.random.default_rng(seed)

    def batch(label_text: str, index: int) -> bytes:
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = np.stack([class_image(int(y), 32, 32, rng) for y in labels])
        if index == 1:
            (row, col), rgb = CIFAR10_MARKER
            images[0, row, col] = rgb
        data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3072))
        names = [f"{CIFAR10_CLASSES[y]}_s_{index:01d}{i:05d}.png" for i, y in enumerate(labels)]
        return py2_pickle(
            {"batch_label": label_text, "labels": [int(y) for y in labels], "data": data, "filenames": names}
        )

    files = {f"data_batch_{i}": batch(f"training batch {i} of 5", i) for i in range(1, 6)}
    files["test_batch"] = batch("testing batch 1 of 1", 0)
    files["batches.meta"] = py2_pickle(
        {"num_cases_per_batch": 10 * per_class, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072}
    )
    files["readme.html"] = (
        b'<meta HTTP-EQUIV="REFRESH" content="0; url=http://www.cs.toronto.edu/~kriz/cifar.html">\n'
    )
    return files


def cifar10_tarball_bytes(files: dict[str, bytes]) -> bytes:
    """cifar-10-python.tar.gz as published: cifar-10-batches-py/ and its files, gzip-compressed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-py")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_cifar10(root: Path, per_class: int = 3, tarball: bool = False) -> Path:
    """``root/cifar-10-python.tar.gz`` (tarball) or ``root/cifar-10-batches-py/``: five
    training batches and a test batch of ``per_class`` images per class each, and batches.meta."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = cifar10_batches(per_class)
    if tarball:
        (root / "cifar-10-python.tar.gz").write_bytes(cifar10_tarball_bytes(files))
    else:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return root


# --- GTSRB: the official archives (or torchvision's copy), extracted ------------------------

GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def _gtsrb_sign(label: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A sign image of varying size: the class colour inside its ROI, grey noise around it
    (a margin as in GTSRB, so cropping to the ROI changes the image)."""
    width, height = (int(v) for v in rng.integers(26, 48, size=2))
    image = rng.integers(90, 170, size=(height, width, 3)).astype(np.uint8)
    x1, y1 = (int(v) for v in rng.integers(4, 7, size=2))
    x2, y2 = width - 1 - int(rng.integers(4, 7)), height - 1 - int(rng.integers(4, 7))
    image[y1:y2 + 1, x1:x2 + 1] = class_image(label, y2 - y1 + 1, x2 - x1 + 1, rng)
    return image, (x1, y1, x2, y2)


def _gtsrb_row(name: str, image: np.ndarray, roi, label: int | None) -> str:
    height, width = image.shape[:2]
    fields = [name, width, height, *roi] + ([] if label is None else [label])
    return ";".join(map(str, fields))


def write_gtsrb(
    root: Path, n_classes: int = 3, per_class: int = 4, test_per_class: int = 2, layout: str = "official"
) -> Path:
    """GTSRB as its archives extract (``layout="official"``)::

        root/GTSRB/Final_Training/Images/00000/00000_00000.ppm ... GT-00000.csv
        root/GTSRB/Final_Test/Images/00000.ppm ... GT-final_test.test.csv (no ClassId)
        root/GT-final_test.csv  (GTSRB_Final_Test_GT.zip, the test labels)

    or as torchvision's GTSRB dataset downloads it (``layout="torchvision"``)::

        root/gtsrb/GTSRB/Training/00000/*.ppm, GT-00000.csv
        root/gtsrb/GTSRB/Final_Test/Images/*.ppm
        root/gtsrb/GT-final_test.csv

    The same seed in both layouts: the same images. Returns ``root``.
    """
    root = Path(root)
    if layout == "official":
        train_dir = root / "GTSRB" / "Final_Training" / "Images"
        test_dir = root / "GTSRB" / "Final_Test" / "Images"
        test_gt = root / "GT-final_test.csv"
    elif layout == "torchvision":
        train_dir = root / "gtsrb" / "GTSRB" / "Training"
        test_dir = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
        test_gt = root / "gtsrb" / "GT-final_test.csv"
    else:
        raise ValueError(layout)
    rng = np.random.default_rng(1)
    for label in range(n_classes):
        folder = train_dir / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = [GTSRB_HEADER]
        for i in range(per_class):
            name = f"{i // 30:05d}_{i % 30:05d}.ppm"  # track_frame, 30 frames per track
            image, roi = _gtsrb_sign(label, rng)
            Image.fromarray(image).save(folder / name)  # binary P6 PPM
            rows.append(_gtsrb_row(name, image, roi, label))
        (folder / f"GT-{label:05d}.csv").write_text("\n".join(rows) + "\n")
    if test_per_class:
        test_dir.mkdir(parents=True, exist_ok=True)
        labels = rng.permutation(np.repeat(np.arange(n_classes), test_per_class))
        rows, unlabelled = [GTSRB_HEADER], [GTSRB_HEADER.rsplit(";", 1)[0]]
        for i, label in enumerate(labels):
            name = f"{i:05d}.ppm"
            image, roi = _gtsrb_sign(int(label), rng)
            Image.fromarray(image).save(test_dir / name)
            rows.append(_gtsrb_row(name, image, roi, int(label)))
            unlabelled.append(_gtsrb_row(name, image, roi, None))
        (test_dir / "GT-final_test.test.csv").write_text("\n".join(unlabelled) + "\n")
        test_gt.parent.mkdir(parents=True, exist_ok=True)
        test_gt.write_text("\n".join(rows) + "\n")
    return root


# --- the course's traffic-sign pickles -----------------------------------------------------


def write_traffic_pickle(root: Path, n_classes: int = 3, per_class: int = 4) -> Path:
    """``root/{train,valid,test}.p`` as the course shipped them: dicts with 'coords', 'labels',
    'features' (N, 32, 32, 3) uint8 and 'sizes'. valid.p and test.p hold half as many per class."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for name, k in (("train.p", per_class), ("valid.p", max(1, per_class // 2)), ("test.p", max(1, per_class // 2))):
        labels = rng.permutation(np.repeat(np.arange(n_classes), k)).astype(np.uint8)
        features = np.stack([class_image(int(y), 32, 32, rng) for y in labels])
        sizes = rng.integers(25, 60, size=(len(labels), 2)).astype(np.uint8)
        coords = np.concatenate([np.full((len(labels), 2), 5), sizes - 5], axis=1).astype(np.uint8)
        data = {"coords": coords, "labels": labels, "features": features, "sizes": sizes}
        with open(root / name, "wb") as f:
            pickle.dump(data, f, protocol=3)
    return root


# --- one folder of images per class --------------------------------------------------------

# (extension, PIL mode, (width, height)): every mode and format a user's folder may hold.
IMAGEFOLDER_FORMATS = (
    (".png", "RGB", (80, 60)),
    (".jpg", "RGB", (48, 96)),
    (".png", "L", (64, 64)),
    (".png", "RGBA", (100, 40)),
    (".png", "P", (70, 90)),
    (".bmp", "RGB", (50, 50)),
    (".ppm", "RGB", (66, 77)),
    (".JPEG", "CMYK", (90, 72)),
)


def write_imagefolder(root: Path, classes=("cat", "dog"), per_class: int = 4) -> Path:
    """``root/<class>/*`` in the formats and modes of :data:`IMAGEFOLDER_FORMATS`, cycling
    (class i starts at format i * per_class), of different sizes; plus files a loader must
    skip (a text file, a hidden macOS ``._`` file). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(3)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, mode, (width, height) = IMAGEFOLDER_FORMATS[(c * per_class + i) % len(IMAGEFOLDER_FORMATS)]
            image = Image.fromarray(class_image(c, height, width, rng))
            options = {"quality": 95} if ext.lower() in (".jpg", ".jpeg") else {}
            if mode == "P":  # an 8-bit PNG with partly transparent palette entries (pngquant style)
                image = image.quantize(64)
                options["transparency"] = bytes([0, 128, 200] + [255] * 61)
            elif mode == "RGBA":
                image.putalpha(Image.fromarray(rng.integers(128, 256, (height, width)).astype(np.uint8)))
            elif mode != "RGB":
                image = image.convert(mode)
            image.save(folder / f"{name}_{i:03d}{ext}", **options)
        (folder / "notes.txt").write_text("not an image\n")
        (folder / f"._{name}_000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return root


# --- your own labelled files: a table, or a Hugging Face dataset saved on disk --------------

OWN_CLASSES = ("cat", "dog", "emu")
OWN_INT_LABELS = (2, 10, 100)  # as text sorted: 10, 100, 2


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_csv_table(root: Path, per_class: int = 4, split: bool = True, labels: str = "names") -> Path:
    """``root/labels.csv`` listing images of :data:`OWN_CLASSES` (class i in its colour, sizes
    varying): the first half of each class's files in ``root/images/`` by relative path, the
    rest in ``root/elsewhere/`` by absolute path; rows shuffled, an extra ``note`` column.
    ``labels="names"``: the class names; ``"ints"``: :data:`OWN_INT_LABELS` (numeric order
    differs from text order). With ``split``, a split column cycling train, val, test, train,
    validation, train, valid, test per class. Returns the table's path."""
    root = Path(root)
    rng = np.random.default_rng(4)
    rows = []
    cycle = ("train", "val", "test", "train", "validation", "train", "valid", "test")
    for c, name in enumerate(OWN_CLASSES):
        for i in range(per_class):
            relative = i < per_class // 2 + 1
            folder = root / ("images" if relative else "elsewhere")
            folder.mkdir(parents=True, exist_ok=True)
            width, height = (int(v) for v in rng.integers(20, 40, size=2))
            file = folder / f"{name}_{i}.png"
            Image.fromarray(class_image(c, height, width, rng)).save(file)
            path = f"images/{file.name}" if relative else str(file)
            label = name if labels == "names" else str(OWN_INT_LABELS[c])
            rows.append([path, label, "some note"] + ([cycle[i % len(cycle)]] if split else []))
    order = rng.permutation(len(rows))
    header = "path,label,note" + (",split" if split else "")
    lines = [header] + [",".join(rows[i]) for i in order]
    table = root / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def hf_dataset_dict(per_class: int = 3, classes=OWN_CLASSES, splits=("train", "validation", "test"),
                    image_column: str = "image", label_column: str = "label"):
    """A ``datasets.DatasetDict`` with an Image column (PNG bytes in the class colour) and a
    ClassLabel column, ``per_class`` images per class in each split (fewer in the others)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HFImage

    rng = np.random.default_rng(5)
    features = Features({image_column: HFImage(), label_column: ClassLabel(names=list(classes))})
    parts = {}
    for s, split in enumerate(splits):
        labels = [c for c in range(len(classes)) for _ in range(per_class if s == 0 else max(1, per_class // 2))]
        labels = [labels[i] for i in rng.permutation(len(labels))]
        images = [{"bytes": _png(class_image(c, 24, 30, rng)), "path": None} for c in labels]
        parts[split] = Dataset.from_dict({image_column: images, label_column: labels}, features=features)
    return DatasetDict(parts)


def write_hf(root: Path, layout: str = "save_to_disk", **kw) -> Path:
    """:func:`hf_dataset_dict` written by the ``datasets`` library: ``save_to_disk`` (a
    DatasetDict's folder), ``dataset`` (its train split saved alone), or ``parquet``: the
    hub's layout, ``root/data/{split}-00000-of-00001.parquet``. Returns ``root``."""
    root = Path(root)
    dataset = hf_dataset_dict(**kw)
    if layout == "save_to_disk":
        dataset.save_to_disk(str(root))
    elif layout == "dataset":
        dataset["train"].save_to_disk(str(root))
    elif layout == "parquet":
        for split, part in dataset.items():
            part.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    else:
        raise ValueError(layout)
    return root


# --- a Hugging Face hub cache, as hf_hub_download leaves it -----------------------------------

HF_REVISION = "3f2c1b0a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"  # a commit hash, as refs/main names one


def write_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = HF_REVISION) -> Path:
    """``files`` of the model repository ``repo_id`` in the hub cache ``cache`` (what
    ``HF_HUB_CACHE`` names) as ``hf_hub_download`` lays them out::

        models--<owner>--<name>/blobs/<sha256>
        models--<owner>--<name>/snapshots/<revision>/<file>  -> ../../blobs/<sha256>
        models--<owner>--<name>/refs/main                      (the revision)

    Returns the snapshot folder."""
    import hashlib

    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    for folder in (repo / "blobs", snapshot, repo / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def write_timm_hub_cache(cache: Path, model_name: str, seed: int = 0, safetensors: bool = True):
    """A timm model's hub repository ``timm/<model_name>`` in the hub cache ``cache``, as timm
    publishes it (``save_for_hf``: model.safetensors and config.json), with random weights
    (seeded); ``safetensors=False``: pytorch_model.bin instead, as some repositories hold.
    Returns the model with those weights, in eval mode."""
    import tempfile

    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False).eval()
    with tempfile.TemporaryDirectory() as folder:
        save_for_hf(model, folder, safe_serialization=safetensors)
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir()}
    write_hf_cache(cache, f"timm/{model_name}", files)
    return model


def decoded(raw):
    """A source's :class:`RawDataset` with its images decoded into one array, as preparation
    stores them (sources that read files hand back ``LazyImages``; decoding raises what a bad
    file raises). Anything without images passes through."""
    if hasattr(raw, "images"):
        raw.images = np.asarray(raw.images)
    return raw
