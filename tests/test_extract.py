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


def _shards(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_sharded_extraction_resumes_from_saved_shards(backbone, tmp_path):
    from transfer_lab.extract import Extractor, extract_sharded, shard_name

    images = np.random.default_rng(3).integers(0, 256, size=(23, 12, 12, 3), dtype=np.uint8)
    extractor = Extractor(backbone, "cpu", "fp32")
    # 5 images a shard, rounded up to whole batches of 4: 8.
    whole = extract_sharded(extractor, images, tmp_path / "a", shard_size=5, batch_size=4)
    shards = tmp_path / "a" / "cpu-fp32"  # the device type and precision they were computed at
    assert _shards(shards) == [shard_name(0, 8), shard_name(8, 16), shard_name(16, 23)]
    assert whole.n_computed == 23
    # A killed run leaves some shards: the rerun computes only the others, same features.
    (shards / shard_name(8, 16)).unlink()
    (shards / shard_name(16, 23)).unlink()
    resumed = extract_sharded(extractor, images, tmp_path / "a", shard_size=5, batch_size=4)
    assert resumed.n_computed == 8 + 7
    assert resumed.features.tobytes() == whole.features.tobytes()
    # A shard of the wrong shape is recomputed, not trusted.
    np.save(shards / shard_name(8, 16), np.zeros((2, 1280), dtype=np.float32))
    repaired = extract_sharded(extractor, images, tmp_path / "a", shard_size=5, batch_size=4)
    assert repaired.n_computed == 8 and repaired.features.tobytes() == whole.features.tobytes()


def test_a_rerun_with_another_shard_size_reuses_the_shards_and_fills_the_gaps(backbone, tmp_path):
    """Shards are named by their rows: a rerun that would cut other shards (another
    extract.shard_size, or auto's measured speed) computes only the rows none covers, and
    the batches stay where a one-shard run puts them, so the features are the same bytes."""
    from transfer_lab.extract import Extractor, extract_sharded, shard_name

    images = np.random.default_rng(7).integers(0, 256, size=(30, 12, 12, 3), dtype=np.uint8)
    extractor = Extractor(backbone, "cpu", "fp32")
    one = extract_sharded(extractor, images, tmp_path / "one", shard_size=30, batch_size=4)
    assert _shards(tmp_path / "one" / "cpu-fp32") == [shard_name(0, 30)]
    shards = tmp_path / "b" / "cpu-fp32"
    extract_sharded(extractor, images, tmp_path / "b", shard_size=4, batch_size=4)
    for lo in (4, 16, 20):  # a kill, and shards lost in between
        (shards / shard_name(lo, lo + 4)).unlink()
    resumed = extract_sharded(extractor, images, tmp_path / "b", shard_size=12, batch_size=4)
    assert resumed.n_computed == 12
    assert shard_name(16, 24) in _shards(shards)  # one gap, one shard of two batches
    assert resumed.features.tobytes() == one.features.tobytes()
    # A shard whose rows overlap another's is not trusted: removed, its rows recomputed.
    np.save(shards / shard_name(2, 6), np.zeros((4, 1280), dtype=np.float32))
    again = extract_sharded(extractor, images, tmp_path / "b", batch_size=4)
    assert again.n_computed == 0 and shard_name(2, 6) not in _shards(shards)
    assert again.features.tobytes() == one.features.tobytes()


@pytest.mark.parametrize("shard_size, rate, expected", [
    (5, None, 2),  # 5 images: two batches of 4
    (8, 123.0, 2),  # a given size ignores the speed
    (None, None, 1),  # auto: the first shard is one batch, which measures the speed
    (None, float("nan"), 1),
    (None, 10.0, 150),  # 60 s at 10 images/s: 600 images, 150 batches of 4
    (None, 0.01, 1),  # slower than a batch a minute: one batch
    (None, 1e9, 512 * 2**20 // (4 * 1280 * 4)),  # as fast as it gets: the features' memory bound
])
def test_shards_are_whole_batches_of_about_a_minute_of_work(shard_size, rate, expected):
    from transfer_lab.extract import shard_batches

    assert shard_batches(4, 1280, shard_size, rate) == expected


def test_auto_shards_follow_the_measured_speed(backbone, tmp_path, monkeypatch):
    """With extract.shard_size auto, the first shard is one batch; the next ones hold about
    SHARD_SECONDS of work at the speed measured on the shard before (a clock that ticks
    one second per batch here, so the test does not depend on this machine's speed)."""
    from transfer_lab import extract as ex

    images = np.random.default_rng(8).integers(0, 256, size=(40, 12, 12, 3), dtype=np.uint8)
    extractor = ex.Extractor(backbone, "cpu", "fp32")
    clock = {"t": 0.0}
    real_run = extractor.run

    def run(rows, batch_size, bar=None):
        clock["t"] += -(-len(rows) // batch_size)  # one second a batch
        return real_run(rows, batch_size, bar)

    monkeypatch.setattr(extractor, "run", run)
    monkeypatch.setattr(ex.time, "perf_counter", lambda: clock["t"])
    result = ex.extract_sharded(extractor, images, tmp_path, batch_size=4, shard_seconds=3)
    # 1 batch (1 s: 4 images/s), then 3 s of work: 3 batches, and so on; the last is short.
    assert _shards(tmp_path / "cpu-fp32") == [ex.shard_name(lo, hi) for lo, hi in
                                               [(0, 4), (4, 16), (16, 28), (28, 40)]]
    assert result.n_computed == 40 and result.seconds == 10
    reference = ex.extract_features(backbone, images, batch_size=4, device="cpu")
    assert result.features.tobytes() == reference.features.tobytes()


def test_a_resumed_job_at_another_precision_reuses_no_shard(backbone, tmp_path):
    """A job killed on a GPU node (bf16 shards) and resumed on a CPU node (fp32) starts over."""
    from transfer_lab.extract import Extractor, extract_sharded, shard_name

    images = np.random.default_rng(5).integers(0, 256, size=(12, 12, 12, 3), dtype=np.uint8)
    bf16 = extract_sharded(Extractor(backbone, "cpu", "bf16"), images, tmp_path, shard_size=4, batch_size=4)
    (tmp_path / "cpu-bf16" / shard_name(8, 12)).unlink()  # killed before its last shard
    fp32 = extract_sharded(Extractor(backbone, "cpu", "fp32"), images, tmp_path, shard_size=4, batch_size=4)
    assert fp32.n_computed == 12 and fp32.precision == "fp32"
    reference = extract_sharded(Extractor(backbone, "cpu", "fp32"), images, tmp_path / "b", shard_size=4,
                                batch_size=4)
    assert fp32.features.tobytes() == reference.features.tobytes() != bf16.features.tobytes()


def test_a_truncated_shard_is_recomputed_with_one_warning(backbone, tmp_path, caplog):
    from transfer_lab.extract import Extractor, extract_sharded, shard_name

    images = np.random.default_rng(4).integers(0, 256, size=(12, 12, 12, 3), dtype=np.uint8)
    extractor = Extractor(backbone, "cpu", "fp32")
    whole = extract_sharded(extractor, images, tmp_path, shard_size=4, batch_size=4)
    shard = tmp_path / "cpu-fp32" / shard_name(4, 8)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # cut short, as by a full disk
    with caplog.at_level(logging.WARNING):
        repaired = extract_sharded(extractor, images, tmp_path, shard_size=4, batch_size=4)
    assert repaired.n_computed == 4 and repaired.features.tobytes() == whole.features.tobytes()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{shard}: unreadable shard (ValueError"), warnings
    assert np.load(shard).tobytes() == whole.features[4:8].tobytes()  # rewritten whole


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


@pytest.mark.parametrize("sizes, parts, batch_size, expected", [
    ({"train": 23}, 1, 5, [[("train", 0, 23)]]),
    ({"train": 23}, 2, 5, [[("train", 0, 10)], [("train", 10, 23)]]),  # 5 batches: 2 and 3
    ({"train": 100}, 3, 10, [[("train", 0, 30)], [("train", 30, 60)], [("train", 60, 100)]]),
    # 1,600 images in 3 parts at batch 256 (7 batches: 2, 2, 3), whatever the shards.
    ({"train": 1600}, 3, 256, [[("train", 0, 512)], [("train", 512, 1024)], [("train", 1024, 1600)]]),
    # Every split's batches from its own first row; a part spans splits.
    ({"train": 12, "validation": 3, "test": 7}, 2, 5,  # batches 5 5 2 | 3 | 5 2: six, three each
     [[("train", 0, 12)], [("validation", 0, 3), ("test", 0, 7)]]),
    ({"train": 12, "validation": 3, "test": 7}, 4, 5,  # 6 batches: 1, 2, 1, 2
     [[("train", 0, 5)], [("train", 5, 12)], [("validation", 0, 3)], [("test", 0, 7)]]),
    # Fewer batches than parts: the first parts take one batch each, the last compute nothing.
    ({"train": 8, "test": 3}, 4, 5, [[("train", 0, 5)], [("train", 5, 8)], [("test", 0, 3)], []]),
    ({"train": 3}, 3, 256, [[("train", 0, 3)], [], []]),
])
def test_parts_are_cut_on_batch_boundaries_and_cover_the_dataset(sizes, parts, batch_size, expected):
    from transfer_lab.extract import part_bounds

    assert part_bounds(sizes, parts, batch_size) == expected


def test_more_parts_than_images_is_refused_naming_the_setting_and_the_dataset():
    from transfer_lab.extract import part_bounds

    with pytest.raises(ValueError) as err:
        part_bounds({"train": 3, "test": 2}, 6, 256, "dataset digits")
    assert str(err.value) == ("extract.parts: 6 for dataset digits, which has 5 image(s): each part needs "
                              "at least one. Set extract.parts to at most 5 for this dataset.")


def _records(bounds: list[list[tuple[str, int, int]]], **fields) -> list[dict]:
    """What extract_part jobs record beside their features (as JSON gives them back)."""
    return [{"part": k, "parts": len(bounds), "segments": [list(s) for s in segments], "device": "cpu",
             "precision": "fp32", "meta": {"network": "n"}, **fields} for k, segments in enumerate(bounds)]


@pytest.fixture(scope="module")
def small_backbone():
    return load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=32))


def test_gathered_parts_are_the_one_part_features_byte_for_byte(small_backbone, tmp_path):
    from transfer_lab.extract import Extractor, extract_sharded, gather_parts, part_bounds

    rng = np.random.default_rng(4)
    images = {split: rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
              for split, n in (("train", 23), ("validation", 6), ("test", 9))}
    sizes = {split: len(x) for split, x in images.items()}
    extractor = Extractor(small_backbone, "cpu", "fp32")
    whole = {split: extract_sharded(extractor, x, tmp_path / f"whole-{split}", batch_size=4).features
             for split, x in images.items()}
    bounds = part_bounds(sizes, 3, batch_size=4)  # 6 + 2 + 3 batches: 3, 4, 4
    assert bounds == [[("train", 0, 12)], [("train", 12, 23), ("validation", 0, 4)],
                      [("validation", 4, 6), ("test", 0, 9)]]
    paths = []
    for k, segments in enumerate(bounds):  # as the extract_part jobs compute them, in shards of their own
        paths.append(tmp_path / f"part-{k + 1}.npy")
        np.save(paths[-1], np.concatenate([
            extract_sharded(extractor, images[split][lo:hi], tmp_path / f"p{k}-{split}", 4, 4).features
            for split, lo, hi in segments]))
    gathered = gather_parts(paths, _records(bounds), sizes)
    assert list(gathered) == ["train", "validation", "test"]
    for split in sizes:
        assert gathered[split].dtype == np.float32 and gathered[split].tobytes() == whole[split].tobytes()


def test_empty_parts_are_gathered_as_nothing(tmp_path):
    """A dataset of fewer batches than parts: the empty parts' jobs wrote (0, 0) arrays and
    records without a device, precision or meta; the gather skips them."""
    from transfer_lab.extract import gather_parts

    bounds = [[("train", 0, 4)], [("train", 4, 6), ("test", 0, 1)], []]
    records = _records(bounds)
    records[2].update(device=None, precision=None, meta=None)
    paths = [tmp_path / f"part-{k}.npy" for k in (1, 2, 3)]
    np.save(paths[0], np.ones((4, 3), np.float32))
    np.save(paths[1], np.array([[2] * 3, [2] * 3, [3] * 3], np.float32))
    np.save(paths[2], np.empty((0, 0), np.float32))
    gathered = gather_parts(paths, records, {"train": 6, "test": 1})
    assert gathered["train"].tolist() == [[1.0] * 3] * 4 + [[2.0] * 3] * 2
    assert gathered["test"].tolist() == [[3.0] * 3]


def test_gathering_refuses_parts_that_were_not_computed_alike_or_do_not_cover_the_dataset(tmp_path):
    from transfer_lab.extract import gather_parts

    bounds = [[("train", 0, 5)], [("train", 5, 8), ("test", 0, 4)]]
    sizes = {"train": 8, "test": 4}
    paths = [tmp_path / "part-1.npy", tmp_path / "part-2.npy"]
    for path, rows in zip(paths, (5, 7), strict=True):
        np.save(path, np.ones((rows, 4), np.float32))
    assert {k: v.shape for k, v in gather_parts(paths, _records(bounds), sizes).items()} == {
        "train": (8, 4), "test": (4, 4)}
    bad = _records(bounds)
    bad[1]["precision"] = "bf16"
    with pytest.raises(ValueError, match="part-2.npy: computed with precision 'bf16', part 1 with 'fp32'"):
        gather_parts(paths, bad, sizes)
    bad = _records([[("train", 0, 5)], [("train", 6, 8), ("test", 0, 4)]])  # made with another batch size
    with pytest.raises(ValueError, match="rows 6..8 of split train, expected split train from row 5"):
        gather_parts(paths, bad, sizes)
    bad = _records([[("train", 0, 5)], [("train", 5, 8), ("validation", 0, 4)]])  # another dataset's splits
    with pytest.raises(ValueError, match="rows 0..4 of split validation, expected split test from row 0"):
        gather_parts(paths, bad, sizes)
    with pytest.raises(ValueError, match="the parts cover 12 rows, the dataset has 13 images"):
        gather_parts(paths, _records(bounds), {"train": 8, "test": 5})
    with pytest.raises(ValueError, match="part 2 of 2, expected part 1 of 2"):
        gather_parts(paths[::-1], _records(bounds)[::-1], sizes)
    np.save(paths[1], np.ones((7, 4), np.float64))
    with pytest.raises(ValueError, match="part-2.npy: float64 \\(7, 4\\), expected float32 \\(7, 4\\)"):
        gather_parts(paths, _records(bounds), sizes)


def test_first_batch_callback_runs_once_after_the_first_batch(small_backbone):
    """A job's timing marks its first batch (start-up, lazy initialisation, compilation) apart
    from the work after it: the extractor calls back once, whatever the runs and batches."""
    from transfer_lab.extract import Extractor

    extractor = Extractor(small_backbone, "cpu", "fp32")
    seen = []
    extractor.on_first_batch = lambda: seen.append(len(seen))
    images = np.zeros((5, 12, 12, 3), dtype=np.uint8)
    extractor.run(images, batch_size=2)
    extractor.run(images, batch_size=2)
    assert seen == [0] and extractor.on_first_batch is None
