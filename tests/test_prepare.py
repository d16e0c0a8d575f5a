"""Parallel, bounded preparation: the same bytes on any number of workers and parts, JPEG
draft mode only where it changes nothing beyond one grey level, and datasets kept as files."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from conftest import REPO, copy_workflow, snakemake, write_config
from job_imports import assert_job_imports
from PIL import Image

from transfer_lab import datasets
from transfer_lab.datasets import (
    SplitSpec,
    crc32_combine,
    draft_is_exact,
    load_prepared,
    parallel,
    part_rows,
    plan_dataset,
    stored_chunks,
    write_dataset,
    write_files,
    write_part,
)
from transfer_lab.sources import check_dataset, dataset_spec
from transfer_lab.sources.base import DatasetError

SPLIT = SplitSpec(validation_fraction=0.25, test_fraction=0.25, seed=0)


def smooth(width: int, height: int, seed: int) -> Image.Image:
    """A photo without sharp edges (gradients): decoding it at reduced scale changes nothing
    beyond rounding."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    a, b = rng.uniform(40, 200, 3), rng.uniform(-40, 40, (2, 3))
    return Image.fromarray((a + x[..., None] * b[0] + y[..., None] * b[1]).clip(0, 255).astype(np.uint8))


def checkerboard(width: int, height: int, square: int = 25) -> Image.Image:
    """Sharp edges that fall between stored pixels: decoded at 1/8 scale, then resized, they
    store up to 7 grey levels away from the full-scale decode (measured)."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.repeat((((x // square + y // square) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2))


def photo_folder(root, n_per_class=6, size=(600, 400)):
    """Two classes of smooth JPEGs of varied sizes and aspects (landscape and portrait)."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            w, h = size if i % 2 else size[::-1]
            smooth(w + 7 * i, h + 3 * i, seed=i + 10 * len(label)).save(root / label / f"{i}.jpg", quality=95)
    return root


def imagefolder(root, size=32, **entry):
    return dataset_spec({"source": "imagefolder", "root": str(root), "image_size": size, **entry})


def test_parallel_chunks_are_the_sequential_decode_in_bounded_pieces(tmp_path, monkeypatch):
    plan = plan_dataset(imagefolder(photo_folder(tmp_path / "photos")), SPLIT)
    sequential = np.asarray(plan.images)[plan.rows]  # every file, one after another, as before
    monkeypatch.setattr(datasets, "_TASK_BYTES", 3 * 32 * 32 * 3)  # at most three images a task
    alone = list(stored_chunks(plan.images, plan.rows, workers=1))
    assert [len(c) for c in alone] == [3] * 4
    # Two workers: at least four tasks each, as long as there are images for it.
    chunks = list(stored_chunks(plan.images, plan.rows, workers=2))
    assert [len(c) for c in chunks] == [2] * 6
    assert np.array_equal(np.concatenate(chunks), sequential) and np.array_equal(np.concatenate(alone), sequential)
    # Arrays (sources that hold their pixels) pass through in the same pieces.
    assert np.array_equal(np.concatenate(list(stored_chunks(np.asarray(plan.images), plan.rows))), sequential)


def test_workers_writing_into_the_file_give_the_one_process_bytes_at_any_worker_count(tmp_path, monkeypatch):
    """On workers, each decodes its rows straight into the memory-mapped output; the file is
    the one a single process streams, byte for byte, whole datasets and parts alike."""
    root = photo_folder(tmp_path / "photos", n_per_class=7)
    smooth(640, 480, seed=99).save(root / "a" / "extra.jpg", quality=95)  # 15 images: a short last task
    plan = plan_dataset(imagefolder(root), SPLIT)
    assert len(plan.rows) == 15
    write_dataset(plan, tmp_path / "one.npz", {"dataset": "photos"}, workers=1)
    alone = (tmp_path / "one.npz").read_bytes()
    parts = [tmp_path / f"alone-{k}.npy" for k in range(2)]
    for k, path in enumerate(parts):
        write_part(plan, path, k, 2, workers=1)
    # The workers' path sends no pixels back: with the chunk stream out of reach it still works.
    monkeypatch.setattr(datasets, "stored_chunks", None)
    for workers in (2, 3, 5):
        assert parallel(plan.images, plan.rows, workers)
        out = tmp_path / f"w{workers}.npz"
        write_dataset(plan, out, {"dataset": "photos"}, workers=workers)
        assert out.read_bytes() == alone, workers
        for k, path in enumerate(parts):
            mine = tmp_path / f"w{workers}-{k}.npy"
            assert write_part(plan, mine, k, 2, workers=workers) == len(part_rows(plan.rows, k, 2))
            assert mine.read_bytes() == path.read_bytes(), (workers, k)
    assert zipfile.ZipFile(tmp_path / "w3.npz").testzip() is None  # the member's CRC-32 checks out
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # Tasks of three images at most: the CRC of many pieces, the last one short.
    monkeypatch.setattr(datasets, "_TASK_BYTES", 3 * 32 * 32 * 3)
    write_dataset(plan, tmp_path / "small-tasks.npz", {"dataset": "photos"}, workers=2)
    assert (tmp_path / "small-tasks.npz").read_bytes() == alone


def test_a_full_disk_fails_before_the_workers_decode_naming_the_file(tmp_path, monkeypatch):
    """The images' room is allocated before any worker writes into the mapped file: a full
    disk is the OSError every write names, not a worker killed by a bus error."""
    plan = plan_dataset(imagefolder(photo_folder(tmp_path / "photos")), SPLIT)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datasets.os, "posix_fallocate", full)
    monkeypatch.setattr(datasets, "decode_into", None)  # never reached
    out = tmp_path / "out"
    for write in (lambda: write_dataset(plan, out / "x.npz", {}, workers=2),
                  lambda: write_part(plan, out / "x.npy", 0, 1, workers=2)):
        with pytest.raises(OSError, match=r"cannot write .*/out/x\.np[yz]: No space left on device"):
            write()
    assert os.listdir(out) == []


def test_crc32_combine_is_the_crc_of_the_pieces_together():
    rng = np.random.default_rng(0)
    for len1, len2 in [(0, 0), (0, 5), (5, 0), (1, 1), (3, 1000), (4096, 12288), (10, 3 * 64 * 64 * 21 + 7)]:
        a, b = rng.bytes(len1), rng.bytes(len2)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(a + b), (len1, len2)


def test_parts_gathered_in_order_are_the_one_job_file_byte_for_byte(tmp_path):
    plan = plan_dataset(imagefolder(photo_folder(tmp_path / "photos")), SPLIT)
    write_dataset(plan, tmp_path / "one.npz", {"dataset": "photos"}, workers=2)
    parts = [tmp_path / f"part-{k + 1}-of-3.npy" for k in range(3)]
    sizes = [write_part(plan, path, k, 3) for k, path in enumerate(parts)]
    assert sizes == [4, 4, 4]
    write_dataset(plan, tmp_path / "gathered.npz", {"dataset": "photos"}, parts=parts)
    assert (tmp_path / "gathered.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    # Parts of another count do not fit where they would land: refused, naming the file.
    with pytest.raises(ValueError, match=r"part-1-of-3.npy: part 1 of 4 holds uint8 \(4, 32, 32, 3\), expected uint8 "
                                         r"\(3, 32, 32, 3\); delete it, and rule prepare_part makes it again"):
        write_dataset(plan, tmp_path / "wrong.npz", {}, parts=[parts[0], parts[0], parts[0], parts[0]])
    with pytest.raises(ValueError, match="prepare.parts: 13 parts for 12 prepared images; .* at most 12"):
        part_rows(plan.rows, 0, 13)


def test_draft_mode_is_used_where_it_is_exact_and_falls_back_on_a_jpeg_it_would_change(tmp_path, caplog):
    root = tmp_path / "photos"
    for label, colour in (("a", (200, 40, 40)), ("b", (30, 90, 220))):  # flat colour: draft mode changes nothing
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (1200 + 8 * i, 800), colour).save(root / label / f"{i}.jpg", quality=95)
    plan = plan_dataset(imagefolder(root), SPLIT)
    with caplog.at_level(logging.INFO):
        assert draft_is_exact(plan.images, plan.rows)
    assert "JPEG draft mode on: 12 of 12 sampled images decode at reduced scale, each within one grey" in caplog.text
    opened = []
    opener = plan.images.opener
    plan.images.opener = lambda path, *draft: opened.append(opener(path, *draft).size) or opener(path, *draft)
    drafted = np.concatenate(list(stored_chunks(plan.images, plan.rows, draft=True))).astype(int)
    assert {height for _, height in opened} == {100}  # decoded at 1/8 scale: 800 / 8 = 100 >= 2 x 32
    plan.images.opener = opener
    assert np.abs(np.asarray(plan.images)[plan.rows] - drafted).max() <= 1
    # One JPEG whose reduced-scale decode stores differently: draft mode is off for the
    # dataset, the log names the file, and every image is decoded at full scale.
    checkerboard(1200, 800).save(root / "b" / "sharp.jpg", quality=95)
    plan = plan_dataset(imagefolder(root), SPLIT)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert not draft_is_exact(plan.images, plan.rows)
    assert f"JPEG draft mode off for this dataset: {root / 'b' / 'sharp.jpg'} stores up to" in caplog.text
    assert "decoding every image at full scale" in caplog.text
    # Too small for a reduced scale at this storage size (1/2 of 800 < 2 x 256): not used, and said so.
    caplog.clear()
    plan = plan_dataset(imagefolder(root, size=256), SPLIT)
    with caplog.at_level(logging.INFO):
        assert not draft_is_exact(plan.images, plan.rows)
    assert "JPEG draft mode not used: none of 13 sampled images is a JPEG of at least 1024 pixels" in caplog.text
    # Cropped to a region of interest (GTSRB's crop_roi), draft mode never applies.
    plan.images.boxes = [(0, 0, 100, 100)] * len(plan.images)
    assert not draft_is_exact(plan.images, plan.rows)


def test_store_files_keeps_absolute_paths_in_prepared_order_and_is_refused_without_files(tmp_path):
    root = photo_folder(tmp_path / "photos")
    plan = plan_dataset(imagefolder(root, store="files"), SPLIT)
    write_files(plan, tmp_path / "files.npz", {}, "photos")
    stored = load_prepared(tmp_path / "files.npz")
    assert stored.images is None
    assert list(stored.files) == [str(plan.images.items[i].resolve()) for i in plan.rows]
    assert all(path.startswith("/") for path in stored.files)
    with pytest.raises(ValueError, match=r"datasets.digits.store: only the csv, imagefolder sources can store their "
                                         r"original files, not 'digits' .*; use store: pixels"):
        check_dataset("digits", dataset_spec({"source": "digits", "store": "files"}))


def test_decoding_workers_never_import_torch(tmp_path):
    """Preparation's processes (the job and the workers it forks) load PIL, not torch."""
    root = photo_folder(tmp_path / "photos", n_per_class=4)
    code = (
        "import sys\n"
        "from transfer_lab.datasets import SplitSpec, plan_dataset, stored_chunks\n"
        "from transfer_lab.sources import dataset_spec\n"
        f"plan = plan_dataset(dataset_spec({{'source': 'imagefolder', 'root': {str(root)!r}, 'image_size': 16}}),\n"
        "                    SplitSpec(0.25, 0.25, 0))\n"
        "print(sum(len(c) for c in stored_chunks(plan.images, plan.rows, workers=2)), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}).stdout
    assert out.split() == ["8", "False"]


@pytest.mark.integration
def test_prepare_parts_and_store_files_through_the_workflow(tmp_path):
    """prepare.parts: 3 runs three prepare_part jobs, gathered into the file one job makes
    (the parts then removed); store: files runs one job and no part."""
    workdir = copy_workflow(tmp_path / "wd")
    root = photo_folder(tmp_path / "photos")
    config = {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {"photos": {"source": "imagefolder", "root": str(root), "image_size": 32},
                     "paths": {"source": "imagefolder", "root": str(root), "store": "files"}},
        "split": {"validation_fraction": 0.25, "test_fraction": 0.25, "seed": 0},
        "heads": {"linear": {"kind": "linear", "epochs": 1}},
        "prepare": {"parts": 3, "threads": 2},
    }
    write_config(workdir, config)
    imports = tmp_path / "imports"
    imports.mkdir()
    run = snakemake(workdir, "results/datasets/photos.npz", "results/datasets/paths.npz",
                    hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert run.jobs == {"prepare_part": 3, "prepare_dataset": 2}, run.output
    assert_job_imports(imports, __file__)  # no torch, here in the parts too
    assert not list((workdir / "results/datasets/parts").rglob("*.npy"))
    prepared = load_prepared(workdir / "results/datasets/photos.npz")
    plan = plan_dataset(imagefolder(root), SPLIT)
    assert prepared.meta["jpeg_draft"] == draft_is_exact(plan.images, plan.rows)
    write_dataset(plan, tmp_path / "one.npz", prepared.meta, draft=prepared.meta["jpeg_draft"])
    assert (workdir / "results/datasets/photos.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert load_prepared(workdir / "results/datasets/paths.npz").files[0].startswith(str(root))


def test_a_bad_file_decoded_by_a_worker_is_named_as_a_sequential_decode_names_it(tmp_path):
    root = photo_folder(tmp_path / "photos", n_per_class=4)
    (root / "b" / "2.jpg").write_bytes(b"not a jpeg")
    plan = plan_dataset(imagefolder(root), SPLIT)
    message = rf"^{root / 'b' / '2.jpg'}: not a readable image \(UnidentifiedImage"
    for workers in (1, 2):
        with pytest.raises(DatasetError, match=message):
            list(stored_chunks(plan.images, plan.rows, workers=workers))
        # Workers writing into the file raise the same error, and leave no file behind.
        with pytest.raises(DatasetError, match=message):
            write_dataset(plan, tmp_path / "out" / "bad.npz", {}, workers=workers)
        with pytest.raises(DatasetError, match=message):
            write_part(plan, tmp_path / "out" / "bad.npy", 0, 1, workers=workers)
        assert os.listdir(tmp_path / "out") == []
