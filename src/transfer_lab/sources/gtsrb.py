"""The German Traffic Sign Recognition Benchmark, from its official archives (or torchvision's copy)."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import storage_fit, storage_size
from .base import DatasetError, DatasetSpec, LazyImages, Option, RawDataset, Source

log = logging.getLogger(__name__)

# As in the course's signnames.csv (ClassId -> SignName).
CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

TEST_CSV = "GT-final_test.csv"
_COLUMNS = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
_EXPECTED = (
    "GTSRB/Final_Training/Images/<class>/ (GTSRB_Final_Training_Images.zip extracted), optionally "
    f"GTSRB/Final_Test/Images/ (GTSRB_Final_Test_Images.zip) with {TEST_CSV} (GTSRB_Final_Test_GT.zip); "
    "or torchvision's gtsrb/GTSRB/Training/<class>/"
)


@dataclass
class _Paths:
    train: Path  # folder of class folders
    test_images: Path
    test_csvs: list[Path]  # where GT-final_test.csv may be, in order


def _paths(root: Path) -> _Paths | None:
    for base in (root / "GTSRB", root):  # official archives
        train = base / "Final_Training" / "Images"
        if train.is_dir():
            test = base / "Final_Test" / "Images"
            csvs = [test, base / "Final_Test", base, base.parent, root]
            return _Paths(train, test, list(dict.fromkeys(d / TEST_CSV for d in csvs)))
    for base in (root / "gtsrb", root):  # torchvision's download
        train = base / "GTSRB" / "Training"
        if train.is_dir():
            test = base / "GTSRB" / "Final_Test" / "Images"
            return _Paths(train, test, [base / TEST_CSV, test / TEST_CSV])
    return None


def _annotations(csv_path: Path, folder: Path) -> list[tuple[Path, tuple[int, int, int, int], int]]:
    """(image path, ROI (x1, y1, x2, y2) inclusive, ClassId) per row of a GTSRB annotation file."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=";")
        header = [h.strip() for h in next(reader, [])]
        needed = ["Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
        if any(h not in header for h in needed):
            raise DatasetError(
                f"{csv_path}: expected the header {_COLUMNS} (semicolon-separated), got {';'.join(header)!r}"
                + (" - this is the unlabelled GT-final_test.test.csv format; the labels are in "
                   f"{TEST_CSV} from GTSRB_Final_Test_GT.zip" if "ClassId" not in header else "")
            )
        col = {h: header.index(h) for h in needed}
        for line, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            try:
                name = row[col["Filename"]].strip()
                roi = tuple(int(row[col[k]]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
                class_id = int(row[col["ClassId"]])
            except (ValueError, IndexError):
                raise DatasetError(
                    f"{csv_path}, line {line}: expected {_COLUMNS}, got {';'.join(row)!r}"
                ) from None
            if class_id < 0:
                raise DatasetError(f"{csv_path}, line {line}: negative ClassId {class_id}")
            rows.append((folder / name, roi, class_id))
    return rows


def read(spec: DatasetSpec) -> RawDataset:
    """The German Traffic Sign Recognition Benchmark, from its official archives (or torchvision's copy).

    Labels come from the annotations' ClassId. ``crop_roi`` crops each image to its
    annotated sign before the squash-resize to ``image_size`` (default: the
    configured networks' largest resize). Without the
    test part (images and GT-final_test.csv) every image is a training image.
    """
    root = Path(spec.root)
    paths = _paths(root)
    if paths is None:
        raise DatasetError(f"{root}: no GTSRB training images; expected {_EXPECTED}")
    class_dirs = sorted(d for d in paths.train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{paths.train}: no class folders; expected 00000/, 00001/, ... each with GT-<class>.csv")
    rows = []
    for folder in class_dirs:
        csv_path = folder / f"GT-{folder.name}.csv"
        if not csv_path.is_file():
            raise DatasetError(
                f"{folder}: class folder without its annotation file {csv_path.name} (expected {csv_path}); "
                "extract the official training archive again"
            )
        rows += _annotations(csv_path, folder)
    n_train = len(rows)
    test_csv = next((p for p in paths.test_csvs if p.is_file()), None)
    if paths.test_images.is_dir() and test_csv is not None:
        rows += _annotations(test_csv, paths.test_images)
    else:
        missing = (
            f"no test images in {paths.test_images} (GTSRB_Final_Test_Images.zip)"
            if not paths.test_images.is_dir()
            else f"no test labels {TEST_CSV} (GTSRB_Final_Test_GT.zip) in any of "
            + ", ".join(str(p.parent) for p in paths.test_csvs)
        )
        log.warning("%s: %s; using the training images only", root, missing)
    boxes = None
    if spec.options.get("crop_roi"):
        boxes = [(x1, y1, x2 + 1, y2 + 1) for _, (x1, y1, x2, y2), _ in rows]
    log.info("reading %d GTSRB images (%d training) from %s", len(rows), n_train, root)
    images = LazyImages([r[0] for r in rows], storage_size(spec), storage_fit(spec), boxes=boxes, what="GTSRB images")
    labels = np.array([r[2] for r in rows], dtype=np.int64)
    origin = np.zeros(len(rows), dtype=np.int8)
    origin[n_train:] = 2
    top = int(labels.max()) if len(labels) else -1
    class_names = list(CLASS_NAMES) if top < len(CLASS_NAMES) else [str(i) for i in range(top + 1)]
    return RawDataset(images=images, labels=labels, class_names=class_names, origin=origin)


def _check(root: Path) -> str | None:
    return None if _paths(root) is not None else "holds no GTSRB training images"


SOURCE = Source(
    name="gtsrb",
    title="GTSRB, the official training and test archives, extracted",
    read=read,
    image_size=None,  # the networks' largest resize: its photos are 15 to 250 pixels wide
    expects=_EXPECTED,
    check=_check,
    splits=("train", "test"),
    options=(
        Option(
            "crop_roi",
            {"type": "boolean", "default": False,
             "description": "crop each image to its annotated region of interest before resizing"},
            needs="annotated regions of interest",
        ),
    ),
    notes="each class folder with its `GT-<class>.csv` (semicolon-separated, with ROI columns); without the test "
          "part every image is a training image",
)
