"""The benchmark runs (CI-sized, on the CPU) and prints its ratios; no timing is asserted."""

import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration


def test_throughput_benchmark_prints_its_ratios():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/extract_throughput.py"), "--arch", "resnet18",
         "--input-size", "64", "--n", "128", "--batch-size", "32", "--device", "cpu", "--threads", "2",
         "--workers", "0"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    for label in ("bare forward", "end to end", "naive baseline"):
        assert float(re.search(rf"{label}\s+([\d.]+) img/s", out).group(1)) > 0, out
    for ratio in ("end2end/bare", "end2end/naive"):
        assert float(re.search(rf"ratio {ratio}\s+([\d.]+)", out).group(1)) > 0, out
