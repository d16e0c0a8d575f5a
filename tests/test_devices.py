"""Claiming one GPU per job on a machine with several (simulated: these machines have none)."""

import pytest
import torch

from transfer_lab import devices


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    held = list(devices._held)
    yield
    for handle in devices._held[len(held):]:
        handle.close()
    devices._held[:] = held


def test_concurrent_jobs_claim_different_gpus(two_gpus, tmp_path):
    first = devices.claim_device("auto", lock_dir=tmp_path)
    second = devices.claim_device("auto", lock_dir=tmp_path)
    assert (first, second) == (torch.device("cuda", 0), torch.device("cuda", 1))
    # More jobs than GPUs (a --resources gpu= larger than the machine): shares cuda:0, says so.
    assert devices.claim_device("auto", lock_dir=tmp_path) == torch.device("cuda", 0)


def test_a_released_gpu_is_claimed_again(two_gpus, tmp_path):
    assert devices.claim_device("cuda", lock_dir=tmp_path) == torch.device("cuda", 0)
    devices._held.pop().close()  # the job that held cuda:0 ended
    assert devices.claim_device("cuda", lock_dir=tmp_path) == torch.device("cuda", 0)


def test_cpu_and_single_gpu_need_no_claim(monkeypatch, tmp_path):
    assert devices.claim_device("cpu", lock_dir=tmp_path) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.claim_device("auto", lock_dir=tmp_path) == torch.device("cuda")
    assert not list(tmp_path.iterdir())


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        devices.resolve_device("cuda")
