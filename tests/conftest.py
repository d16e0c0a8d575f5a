import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# sitecustomize hooks for the processes of a run (hold a rename, record imports): on PYTHONPATH where a test needs them.
HOOKS = Path(__file__).resolve().parent / "hooks"


# The test files that take longest (measured on the 2-core CI machine), longest first: `make
# test` runs files on two workers in this order (--dist loadfile --no-loadscope-reorder), so
# the long ones start at once and the short ones fill the gaps, and neither worker idles
# at the end waiting for the other. The other files follow in their usual order.
LONGEST_FIRST = (
    "test_reruns.py", "test_selection_workflow.py", "test_quickstart.py", "test_lab_grid.py", "test_faults.py", "test_workflow.py",
    "test_slurm.py", "test_finetune.py", "test_resume.py", "test_predict.py", "test_cache.py", "test_timm_workflow.py",
    "test_own_files.py", "test_benchmarks.py", "test_torchvision_sources.py", "test_source_plugin.py",
    "test_catalog.py", "test_networks.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def copy_workflow(dest: Path) -> Path:
    """A private copy of the workflow and its library, so tests may edit either."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    shutil.copy2(REPO / "config.yaml", dest / "config.yaml")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "workflow", dest / "workflow", ignore=ignore)
    shutil.copytree(REPO / "src", dest / "src", ignore=ignore)
    shutil.copytree(REPO / "profiles", dest / "profiles", ignore=ignore)
    return dest


def copy_run(workdir: Path, dest: Path) -> Path:
    """A copy of a run's folder (results, Snakemake's records, modification times kept), for
    one test to change without touching the run other tests copy."""
    shutil.copytree(workdir, dest, symlinks=True, copy_function=shutil.copy2)
    return dest


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Run:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.output = proc.stdout + proc.stderr
        # Snakemake announces each job as "rule NAME:" or "localrule NAME:".
        self.jobs = Counter(re.findall(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):", self.output, flags=re.M))
        self.jobs.pop("all", None)


def run_env(workdir: Path, hooks: dict | None = None) -> dict:
    """The environment of a run against the copied library (first on PYTHONPATH), with the
    test hooks that ``hooks`` switches on (variables of tests/hooks/sitecustomize.py)."""
    path = [str(workdir / "src")] if not hooks else [str(HOOKS), str(workdir / "src")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONDONTWRITEBYTECODE": "1", **(hooks or {})}


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None,
              hooks: dict | None = None) -> Run:
    """Run Snakemake in ``workdir`` against the copied library."""
    env = {**run_env(workdir, hooks), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--nocolor", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )
    run = Run(proc)
    if check and run.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed ({run.returncode}):\n{run.output[-6000:]}")
    return run
