"""The extraction hot path and its invariants (its preprocessing against Pillow: test_preprocess.py)."""

import logging

import numpy as np
import pytest
import torch

from transfer_lab.extract import extract_features, resolve_precision
from transfer_lab.networks import load_backbone
from transfer_lab.specs import NetworkSpec


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="bundled", input_size=64))


def test_features_are_float32_in_order_and_batch_size_invariant(backbone):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    whole = extract_features(backbone, images, batch_size=64, device="cpu")
    small = extract_features(backbone, images, batch_size=3, device="cpu")
    assert whole.features.dtype == np.float32 and whole.features.shape == (10, 1280)
    np.testing.assert_allclose(small.features, whole.features, rtol=1e-4, atol=1e-5)
    part = extract_features(backbone, images[[7, 2]], batch_size=64, device="cpu")
    np.testing.assert_allclose(part.features, whole.features[[7, 2]], rtol=1e-4, atol=1e-5)
    assert whole.precision == "fp32" and whole.device == "cpu"
    assert whole.images_per_second > 0


def test_extraction_is_deterministic_on_cpu(backbone):
    images = np.random.default_rng(2).integers(0, 256, size=(5, 12, 12, 3), dtype=np.uint8)
    a = extract_features(backbone, images, device="cpu").features
    b = extract_features(backbone, images, device="cpu").features
    assert a.tobytes() == b.tobytes()


def test_refuses_non_uint8_images(backbone):
    with pytest.raises(ValueError, match="uint8"):
        extract_features(backbone, np.zeros((2, 8, 8, 3), dtype=np.float32), device="cpu")


def test_precision_resolution():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_empty_split_gives_empty_features(backbone):
    result = extract_features(backbone, np.zeros((0, 8, 8, 3), dtype=np.uint8), device="cpu")
    assert result.features.shape == (0, 1280)


def test_sharded_extraction_resumes_from_saved_shards(backbone, tmp_path):
    from transfer_lab.extract import Extractor, extract_sharded

    images = np.random.default_rng(3).integers(0, 256, size=(23, 12, 12, 3), dtype=np.uint8)
    extractor = Extractor(backbone, "cpu", "fp32")
    whole = extract_sharded(extractor, images, tmp_path / "a", shard_size=5, batch_size=4)
    shards = tmp_path / "a" / "cpu-fp32"  # the device type and precision they were computed at
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-{k:05d}.npy" for k in range(5)]
    assert whole.n_computed == 23
    # A killed run leaves some shards: the rerun computes only the others, same features.
    for k in (1, 3, 4):
        (shards / f"shard-{k:05d}.npy").unlink()
    resumed = extract_sharded(extractor, images, tmp_path / "a", shard_size=5, batch_size=4)
    assert resumed.n_computed == 5 + 5 + 3
    assert resumed.features.tobytes() == whole.features.tobytes()
    # A shard of the wrong shape is recomputed, not trusted.
    np.save(shards / "shard-00002.npy", np.zeros((2, 1280), dtype=np.float32))
    repaired = extract_sharded(extractor, images, tmp_path / "a", shard_size=5, batch_size=4)
    assert repaired.n_computed == 5 and repaired.features.tobytes() == whole.features.tobytes()


def test_a_resumed_job_at_another_precision_reuses_no_shard(backbone, tmp_path):
    """A job killed on a GPU node (bf16 shards) and resumed on a CPU node (fp32) starts over."""
    from transfer_lab.extract import Extractor, extract_sharded

    images = np.random.default_rng(5).integers(0, 256, size=(12, 12, 12, 3), dtype=np.uint8)
    bf16 = extract_sharded(Extractor(backbone, "cpu", "bf16"), images, tmp_path, shard_size=5, batch_size=4)
    (tmp_path / "cpu-bf16" / "shard-00002.npy").unlink()  # killed before its last shard
    fp32 = extract_sharded(Extractor(backbone, "cpu", "fp32"), images, tmp_path, shard_size=5, batch_size=4)
    assert fp32.n_computed == 12 and fp32.precision == "fp32"
    reference = extract_sharded(Extractor(backbone, "cpu", "fp32"), images, tmp_path / "b", shard_size=5,
                                batch_size=4)
    assert fp32.features.tobytes() == reference.features.tobytes() != bf16.features.tobytes()


def test_a_truncated_shard_is_recomputed_with_one_warning(backbone, tmp_path, caplog):
    from transfer_lab.extract import Extractor, extract_sharded

    images = np.random.default_rng(4).integers(0, 256, size=(12, 12, 12, 3), dtype=np.uint8)
    extractor = Extractor(backbone, "cpu", "fp32")
    whole = extract_sharded(extractor, images, tmp_path, shard_size=5, batch_size=4)
    shard = tmp_path / "cpu-fp32" / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut short, as by a full disk
    with caplog.at_level(logging.WARNING):
        repaired = extract_sharded(extractor, images, tmp_path, shard_size=5, batch_size=4)
    assert repaired.n_computed == 5 and repaired.features.tobytes() == whole.features.tobytes()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{shard}: unreadable shard (ValueError"), warnings
    assert np.load(shard).tobytes() == whole.features[5:10].tobytes()  # rewritten whole


def test_extraction_reads_a_memory_mapped_split(backbone, tmp_path):
    """Prepared files are read by mapping: the split's rows, batch by batch."""
    from transfer_lab.datasets import SplitSpec, load_prepared, prepare_dataset, save_prepared
    from transfer_lab.sources import dataset_spec

    split = SplitSpec(validation_fraction=0.2, test_fraction=0.2, seed=0)
    ds = prepare_dataset(dataset_spec({"source": "digits"}), split)
    save_prepared(ds, tmp_path / "d.npz")
    mapped = load_prepared(tmp_path / "d.npz", mmap=True)
    assert isinstance(mapped.images, np.memmap)
    images, labels = mapped.subset("validation")
    assert isinstance(images, np.memmap)  # a view of one contiguous block, nothing read yet
    expected_images, expected_labels = ds.subset("validation")
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
    a = extract_features(backbone, images[:20], batch_size=8, device="cpu").features
    b = extract_features(backbone, np.array(expected_images[:20]), batch_size=8, device="cpu").features
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("n, parts, shard_size, expected", [
    (23, 1, 5, [(0, 23)]),
    (23, 2, 5, [(0, 10), (10, 23)]),  # 5 shards: 2 and 3
    (23, 5, 5, [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]),
    (100, 3, 10, [(0, 30), (30, 60), (60, 100)]),
])
def test_parts_are_cut_on_shard_boundaries_and_cover_the_split(n, parts, shard_size, expected):
    from transfer_lab.extract import part_bounds

    assert part_bounds(n, parts, shard_size) == expected


def test_more_parts_than_shards_is_refused_naming_the_setting_and_the_split():
    from transfer_lab.extract import part_bounds

    with pytest.raises(ValueError) as err:
        part_bounds(23, 6, 5, "split train of digits")
    assert str(err.value).startswith("extract.parts: 6 for split train of digits, which has 23 images, 5 shard(s) "
                                     "of extract.shard_size 5")
    assert "at most 5" in str(err.value)


def _records(bounds: list[tuple[int, int]], **fields) -> list[dict]:
    """What extract_part jobs record beside their features (as JSON gives them back)."""
    return [{"part": k, "parts": len(bounds), "rows": [lo, hi], "device": "cpu", "precision": "fp32",
             "meta": {"network": "n"}, **fields} for k, (lo, hi) in enumerate(bounds)]


@pytest.fixture(scope="module")
def small_backbone():
    return load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=32))


def test_gathered_parts_are_the_one_part_features_byte_for_byte(small_backbone, tmp_path):
    from transfer_lab.extract import Extractor, extract_sharded, gather_parts, part_bounds

    images = np.random.default_rng(4).integers(0, 256, size=(23, 12, 12, 3), dtype=np.uint8)
    extractor = Extractor(small_backbone, "cpu", "fp32")
    whole = extract_sharded(extractor, images, tmp_path / "whole", shard_size=5, batch_size=4).features
    bounds = part_bounds(len(images), 3, shard_size=5)
    assert bounds == [(0, 5), (5, 15), (15, 23)]
    paths = []
    for k, (lo, hi) in enumerate(bounds):  # as the extract_part jobs compute them
        paths.append(tmp_path / f"part-{k + 1}.npy")
        np.save(paths[-1], extract_sharded(extractor, images[lo:hi], tmp_path / f"p{k}", 5, 4).features)
    gathered = gather_parts(paths, _records(bounds), len(images))
    assert gathered.dtype == np.float32 and gathered.tobytes() == whole.tobytes()


def test_gathering_refuses_parts_that_were_not_computed_alike_or_do_not_cover_the_split(tmp_path):
    from transfer_lab.extract import gather_parts

    bounds = [(0, 5), (5, 12)]
    paths = [tmp_path / "part-1.npy", tmp_path / "part-2.npy"]
    for path, (lo, hi) in zip(paths, bounds, strict=True):
        np.save(path, np.ones((hi - lo, 4), np.float32))
    assert gather_parts(paths, _records(bounds), 12).shape == (12, 4)
    bad = _records(bounds)
    bad[1]["precision"] = "bf16"
    with pytest.raises(ValueError, match="part-2.npy: computed with precision 'bf16', part 1 with 'fp32'"):
        gather_parts(paths, bad, 12)
    bad = _records([(0, 5), (6, 12)])  # made with another shard size
    with pytest.raises(ValueError, match="rows 6..12, expected to start at 5"):
        gather_parts(paths, bad, 12)
    with pytest.raises(ValueError, match="the parts cover 12 rows, the split has 13 images"):
        gather_parts(paths, _records(bounds), 13)
    with pytest.raises(ValueError, match="part 2 of 2, expected part 1 of 2"):
        gather_parts(paths[::-1], _records(bounds)[::-1], 12)
    np.save(paths[1], np.ones((7, 4), np.float64))
    with pytest.raises(ValueError, match="part-2.npy: float64 \\(7, 4\\), expected float32 \\(7, 4\\)"):
        gather_parts(paths, _records(bounds), 12)


def test_parts_are_one_number_or_per_split():
    from transfer_lab.specs import ExtractSettings

    assert ExtractSettings().parts_for("train") == 1
    assert ExtractSettings(parts=4).parts_for("test") == 4
    per_split = ExtractSettings(parts={"train": 8})
    assert (per_split.parts_for("train"), per_split.parts_for("validation")) == (8, 1)
