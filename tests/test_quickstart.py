"""The README's main job: the default config.yaml, end to end, as a user runs it; and the
README's quickstart block, which must be what this run produced."""

import importlib.util
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, copy_workflow, snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """One run of the quickstart, for both tests."""
    workdir = copy_workflow(tmp_path_factory.mktemp("quickstart"))
    snakemake(workdir)
    return workdir


def test_quickstart_grid(quickstart):
    workdir = quickstart
    table = pd.read_csv(workdir / "results/comparison.csv")
    networks = ["efficientnet_lite0", "efficientnet_lite0_random", "efficientnet_lite1", "efficientnet_lite2"]
    assert sorted(zip(table["network"], table["head"], strict=True)) == [
        (network, head) for network in networks for head in ("linear", "logreg", "mlp")
    ]
    # Three real pretrained networks of different sizes, and the untrained control.
    assert dict(zip(table["network"], table["weights"], strict=True)) == {
        "efficientnet_lite0": "bundled", "efficientnet_lite1": "bundled", "efficientnet_lite2": "bundled",
        "efficientnet_lite0_random": "random",
    }
    assert set(table["arch"]) == {f"timm:tf_efficientnet_lite{n}" for n in (0, 1, 2)}
    assert (table["feature_dim"] == 1280).all()
    assert (table[["n_train", "n_validation", "n_test"]].sum(axis=1) == 1797).all()
    # Measured 92-95% on CPU; anything under 85% means the features or heads broke.
    assert (table["test_accuracy"] > 0.85).all(), table
    assert table["best"].sum() == 4  # one per network
    for ext in ("csv", "md", "png", "html"):
        assert (workdir / f"results/comparison.{ext}").stat().st_size > 0
    for plot in ("tradeoff", "confusion_digits", "curves_digits"):
        assert (workdir / f"results/plots/{plot}.png").stat().st_size > 0
    # How sure: an interval on every test accuracy, and a verdict between the two networks.
    assert (table["repeats"] == 1).all()
    assert ((table["test_accuracy_low"] < table["test_accuracy"])
            & (table["test_accuracy"] < table["test_accuracy_high"])).all(), table
    # 359 test images: about +-2.5 points at 94%.
    assert ((table["test_accuracy_high"] - table["test_accuracy_low"]).between(0.03, 0.08)).all(), table
    challengers = table[table["best"] & (table["versus"].fillna("") != "")]
    # README: on 359 test images no network's chosen head can be told apart from the best.
    assert len(challengers) == 3 and (challengers["verdict"] == "tied").all(), challengers
    text = (workdir / "results/comparison.md").read_text()
    best = table[table["best"] & table["versus"].isna()].iloc[0]
    assert f"{100 * best.test_accuracy:.1f}% [{100 * best.test_accuracy_low:.1f}, " \
           f"{100 * best.test_accuracy_high:.1f}]" in text
    verdict = next(line for line in text.splitlines()
                   if line.startswith("- digits: ") and (" beats " in line or " are tied (difference " in line))
    assert f"{best.network} ({best['head']})" in verdict, verdict
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert sorted(summary["network"]) == networks
    # Ranked by test accuracy, ties sharing the mean rank (two chosen heads may get the same
    # number of the 359 images right on another CPU): the ranks add up to 1 + 2 + 3 + 4 and
    # follow the accuracies.
    assert summary["mean_rank"].sum() == 10.0
    assert summary["mean_rank"].tolist() == summary["digits"].rank(ascending=False, method="average").tolist()
    assert not (workdir / "results/label_efficiency.csv").exists()  # shots are off in the quickstart


def test_readme_numbers(quickstart):
    """README.md's quickstart block (split sizes, the lines comparison.md opens with, its table
    without timings, every number in the prose after it) is this run's, as
    tools/quickstart_readme.py writes it. The fix, when the code changed the numbers: `make readme`.
    On a CPU of another capability than the README's (AVX2 for AVX-512, another architecture),
    the features differ in their last bits and a test image may flip: compared only where they
    were made (docs/troubleshooting.md#reproducibility)."""
    tool = importlib.util.spec_from_file_location("quickstart_readme", REPO / "tools/quickstart_readme.py")
    readme = importlib.util.module_from_spec(tool)
    tool.loader.exec_module(readme)
    here = readme.machine()
    if f"({here};" not in (REPO / "README.md").read_text():
        pytest.skip(f"README.md's quickstart numbers were made on another CPU than this one ({here})")
    check = subprocess.run([sys.executable, str(REPO / "tools/quickstart_readme.py"), "--check",
                            "--results", str(quickstart / "results")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
