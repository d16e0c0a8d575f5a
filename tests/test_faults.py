"""Faults: write errors, a full disk, running out of GPU memory, and SIGKILL at any moment.

Unit tests inject the fault into the library; the integration tests run Snakemake, kill
its whole process group at exact points (held there by a test hook,
``tests/hooks/sitecustomize.py``) and check that what the user reruns finishes with the same results
as a run that was never interrupted.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_workflow, run_env, snakemake, write_config

from transfer_lab import files
from transfer_lab.bottleneck import Bottleneck, read_bottleneck, write_bottleneck
from transfer_lab.extract import Extractor, extract_features, extract_sharded, is_out_of_memory
from transfer_lab.files import atomic_write
from transfer_lab.networks import load_backbone
from transfer_lab.specs import NetworkSpec

# --- write errors ------------------------------------------------------------------------


def _bottleneck(n: int = 20) -> Bottleneck:
    return Bottleneck(np.ones((n, 4), np.float32), np.zeros(n, np.int64), ["a"], {"network": "x"})


def test_disk_full_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "out" / "x_bottleneck_features_train.p"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_bottleneck(path, _bottleneck())
    assert str(info.value) == f"[Errno {errno.ENOSPC}] cannot write {path}: No space left on device"
    assert info.value.errno == errno.ENOSPC
    assert list(path.parent.iterdir()) == []


def test_write_error_keeps_the_previous_complete_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text('{"complete": true}')

    class FailingFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    # atomic_write's own open() only (a module global shadows the builtin).
    monkeypatch.setattr(files, "open", lambda *a, **k: FailingFile(open(*a, **k)), raising=False)
    with pytest.raises(OSError, match=f"cannot write {path}: Input/output error"):
        with atomic_write(path, "w") as f:
            json.dump({"complete": False}, f)
    monkeypatch.undo()
    assert path.read_text() == '{"complete": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_an_error_about_another_file_keeps_its_own_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        with atomic_write(tmp_path / "out.bin") as f:
            f.write((tmp_path / "missing-input").read_bytes())
    assert info.value.filename == str(tmp_path / "missing-input")
    assert list(tmp_path.iterdir()) == []


def test_leftover_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".result.p.tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"half")
    alive = tmp_path / f".result.p.tmp-{os.getppid()}"  # a live process: never touched
    alive.write_bytes(b"busy")
    with atomic_write(tmp_path / "result.p") as f:
        f.write(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["result.p", alive.name])


def _file_size_limited(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.integration
def test_full_disk_fails_the_job_naming_the_path(tmp_path):
    """Files may not grow past 100 kB (RLIMIT_FSIZE: a full disk, without root): the
    prepared digits (171 kB) cannot be written; the job fails and leaves nothing."""
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, CONFIG)
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--nocolor", "results/datasets/digits.npz"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_file_size_limited(100_000),
    )
    assert proc.returncode != 0
    log = (workdir / "results/logs/prepare_dataset/digits.log").read_text()
    assert "OSError: [Errno 27] cannot write results/datasets/digits.npz: File too large" in log, log
    assert "results/logs/prepare_dataset/digits.log" in proc.stderr + proc.stdout
    out = workdir / "results/datasets"
    assert not out.exists() or list(out.iterdir()) == []


# --- out of GPU memory ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone():
    # One thread: tiny batches on a busy 2-core machine are many times slower with more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_backbone(NetworkSpec(arch="timm:tf_efficientnet_lite0", weights="random", input_size=32))
    torch.set_num_threads(threads)


def _oom_above(backbone, limit: int, monkeypatch) -> list[int]:
    """Make the model fail as CUDA does on batches larger than ``limit``; returns the sizes it saw."""
    seen = []
    forward = backbone.model.forward

    def forward_or_oom(x):
        seen.append(len(x))
        if len(x) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(x)

    monkeypatch.setattr(backbone.model, "forward", forward_or_oom)
    return seen


def test_out_of_memory_halves_the_batch_logs_it_and_gives_the_same_features(backbone, monkeypatch, caplog):
    images = np.random.default_rng(0).integers(0, 256, size=(37, 12, 12, 3), dtype=np.uint8)
    at_four = extract_features(backbone, images, batch_size=4, device="cpu").features
    at_sixteen = extract_features(backbone, images, batch_size=16, device="cpu").features
    seen = _oom_above(backbone, 4, monkeypatch)
    with caplog.at_level(logging.WARNING):
        result = extract_features(backbone, images, batch_size=16, device="cpu")
    assert seen[:3] == [16, 8, 4] and set(seen[3:]) == {4, 1}  # later batches stay at 4
    assert result.features.tobytes() == at_four.tobytes()
    np.testing.assert_allclose(result.features, at_sixteen, rtol=1e-4, atol=1e-5)
    assert [r.getMessage() for r in caplog.records] == [
        "out of memory on cpu at batch size 16; retrying with batch size 8",
        "out of memory on cpu at batch size 8; retrying with batch size 4",
    ]


def test_smaller_batch_is_kept_across_shards(backbone, monkeypatch, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(24, 12, 12, 3), dtype=np.uint8)
    seen = _oom_above(backbone, 3, monkeypatch)
    extractor = Extractor(backbone, "cpu", "fp32")
    extract_sharded(extractor, images, tmp_path, shard_size=12, batch_size=12)
    assert seen[:3] == [12, 6, 3] and set(seen[3:]) == {3}
    assert extractor.max_batch_size == 3


def test_out_of_memory_at_batch_size_one_says_what_to_change(backbone, monkeypatch):
    _oom_above(backbone, 0, monkeypatch)
    images = np.zeros((3, 12, 12, 3), np.uint8)
    with pytest.raises(RuntimeError, match=r"out of memory on cpu at batch size 1 .*smaller input_size"):
        extract_features(backbone, images, batch_size=2, device="cpu")


def test_other_errors_are_not_taken_for_out_of_memory():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


# --- SIGKILL at any moment, and reproducibility -------------------------------------------


def quickstart_trimmed() -> dict:
    """The quickstart grid trimmed to CI size: its digits and splits and seeds, its
    linear and MLP heads (5 epochs; the deterministic L-BFGS logreg head left out), and its
    random-weights EfficientNet-Lite0 at input 32 (the pretrained twin adds time, not
    coverage: both load deterministically)."""
    import yaml
    from conftest import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["networks"] = {"lite0": {**config["networks"]["efficientnet_lite0_random"], "input_size": 32}}
    assert config["networks"]["lite0"]["weights"] == "random"
    config["heads"] = {name: {**config["heads"][name], "epochs": 5} for name in ("linear", "mlp")}
    if "predict" in config:  # it names a network and a head of the grid
        config["predict"].update(network="lite0", head="linear")
    config["extract"].update(batch_size=64, shard_size=256, threads=1)
    return config


CONFIG = quickstart_trimmed()


def _tree(workdir: Path) -> dict:
    """Everything a user takes from a run, minus what measures time (seconds, rates)
    and how much of it a resumed job had left to compute."""
    timing = {"seconds", "images_per_second", "train_seconds", "n_computed", "extract_seconds", "head_seconds"}

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in timing}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    import pandas as pd

    results = workdir / "results"
    out = {p.relative_to(results).as_posix(): p.read_bytes()
           for p in sorted(results.glob("bottleneck/*.p")) + sorted(results.glob("heads/*.pt"))}
    for p in sorted(results.glob("heads/*.json")) + sorted(results.glob("extract/*.json")):
        out[p.relative_to(results).as_posix()] = strip(json.loads(p.read_text()))
    table = pd.read_csv(results / "comparison.csv")
    table = table.drop(columns=[c for c in table if c in timing]).astype(object).fillna("NA")  # NaN != NaN
    out["comparison.csv"] = table.to_dict("list")
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("uninterrupted") / "wd")
    write_config(workdir, CONFIG)
    snakemake(workdir)
    return workdir


def _killed_at(workdir: Path, pattern: str, unlock: bool = False, timeout: float = 300) -> list[Path]:
    """Run the workflow until a job is writing a file matching ``pattern`` (held there by
    the test hook), then SIGKILL Snakemake and all its jobs. Returns the temporary files seen.

    ``unlock``: then run ``snakemake --unlock`` as a user does; otherwise remove the lock
    files it would remove (each Snakemake start costs seconds of imports)."""
    env = run_env(workdir, hooks={"TRANSFER_LAB_TEST_HOLD": pattern})
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor", "--rerun-incomplete"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    def writing() -> list[Path]:
        """Temporary files (``.NAME.tmp-PID``) of outputs that match ``pattern``.

        ``os.walk`` passes over a folder that a finishing job removes while it is being
        listed (a shard folder), where ``Path.rglob`` raises."""
        found = []
        for root, _, names in os.walk(workdir / "results"):
            for name in fnmatch.filter(names, ".*.tmp-*"):
                target = Path(root, name[1:].rsplit(".tmp-", 1)[0])
                if fnmatch.fnmatch(target.relative_to(workdir).as_posix(), pattern):
                    found.append(Path(root, name))
        return found

    deadline = time.monotonic() + timeout
    held: list[Path] = []
    while not held and time.monotonic() < deadline and proc.poll() is None:
        held = writing()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert held, f"no job reached a write of {pattern} (snakemake exited {proc.returncode})"
    locks = workdir / ".snakemake/locks"
    assert list(locks.iterdir()), "a killed Snakemake leaves its locks"
    if unlock:
        snakemake(workdir, "--unlock")  # what the user runs after a kill, then the same command again
        assert not locks.exists() or not list(locks.iterdir())
    else:
        for lock in locks.iterdir():
            lock.unlink()
    return held


@pytest.mark.integration
def test_runs_of_the_same_config_are_byte_identical(uninterrupted, tmp_path):
    again = copy_workflow(tmp_path / "again")
    write_config(again, CONFIG)
    snakemake(again)
    first, second = _tree(uninterrupted), _tree(again)
    assert first.keys() == second.keys()
    assert len([k for k in first if k.startswith("bottleneck/")]) == 3
    assert len([k for k in first if k.startswith("heads/") and k.endswith(".pt")]) == 2
    for key in first:
        assert first[key] == second[key], key
    lite0 = "lite0"
    # Every artifact records the seeds and the library versions.
    from transfer_lab.datasets import load_prepared
    from transfer_lab.heads import load_head

    dataset = load_prepared(again / "results/datasets/digits.npz").meta
    bottleneck = read_bottleneck(again / f"results/bottleneck/{lite0}_digits_bottleneck_features_train.p").meta
    head = load_head(again / f"results/heads/{lite0}_digits_linear.pt")[1]["meta"]
    metrics = json.loads((again / f"results/heads/{lite0}_digits_linear.json").read_text())["meta"]
    extraction = json.loads((again / f"results/extract/{lite0}_digits.json").read_text())["meta"]
    assert extraction["seed"] == 0 and extraction["init_seed"] == bottleneck["init_seed"]
    for meta in (dataset, bottleneck, head, metrics, extraction):
        assert meta["version_torch"].split("+")[0] == torch.__version__.split("+")[0]
        assert meta["version_numpy"] == np.__version__ and meta["version_scikit-learn"]
    assert dataset["seed"] == bottleneck["seed"] == head["split_seed"] == 0
    assert head["seed"] == metrics["seed"] == 0  # the head's own (schema default)


@pytest.mark.integration
def test_killed_at_any_point_the_rerun_gives_the_uninterrupted_results(uninterrupted, tmp_path):
    workdir = copy_workflow(tmp_path / "killed")
    write_config(workdir, CONFIG)
    results = workdir / "results"

    # 1. Preparing the dataset: writing digits.npz.
    _killed_at(workdir, "*/digits.npz")
    assert not (results / "datasets/digits.npz").exists()

    # 2. Extracting: one shard of a split written, the second being written.
    held = _killed_at(workdir, "*/rows-0000000256-*.npy")  # shards of 256 images (extract.shard_size)
    assert all(list(p.parent.glob("rows-0000000000-0000000256.npy")) for p in held)
    assert not list(results.glob("bottleneck/*.p"))

    # 3. Gathering: the train split's bottleneck pickle being written.
    _killed_at(workdir, "*_bottleneck_features_train.p")
    assert not (results / "bottleneck/lite0_digits_bottleneck_features_train.p").exists()

    # 4. Head training: the head file written, its metrics not yet.
    _killed_at(workdir, "results/heads/*.json", unlock=True)
    assert list(results.glob("heads/*.pt")) and not list(results.glob("heads/*.json"))

    snakemake(workdir, "--rerun-incomplete")
    log = (results / "logs/extract_features/lite0_digits.log").read_text()
    resumed = re.search(r"resuming: (\d+) of (\d+) images already extracted", log)
    assert resumed and resumed[1] == resumed[2], log  # the kill in step 3 lost no shard
    assert not list(results.rglob(".*.tmp-*")), list(results.rglob(".*.tmp-*"))
    assert not (results / "shards").exists() or not list((results / "shards").rglob("*.npy"))
    expected, got = _tree(uninterrupted), _tree(workdir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert expected[key] == got[key], key
