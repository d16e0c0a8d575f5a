"""How long `snakemake -n` takes on the quickstart, and how much memory, against Snakemake alone.

Every `snakemake` call parses the workflow (and validates its config) before it does
anything, and so does every cluster job. This measures, in one run, on a copy of the
workflow:

- **snakemake alone**: `snakemake -n` on a workflow of one shell rule (Snakemake's own
  start-up, plugins and planning: the floor);
- **dry run**: `snakemake -n` on the quickstart config (parse, validate, plan 27 jobs),
  once the architecture catalog is cached (transfer_lab.catalog; the first call on a new
  environment builds it);
- **catalog**: the same dry run with an empty cache folder, which reads torchvision and timm.

Each is the median of --repeat runs: wall seconds and peak resident memory (MB) of the
process tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Runs a command and prints the peak resident memory of its process tree (children's maximum).
MEASURE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
           "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure(command: list[str], cwd: Path, env: dict, repeat: int, fresh_cache: Path | None = None) -> tuple[float, float]:
    """Median wall seconds and peak memory (MB) of ``command`` over ``repeat`` runs."""
    seconds, megabytes = [], []
    for _ in range(repeat):
        if fresh_cache is not None:
            shutil.rmtree(fresh_cache, ignore_errors=True)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=cwd, env=env, capture_output=True,
                             text=True, check=True)
        seconds.append(time.perf_counter() - start)
        megabytes.append(int(out.stdout) / 1024)
    return statistics.median(seconds), statistics.median(megabytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "wd"
        workdir.mkdir()
        for name in ("Snakefile", "config.yaml"):
            shutil.copy2(REPO / name, workdir / name)
        for name in ("workflow", "profiles"):
            shutil.copytree(REPO / name, workdir / name)
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        snakemake = [sys.executable, "-m", "snakemake", "--cores", "4"]
        measure([*snakemake, "-n"], workdir, env, 1)  # the catalog cached in the user's cache folder
        floor = Path(tmp) / "floor"
        floor.mkdir()
        (floor / "Snakefile").write_text('rule all:\n    output: "a.txt"\n    shell: "touch {output}"\n')
        alone = measure([*snakemake, "-n"], floor, env, args.repeat)
        dry = measure([*snakemake, "-n"], workdir, env, args.repeat)
        cache = Path(tmp) / "cache"
        cold = measure([*snakemake, "-n"], workdir, {**env, "XDG_CACHE_HOME": str(cache)}, args.repeat,
                       fresh_cache=cache)
    print(f"{'snakemake alone':<16} {alone[0]:6.2f} s {alone[1]:7.0f} MB")
    print(f"{'dry run':<16} {dry[0]:6.2f} s {dry[1]:7.0f} MB")
    print(f"{'catalog':<16} {cold[0]:6.2f} s {cold[1]:7.0f} MB   (dry run with an empty cache folder)")
    print(f"ratio dry run/snakemake alone {dry[0] / alone[0]:.2f}")
    print(f"ratio catalog/dry run         {cold[0] / dry[0]:.2f}")


if __name__ == "__main__":
    main()
