"""Jobs import only what they use: the table of tests/job_imports.py covers every rule, and
its check fails on a job that imports more. The runs that check it are the other test
files' (each row names its file); fetch_dataset, which no other test runs, runs here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, copy_workflow, snakemake, write_config
from job_imports import RULES, assert_job_imports, violations


def test_every_rule_of_the_workflow_has_a_row(tmp_path):
    """A new rule fails here until the table says what its jobs may import."""
    listed = snakemake(copy_workflow(tmp_path / "wd"), "--list-rules").output
    rules = {line.strip() for line in listed.splitlines() if re.fullmatch(r"\s*[A-Za-z_]\w*\s*", line)}
    assert {"prepare_dataset", "extract_features", "compare"} <= rules, listed  # the listing was read
    assert rules == set(RULES), f"rules without a row: {sorted(rules - set(RULES))}; " \
                                f"rows of no rule: {sorted(set(RULES) - rules)}"


def test_each_rows_test_file_checks_the_records_of_its_run():
    for name, rule in RULES.items():
        if rule is not None:
            text = (REPO / "tests" / rule.run_in).read_text()
            assert "assert_job_imports(" in text and "TRANSFER_LAB_TEST_IMPORTS" in text, (name, rule.run_in)


def record(rule: str, heavy: list[str], **job) -> dict:
    return {"script": f"tmpab12.{rule}.py", "modules": [], "torch": "torch" in heavy, "heavy": heavy,
            "rule": rule, "wildcards": job.pop("wildcards", {}), **job}


@pytest.mark.parametrize("bad", [
    record("extract_features", ["torch", "torchvision", "timm"], arch="resnet18"),
    record("predict", ["torch", "torchvision", "timm"], arch="vgg16"),
    record("train_head", ["torch", "torchvision"]),
    record("train_shots", ["matplotlib", "torch"]),
    record("prepare_dataset", ["torch"], source="digits"),
    record("compare", ["torch", "matplotlib"]),
    record("fetch_weights", ["torch", "torchvision", "timm"], wildcards={"weights_file": "checkpoints/x.pth"}),
    {"script": "__main__.py", "modules": [], "torch": True, "heavy": ["torch"]},  # Snakemake itself
])
def test_the_check_fails_on_a_job_that_imports_more_than_its_row(bad):
    assert violations([bad])


@pytest.mark.parametrize("good", [
    record("extract_features", ["torch", "torchvision", "timm"], arch="timm:tf_efficientnet_lite0"),
    record("extract_part", ["torch", "torchvision", "sklearn"], arch="resnet18"),
    record("prepare_part", ["torch", "torchvision"], source="torchvision:MNIST"),
    record("fetch_weights", ["torch", "torchvision", "timm"], wildcards={"weights_file": "timm/a.b/model.safetensors"}),
    record("compare", ["matplotlib", "sklearn"]),
])
def test_the_check_passes_what_a_row_allows(good):
    assert violations([good]) == []


@pytest.mark.integration
def test_fetch_dataset_imports_nothing_heavy(tmp_path):
    """fetch_dataset runs here, offline (the test hook): it fails, naming the file to place
    where, after importing what the download path imports."""
    workdir = copy_workflow(tmp_path / "wd")
    write_config(workdir, {
        "networks": {"tiny": {"arch": "timm:tf_efficientnet_lite0", "weights": "random", "input_size": 32}},
        "datasets": {"cifar10": {"source": "cifar10", "download": True}},
        "heads": {"linear": {"kind": "linear"}},
    })
    imports = tmp_path / "imports"
    imports.mkdir()
    run = snakemake(workdir, "resources/raw/cifar10/cifar-10-python.tar.gz", check=False,
                    hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports), "TRANSFER_LAB_TEST_OFFLINE": "1"})
    assert run.returncode != 0 and run.jobs == {"fetch_dataset": 1}, run.output
    log = (workdir / "results/logs/fetch_dataset/cifar10/cifar-10-python.tar.gz.log").read_text()
    assert "could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in log, log
    assert "place it in" in log, log
    assert_job_imports(imports, __file__)


def test_a_torchvision_network_imports_no_timm_on_any_path_that_builds_it():
    """No run of the tests fine-tunes, predicts with or exports a torchvision network: what
    those jobs import to build one (their modules, the backbone, an extractor) is checked here."""
    code = textwrap.dedent("""
        import sys
        import transfer_lab.export, transfer_lab.finetune, transfer_lab.predict
        from transfer_lab.extract import Extractor
        from transfer_lab.networks import load_backbone
        from transfer_lab.specs import NetworkSpec
        Extractor(load_backbone(NetworkSpec(arch="resnet18", weights="random", input_size=32)), "cpu", "fp32")
        print(sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "['torch', 'torchvision']", out.stdout
