"""Which heavy packages each rule's job may import: the table, and the check of a run's records.

A job pays for every package it imports, at every start (measured on the 2-core CI machine
under load, warm file cache): torch 1.6-1.9 s, with torchvision 2.8-3.2 s, with timm (which
imports torchvision) 4.0-4.2 s; matplotlib.pyplot 0.4-0.5 s, sklearn.model_selection 1.1-1.4 s.
So preparation and the comparison import no torch, head jobs torch alone, and a job that
builds a torchvision network imports no timm. ``RULES`` says so for every rule of the
workflow (``tests/test_imports.py`` fails when a rule has no row), and names the test file
whose Snakemake run executes it with the imports hook on (``tests/hooks/sitecustomize.py``,
``TRANSFER_LAB_TEST_IMPORTS``); that file calls :func:`assert_job_imports` on its records,
which fails when one of its rules did not run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# What the hook records; sklearn is recorded but allowed everywhere (the stratified split and
# the digits source need it), the others are the table's.
CHECKED = ("torch", "torchvision", "timm", "matplotlib")
TORCHVISION = frozenset({"torch", "torchvision"})
TIMM = frozenset({"torch", "torchvision", "timm"})  # timm imports torchvision itself


def _data(record: dict) -> frozenset[str]:
    """A dataset's rules: nothing heavy, unless its source is one of torchvision's datasets."""
    return TORCHVISION if str(record.get("source")).startswith("torchvision:") else frozenset()


def _network(record: dict) -> frozenset[str]:
    """A network's rules: torch and torchvision, and timm only for a timm network."""
    arch = record.get("arch")
    assert arch, f"{record['rule']}: the record names no network arch: {record}"
    return TIMM if arch.startswith("timm:") else TORCHVISION


def _weights(record: dict) -> frozenset[str]:
    """fetch_weights: a torchvision checkpoint through torch's hub; timm's file through timm."""
    return TIMM if record["wildcards"]["weights_file"].startswith("timm/") else frozenset({"torch"})


@dataclass(frozen=True)
class Rule:
    allowed: Callable[[dict], frozenset[str]]  # the job's record -> the checked packages it may import
    run_in: str  # the test file whose run executes it and checks the records


def _fixed(*packages: str) -> Callable[[dict], frozenset[str]]:
    return lambda record: frozenset(packages)


# Every rule of the workflow; None for a target rule (no job process: Snakemake itself runs it).
RULES: dict[str, Rule | None] = {
    "fetch_dataset": Rule(_data, "test_imports.py"),
    "prepare_dataset": Rule(_data, "test_reruns.py"),
    "prepare_part": Rule(_data, "test_prepare.py"),
    "fetch_weights": Rule(_weights, "test_lab_grid.py"),  # torchvision; timm's: test_timm_workflow.py
    "extract_features": Rule(_network, "test_lab_grid.py"),  # torchvision; timm's: test_reruns.py
    "extract_features_without_test": Rule(_network, "test_predict.py"),
    "extract_part": Rule(_network, "test_resume.py"),
    "screen_candidate": Rule(_network, "test_selection_workflow.py"),
    "screen_survivor": Rule(_network, "test_selection_workflow.py"),
    "select_candidates": Rule(_fixed("torch"), "test_selection_workflow.py"),
    "summarize_selection": Rule(_fixed("matplotlib"), "test_selection_workflow.py"),
    "train_head": Rule(_fixed("torch"), "test_reruns.py"),
    "train_shots": Rule(_fixed("torch"), "test_workflow.py"),
    "finetune": Rule(_network, "test_reruns.py"),
    "compare": Rule(_fixed("matplotlib"), "test_reruns.py"),
    "predict": Rule(_network, "test_reruns.py"),
    "export_model": Rule(_network, "test_reruns.py"),
    "all": None,
    "export": None,
}
SNAKEMAKE: frozenset[str] = frozenset()  # Snakemake's own process: parsing the workflow imports nothing heavy


def read_records(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(Path(folder).glob("*.json"))]


def record_rule(record: dict) -> str | None:
    """The rule of a job's record; None for a process that runs no job script (Snakemake)."""
    if record.get("rule"):
        return record["rule"]
    assert "error" not in record, f"the hook could not read the job of {record['script']}: {record['error']}"
    assert not re.fullmatch(r"tmp\w+\.\w+\.py", record["script"]), f"a script job without its rule: {record}"
    return None


def violations(records: list[dict]) -> list[str]:
    """What each record imported beyond its rule's row, one line per job."""
    out = []
    for record in records:
        rule = record_rule(record)
        if rule is None:
            allowed = SNAKEMAKE
        else:
            assert rule in RULES and RULES[rule] is not None, f"rule {rule} ran a job but has no row in RULES"
            allowed = RULES[rule].allowed(record)
        extra = sorted(set(record["heavy"]) & set(CHECKED) - allowed)
        if extra:
            what = ", ".join(f"{k}={v}" for k, v in record.get("wildcards", {}).items())
            out.append(f"{rule or 'snakemake'} ({what or record['script']}; arch {record.get('arch')}, "
                       f"source {record.get('source')}) imported {extra}, allowed {sorted(allowed)}")
    return out


def assert_job_imports(folder: Path, test_file: str, also: set[str] = frozenset()) -> list[dict]:
    """Every record in ``folder`` keeps to its rule's row, and every rule whose row names
    ``test_file`` (``__file__`` of the caller), plus ``also``, ran at least one job."""
    records = read_records(folder)
    assert records, f"no import records in {folder}: is the hook on?"
    assert not (problems := violations(records)), "\n".join(problems)
    ran = {record_rule(r) for r in records} - {None}
    expected = {name for name, rule in RULES.items() if rule and rule.run_in == Path(test_file).name} | set(also)
    assert expected <= ran, f"{Path(test_file).name} checks {sorted(expected)}, but {sorted(expected - ran)} ran no job"
    assert any(record_rule(r) is None for r in records), "no record of Snakemake's own process"
    return records
