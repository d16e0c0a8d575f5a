"""Your own labelled files: a csv table of paths and labels, and a Hugging Face dataset saved on
disk (written by the ``datasets`` library itself), read by the csv and hf sources."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import subprocess
import sys

import fixtures
import numpy as np
import pytest
from conftest import REPO, copy_workflow, snakemake, write_config
from fixtures import decoded
from PIL import Image

from transfer_lab import sources
from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.datasets import SplitSpec, load_prepared, prepare_dataset
from transfer_lab.images import decode_image
from transfer_lab.sources import check_dataset, csv_table, hf
from transfer_lab.sources.base import DatasetError

CSV_EXPECTED = csv_table.SOURCE.expects
SPLITS = SplitSpec(validation_fraction=0.25, test_fraction=0.25, seed=0)


def spec(source: str, root=None, **kw):
    """A dataset spec in a workflow whose networks resize to 64 at most (the photos' storage size)."""
    d = {"source": source, "download": False, "image_size": None, "network_resize": 64, **kw}
    if root is not None:
        d["root"] = str(root)
    return sources.dataset_spec(d)


def assert_class_colours(images: np.ndarray, labels: np.ndarray, class_of=lambda y: y, tol: float = 6.0) -> None:
    """Each image's mean colour is its class's colour: labels travel with their images."""
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    expected = np.array([fixtures.class_colour(class_of(int(y))) for y in labels])
    assert np.abs(means - expected).max() < tol


def line_of(table, text: str) -> int:
    """The (1-based) line of ``table`` that holds ``text``."""
    return next(i for i, line in enumerate(table.read_text().splitlines(), 1) if text in line)


def raises_exactly(message: str, call, *args, reason: bool = False):
    """``call(*args)`` raises DatasetError with exactly ``message`` (``({reason})`` stands for a library's words)."""
    with pytest.raises(DatasetError) as info:
        decoded(call(*args))  # a source decodes its files when they are used
    got = str(info.value)
    if reason:
        assert re.fullmatch(re.escape(message).replace(re.escape("({reason})"), r"\(.+\)"), got, re.S), got
    else:
        assert got == message, f"\n got: {got}\nwant: {message}"


# --- csv ---------------------------------------------------------------------------------------


def test_csv_relative_and_absolute_paths_names_and_official_splits(tmp_path):
    table = fixtures.write_csv_table(tmp_path, per_class=8)
    text = table.read_text()
    assert "images/" in text and str(tmp_path / "elsewhere") in text  # both kinds of path
    raw = decoded(csv_table.read(spec("csv", table)))
    assert raw.images.shape == (24, 64, 64, 3) and raw.images.dtype == np.uint8
    assert raw.class_names == list(fixtures.OWN_CLASSES)
    assert_class_colours(raw.images, raw.labels)
    # train, val, test, train, validation, train, valid, test per class
    assert np.bincount(raw.origin).tolist() == [9, 9, 6]
    for origin in range(3):
        assert np.bincount(raw.labels[raw.origin == origin]).tolist() == [[3, 3, 3], [3, 3, 3], [2, 2, 2]][origin]
    with_validation = prepare_dataset(spec("csv", table), dataclasses.replace(SPLITS, official_validation=True))
    assert with_validation.split_sizes() == {"train": 9, "validation": 9, "test": 6}
    # As for every source: without official_validation it is carved from train, the official one left out.
    carved = prepare_dataset(spec("csv", table), SPLITS)
    assert carved.split_sizes() == {"train": 6, "validation": 3, "test": 6}


def test_csv_integer_labels_in_numeric_order(tmp_path):
    table = fixtures.write_csv_table(tmp_path, labels="ints", split=False)
    raw = decoded(csv_table.read(spec("csv", table, image_size=16)))
    assert raw.class_names == ["2", "10", "100"]  # not text order ("10", "100", "2")
    assert raw.images.shape == (12, 16, 16, 3)
    assert_class_colours(raw.images, raw.labels)
    assert raw.origin is None  # no split column: the config's split carves them
    assert prepare_dataset(spec("csv", table), SPLITS).split_sizes() == {"train": 6, "validation": 3, "test": 3}


def test_csv_split_names_maps_and_leaves_out(tmp_path):
    table = fixtures.write_csv_table(tmp_path, per_class=4)
    table.write_text(table.read_text().replace(",val\n", ",holdout\n"))
    raws = [decoded(csv_table.read(spec("csv", table, split_names=names))) for names in (
        {"train": "train", "test": "test", "holdout": "validation"},
        {"train": "train", "test": "test", "holdout": None},
    )]
    assert np.bincount(raws[0].origin).tolist() == [6, 3, 3]
    assert np.bincount(raws[1].origin).tolist() == [6, 0, 3] and len(raws[1].labels) == 9


def test_csv_row_whose_file_is_missing(tmp_path):
    table = fixtures.write_csv_table(tmp_path)
    gone = tmp_path / "images" / "dog_1.png"
    gone.unlink()
    (tmp_path / "elsewhere" / "emu_3.png").unlink()
    raises_exactly(
        f"{table}, line {line_of(table, 'images/dog_1.png')}: {gone} is no file (2 of the 12 files listed are "
        "missing); paths are relative to the table's folder, or absolute",
        csv_table.read, spec("csv", table),
    )


def test_csv_missing_column_named_with_those_present(tmp_path):
    table = fixtures.write_csv_table(tmp_path)
    table.write_text(table.read_text().replace("path,label,note", "file,label,note", 1))
    problem = "has no column 'path' (its columns: file, label, note, split)"
    raises_exactly(f"{table}: {problem}; expected {CSV_EXPECTED}", csv_table.read, spec("csv", table))
    with pytest.raises(ValueError) as err:
        check_dataset("mine", spec("csv", table), on_disk=False)  # as the workflow, when it is parsed
    assert str(err.value) == f"datasets.mine.root: {table} {problem}; expected {CSV_EXPECTED}"


def test_csv_semicolons_hinted(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path;label\na.png;cat\n")
    raises_exactly(
        f"{table}: has no column 'path' or 'label' (its columns: path;label) (the table is read comma-separated); "
        f"expected {CSV_EXPECTED}",
        csv_table.read, spec("csv", table),
    )


@pytest.mark.parametrize("content, problem", [
    ("", "is empty (no header row)"),
    ("path,label,split\n\n", "no rows"),
])
def test_csv_empty_table(tmp_path, content, problem):
    table = tmp_path / "labels.csv"
    table.write_text(content)
    raises_exactly(f"{table}: {problem}; expected {CSV_EXPECTED}", csv_table.read, spec("csv", table))


@pytest.mark.parametrize("labels, message", [
    (["1", "1.5", "2"], "label column 'label' holds numbers that are no integers (e.g. '1.5'); labels are class "
                        "names or integer class ids"),
    (["1", "cat", "2"], "label column 'label' mixes integers (e.g. '1', '2') and names (e.g. 'cat'); use one kind "
                        "for every row"),
])
def test_csv_labels_of_mixed_or_unseen_types(tmp_path, labels, message):
    table = fixtures.write_csv_table(tmp_path, per_class=1, split=False)
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0]] + [re.sub(r",[^,]+,", f",{y},", line, count=1)
                                             for line, y in zip(lines[1:], labels, strict=True)]) + "\n")
    raises_exactly(f"{table}: {message}", csv_table.read, spec("csv", table))


def test_csv_bad_split_value_and_empty_cells_named_by_line(tmp_path):
    table = fixtures.write_csv_table(tmp_path)
    original = table.read_text()
    table.write_text(original.replace(",val\n", ",dev\n"))
    raises_exactly(
        f"{table}, line {line_of(table, ',dev')}: column 'split': unknown split 'dev'; split_names maps 'train', "
        "'validation', 'valid', 'val', 'test'. Map it to train, validation or test (or null to leave it out) in the "
        "dataset's split_names",
        csv_table.read, spec("csv", table),
    )
    table.write_text(original.replace(",val\n", ",\n"))
    line = next(i for i, text in enumerate(table.read_text().splitlines(), 1) if text.endswith(","))
    raises_exactly(
        f"{table}, line {line}: empty 'split'; every row needs a path and a label and, as the table has a split "
        "column, a split",
        csv_table.read, spec("csv", table),
    )


def test_csv_bad_image_named(tmp_path):
    table = fixtures.write_csv_table(tmp_path, split=False)
    bad = tmp_path / "images" / "cat_0.png"
    bad.write_bytes(b"not a png")
    raises_exactly(f"{bad}: not a readable image ({{reason}}); replace or remove the file",
                   csv_table.read, spec("csv", table), reason=True)


def test_csv_listed_files_for_the_fingerprint(tmp_path):
    table = fixtures.write_csv_table(tmp_path)
    files = csv_table.listed(table)
    assert len(files) == 12 and all(f.is_file() and f.is_absolute() for f in files)
    assert {f.parent for f in files} == {tmp_path / "images", tmp_path / "elsewhere"}
    assert csv_table.listed(tmp_path / "missing.csv") == []  # not there yet: nothing to fingerprint


@pytest.mark.parametrize("root, problem", [("folder", "is a folder, not a table"), ("missing", "does not exist")])
def test_csv_check_refuses_a_folder_or_a_missing_table(tmp_path, root, problem):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError) as err:
        check_dataset("mine", spec("csv", tmp_path / root))
    assert str(err.value) == f"datasets.mine.root: {tmp_path / root} {problem}; expected {CSV_EXPECTED}"
    check_dataset("mine", spec("csv", tmp_path / "missing"), on_disk=False)  # not there yet: a dry run plans


# --- hf ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    return {layout: fixtures.write_hf(base / layout, layout) for layout in ("save_to_disk", "parquet", "dataset")}


def test_hf_save_to_disk_classes_labels_and_splits(hf_roots):
    raw = decoded(hf.read(spec("hf", hf_roots["save_to_disk"])))
    assert raw.images.shape == (15, 64, 64, 3) and raw.images.dtype == np.uint8
    assert raw.class_names == list(fixtures.OWN_CLASSES)
    assert_class_colours(raw.images, raw.labels)
    assert np.bincount(raw.origin).tolist() == [9, 3, 3]
    assert np.bincount(raw.labels[raw.origin == 0]).tolist() == [3, 3, 3]
    check_dataset("mine", spec("hf", hf_roots["save_to_disk"]))
    official = dataclasses.replace(SPLITS, official_validation=True)
    prepared = prepare_dataset(spec("hf", hf_roots["save_to_disk"]), official)
    assert prepared.split_sizes() == {"train": 9, "validation": 3, "test": 3}


def test_hf_parquet_in_the_hubs_layout_reads_as_save_to_disk(hf_roots):
    assert sorted(p.name for p in (hf_roots["parquet"] / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    saved, parquet = (decoded(hf.read(spec("hf", hf_roots[k]))) for k in ("save_to_disk", "parquet"))
    # Splits come in another order (files sorted by name); the same rows within each split.
    for origin in range(3):
        assert np.array_equal(saved.images[saved.origin == origin], parquet.images[parquet.origin == origin])
        assert np.array_equal(saved.labels[saved.origin == origin], parquet.labels[parquet.origin == origin])
    assert parquet.class_names == saved.class_names  # from the schema's huggingface metadata


def test_hf_parquet_named_by_number_takes_its_folders_split(hf_roots, tmp_path):
    """The hub's parquet conversion: <config>/<split>/0000.parquet."""
    for path in (hf_roots["parquet"] / "data").iterdir():
        folder = tmp_path / "default" / path.name.split("-")[0]
        folder.mkdir(parents=True)
        (folder / "0000.parquet").write_bytes(path.read_bytes())
    hub, converted = (decoded(hf.read(spec("hf", root))) for root in (hf_roots["parquet"], tmp_path))
    for field in ("images", "labels", "origin"):
        assert np.array_equal(getattr(hub, field), getattr(converted, field))


def test_hf_reads_without_the_datasets_library(hf_roots):
    code = (
        "import sys\nfrom transfer_lab import sources\n"
        f"raw = sources.get('hf').read(sources.dataset_spec({{'source': 'hf', 'root': {str(hf_roots['parquet'])!r}, "
        "'image_size': 16}))\n"
        "print(len(raw.labels), 'datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["15", "False"]


def test_hf_a_dataset_saved_alone_has_no_official_splits(hf_roots):
    raw = decoded(hf.read(spec("hf", hf_roots["dataset"], image_size=16)))
    assert raw.images.shape == (9, 16, 16, 3) and raw.origin is None
    assert raw.class_names == list(fixtures.OWN_CLASSES)
    assert_class_colours(raw.images, raw.labels)


def test_hf_custom_columns_and_missing_column(tmp_path):
    root = fixtures.write_hf(tmp_path / "d", image_column="picture", label_column="species")
    raw = decoded(hf.read(spec("hf", root, image_column="picture", label_column="species")))
    assert raw.class_names == list(fixtures.OWN_CLASSES) and len(raw.labels) == 15
    assert_class_colours(raw.images, raw.labels)
    first = root / "train" / "data-00000-of-00001.arrow"
    raises_exactly(f"{first}: no column 'image' (its columns: picture, species); set the dataset's image_column to "
                   "the one that holds them", hf.read, spec("hf", root, label_column="species"))
    raises_exactly(f"{first}: no column 'label' (its columns: picture, species); set the dataset's label_column to "
                   "the one that holds them", hf.read, spec("hf", root, image_column="picture"))


def test_hf_unknown_split_names_and_the_mapping(tmp_path):
    root = fixtures.write_hf(tmp_path / "d", "parquet", splits=("train", "extra"))
    raises_exactly(
        f"{root / 'data' / 'extra-00000-of-00001.parquet'}: unknown split 'extra'; split_names maps 'train', "
        "'validation', 'valid', 'val', 'test'. Map it to train, validation or test (or null to leave it out) in "
        "the dataset's split_names",
        hf.read, spec("hf", root),
    )
    as_test = decoded(hf.read(spec("hf", root, split_names={"train": "train", "extra": "test"})))
    assert np.bincount(as_test.origin).tolist() == [9, 0, 3]
    left_out = decoded(hf.read(spec("hf", root, split_names={"train": "train", "extra": None})))
    assert len(left_out.labels) == 9 and (left_out.origin == 0).all()


def _plain(tmp_path, labels, image=None):
    """A parquet file written by datasets from plain columns (no ClassLabel)."""
    from datasets import Dataset
    from datasets import Image as HFImage

    rng = np.random.default_rng(0)
    images = image or [{"bytes": fixtures._png(fixtures.class_image(i % 3, 16, 16, rng)), "path": None}
                       for i in range(len(labels))]
    ds = Dataset.from_dict({"image": images, "label": labels}).cast_column("image", HFImage())
    ds.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    return tmp_path


def test_hf_plain_integer_and_string_labels(tmp_path):
    ints = decoded(hf.read(spec("hf", _plain(tmp_path / "ints", [0, 1, 2, 3, 1]))))
    assert ints.class_names == ["0", "1", "2", "3"] and ints.labels.tolist() == [0, 1, 2, 3, 1]
    text = decoded(hf.read(spec("hf", _plain(tmp_path / "text", ["emu", "cat", "dog", "cat"]))))
    assert text.class_names == ["cat", "dog", "emu"] and text.labels.tolist() == [2, 0, 1, 0]


def test_hf_unsupported_label_type(tmp_path):
    root = _plain(tmp_path, [0.5, 1.0, 2.0])
    raises_exactly(f"{root / 'train-00000-of-00001.parquet'}: label column 'label' is double; expected a ClassLabel, "
                   "integer class ids or class names (strings)", hf.read, spec("hf", root))


def test_hf_image_paths_relative_to_the_root(tmp_path, monkeypatch):
    root = tmp_path / "d"
    (root / "pics").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(fixtures.class_image(i, 20, 20, rng)).save(root / "pics" / f"{i}.png")
    monkeypatch.chdir(root)  # where datasets looks for the files as it writes
    _plain(root, [0, 1, 2], image=[{"bytes": None, "path": f"pics/{i}.png"} for i in range(3)])
    monkeypatch.chdir(tmp_path)
    import pyarrow.parquet as pq

    stored = pq.read_table(root / "train-00000-of-00001.parquet").column("image").to_pylist()
    assert stored[0] == {"bytes": None, "path": "pics/0.png"}  # paths only, relative
    raw = decoded(hf.read(spec("hf", root)))
    assert_class_colours(raw.images, raw.labels)
    (root / "pics" / "2.png").unlink()
    raises_exactly(f"{root / 'pics' / '2.png'}: no such file", hf.read, spec("hf", root))


def test_hf_nothing_there_says_what_is_expected(tmp_path):
    with pytest.raises(ValueError) as err:
        check_dataset("mine", spec("hf", tmp_path))
    assert str(err.value) == (f"datasets.mine.root: {tmp_path} holds no dataset_dict.json, state.json or parquet "
                              f"files; expected {hf.SOURCE.expects}")
    raises_exactly(f"{tmp_path}: no Hugging Face dataset; expected {hf.SOURCE.expects}", hf.read, spec("hf", tmp_path))


def test_options_of_tables_refused_elsewhere(tmp_path):
    with pytest.raises(ValueError, match=re.escape("datasets.mine.image_column: only the hf source has columns, "
                                                   "not 'imagefolder'")):
        check_dataset("mine", spec("imagefolder", tmp_path, image_column="picture"))
    with pytest.raises(ValueError, match=re.escape("datasets.mine.split_names: only the csv, hf sources have split "
                                                   "names of their own, not 'gtsrb'")):
        check_dataset("mine", spec("gtsrb", tmp_path, split_names={"dev": "validation"}))


def test_image_bytes_decoded_upright_and_refused_by_row():
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), "f.arrow, row 0").size == (10, 30)
    with pytest.raises(DatasetError, match=re.escape("f.arrow, row 3: not a readable image (")):
        decode_image(b"junk", "f.arrow, row 3")
    with pytest.raises(DatasetError, match=re.escape("f.arrow, row 4: empty bytes (0 bytes), not an image; replace "
                                                     "or remove the row")):
        decode_image(b"", "f.arrow, row 4")


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_csv_and_hf_datasets_through_preparation_and_extraction(tmp_path):
    """Both sources in one workflow run, up to the bottleneck pickles (heads and the comparison
    take features whatever their source)."""
    workdir = copy_workflow(tmp_path / "wd")
    table = fixtures.write_csv_table(tmp_path / "table", per_class=8)
    config = {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {
            "table": {"source": "csv", "root": str(table), "image_size": 16, "split": {"official_validation": True}},
            "hub": {"source": "hf", "root": str(fixtures.write_hf(tmp_path / "hub", "parquet")), "image_size": 16},
        },
        "split": {"validation_fraction": 0.25, "test_fraction": 0.25},
        "heads": {"linear": {"kind": "linear", "epochs": 3}},
    }
    write_config(workdir, config)
    pickles = {(d, s): f"results/bottleneck/tiny_{d}_bottleneck_features_{s}.p"
               for d in ("table", "hub") for s in ("train", "validation", "test")}
    run = snakemake(workdir, *pickles.values())
    assert run.jobs == {"prepare_dataset": 2, "extract_features": 2}, run.output
    prepared = {d: load_prepared(workdir / f"results/datasets/{d}.npz") for d in ("table", "hub")}
    assert prepared["table"].split_sizes() == {"train": 9, "validation": 9, "test": 6}  # all official
    assert prepared["hub"].split_sizes() == {"train": 6, "validation": 3, "test": 3}  # official test, validation carved
    assert (prepared["table"].meta["source"], prepared["table"].meta["storage_fit"]) == ("csv", "crop")
    assert (prepared["hub"].meta["source"], prepared["hub"].meta["storage_size"]) == ("hf", 16)
    for (dataset, split), path in pickles.items():
        features = read_bottleneck(workdir / path)
        assert features.class_names == list(fixtures.OWN_CLASSES)
        assert len(features.labels) == prepared[dataset].split_sizes()[split] and features.features.shape[1] == 1280
    # An image the table lists from outside its folder, rewritten: that dataset is prepared again.
    outside = sorted((tmp_path / "table" / "elsewhere").iterdir())[0]
    os.utime(outside, ns=(outside.stat().st_atime_ns, outside.stat().st_mtime_ns + 10**9))
    again = snakemake(workdir, "-n", *pickles.values())
    assert again.jobs == {"prepare_dataset": 1, "extract_features": 1}, again.output
    assert "results/datasets/table.npz" in again.output and "results/datasets/hub.npz" not in again.output
