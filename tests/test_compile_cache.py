"""Compilation paid once: the compile cache's folder, ``compile: auto``'s rule, and a second
process that reuses the first one's compiled graph."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO

from transfer_lab.extract import (
    AUTO_COMPILE_MIN_IMAGES,
    Extractor,
    auto_compile,
    compile_cache_dir,
    resolve_compile,
    use_compile_cache,
)
from transfer_lab.networks import Backbone
from transfer_lab.preprocess import Preprocess
from transfer_lab.specs import ExtractSettings


@pytest.mark.parametrize("device, n, on", [
    ("cpu", None, False), ("cpu", 10, False), ("cpu", 10**9, False),  # never on the CPU (benchmarks/README.md)
    ("cuda", None, False), ("cuda", AUTO_COMPILE_MIN_IMAGES["cuda"] - 1, False),
    ("cuda", AUTO_COMPILE_MIN_IMAGES["cuda"], True), ("cuda", 10**9, True),
    ("mps", 10**9, False),  # not measured
])
def test_auto_compiles_only_where_it_pays(device, n, on):
    assert auto_compile(device, n)[0] is on


def test_resolve_compile_logs_the_choice_of_auto_and_keeps_the_others(caplog):
    with caplog.at_level(logging.INFO, logger="transfer_lab.extract"):
        assert resolve_compile("auto", "cpu", 5000) is False
    assert "compile: auto -> off (cpu)" in caplog.text
    for setting in (False, True, "max-autotune"):
        assert resolve_compile(setting, "cpu", 5000) == setting
    with pytest.raises(ValueError, match="extract.compile must be one of"):
        resolve_compile("yes", "cpu")


def test_the_cache_folder_is_per_torch_version_and_device_under_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = compile_cache_dir(None, "cpu")
    version = torch.__version__.replace("+", "_")
    assert default == tmp_path / f"xdg/transfer-lab/compile/{version}-cpu"
    shared = compile_cache_dir(str(tmp_path / "shared"), torch.device("cpu"))  # extract.compile_cache
    assert shared == tmp_path / f"shared/{version}-cpu"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))  # the user's own choice, kept
    assert compile_cache_dir(None, "cpu") == tmp_path / "theirs"
    assert compile_cache_dir(str(tmp_path / "shared"), "cpu") == shared  # the config's, first
    assert use_compile_cache(shared) == shared and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(shared)
    assert shared.is_dir()


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    return Backbone(model.eval(), Preprocess(8, 8, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), 4)


def test_an_extractor_that_does_not_compile_leaves_the_cache_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    extractor = Extractor(tiny_backbone(), "cpu", "fp32", compile="auto", n_images=10**9,
                          compile_cache=str(tmp_path / "cache"))
    assert extractor.compile is False and extractor.compile_cache is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and not (tmp_path / "cache").exists()


def test_compile_settings_default_to_auto_and_the_users_cache():
    settings = ExtractSettings()
    assert settings.compile == "auto" and settings.compile_cache is None


JOB = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch
    from torch._dynamo.utils import counters
    sys.path.insert(0, sys.argv[2])
    from test_compile_cache import tiny_backbone
    from transfer_lab.extract import Extractor

    torch.set_num_threads(1)
    extractor = Extractor(tiny_backbone(), "cpu", "fp32", compile=True, compile_cache=sys.argv[1])
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    features = extractor.run(images, batch_size=4)
    print(json.dumps({"cache": str(extractor.compile_cache), "features": features.tolist(),
                      "hit": counters["inductor"]["fxgraph_cache_hit"],
                      "miss": counters["inductor"]["fxgraph_cache_miss"]}))
""")


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor on the CPU needs a C++ compiler")
def test_a_second_job_reuses_the_first_ones_compiled_graph(tmp_path):
    """Two processes compile the same network at the same shape on the CPU, the cache in a
    folder of the test: the first misses and fills it, the second hits."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # a user's own folder must not decide the test
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", JOB, str(tmp_path / "cache"), str(REPO / "tests")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert Path(cold["cache"]).parent == tmp_path / "cache" and warm["cache"] == cold["cache"]
    assert cold["miss"] >= 1 and cold["hit"] == 0, cold
    assert warm["hit"] >= 1 and warm["miss"] == 0, warm
    assert any(Path(cold["cache"]).rglob("*")), "nothing written into the cache folder"
    assert warm["features"] == cold["features"]
