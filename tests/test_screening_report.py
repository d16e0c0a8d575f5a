"""The selection's table, sentence, pages and figure, from records and decisions in the format
the selection rules write: five candidates on three rungs of one dataset."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from transfer_lab.screening_report import (
    plot_selection,
    selection_markdown,
    selection_rst,
    selection_sentence,
    selection_table,
    write_selection,
)

FRACTIONS = (0.1, 0.3, 1.0)
N_TRAIN = {0.1: 100, 0.3: 300, 1.0: 1000}
N_VALIDATION = 200
PARAMS = {"a": 5_300_000, "b": 25_600_000, "c": None, "d": 88_000_000, "e": 3_500_000}
# Validation accuracy per candidate at each rung it reaches; keep 0.5: 5 -> 3 -> 2.
ACCURACY = {
    0.1: {"a": 0.80, "b": 0.78, "c": 0.70, "d": 0.60, "e": 0.55},
    0.3: {"a": 0.85, "b": 0.86, "c": 0.75},
    1.0: {"a": 0.90, "b": 0.88},
}
KEEP = {0.1: 3, 0.3: 2, 1.0: 2}


def record(network: str, k: int, fraction: float, accuracy: float) -> dict:
    new = N_TRAIN[fraction] - (N_TRAIN[FRACTIONS[k - 1]] if k else 0)
    half = 1.96 * math.sqrt(accuracy * (1 - accuracy) / N_VALIDATION)
    return {"network": network, "dataset": "digits", "rung": k, "fraction": fraction, "n_train": N_TRAIN[fraction],
            "n_validation": N_VALIDATION, "probe": "logreg", "accuracy": accuracy, "low": accuracy - half,
            "high": accuracy + half, "logme": accuracy - 1.5, "knn_accuracy": accuracy - 0.05,
            "params": PARAMS.get(network, 1_000_000), "imagenet_top1": 75.0 + len(network), "images_per_second": 400.0 + k,
            "forward_passes": new + (N_VALIDATION if k == 0 else 0)}


def decision(k: int, fraction: float, scores: dict[str, float]) -> dict:
    ranked = sorted(scores, key=lambda n: (-scores[n], n))
    kept = ranked[:KEEP[fraction]]
    return {"dataset": "digits", "rung": k, "fraction": fraction, "rank_by": "probe", "keep": 0.5, "ranked": ranked,
            "kept": kept, "cut": ranked[len(kept):], "leader": ranked[0],
            "gaps": {n: scores[ranked[0]] - scores[n] for n in ranked},
            "accuracy_gaps": {n: scores[ranked[0]] - scores[n] for n in ranked}}


def inputs(accuracy: dict = ACCURACY) -> tuple[list[dict], list[dict]]:
    records = [record(n, k, f, a) for k, f in enumerate(FRACTIONS) for n, a in accuracy[f].items()]
    return records, [decision(k, f, accuracy[f]) for k, f in enumerate(FRACTIONS)]


COST = {"spent": 12345, "exhaustive": 39800, "share": 12345 / 39800}


def test_one_row_per_candidate_with_its_rungs_status_and_gap():
    table = selection_table(*inputs())
    assert table["network"].tolist() == ["a", "b", "c", "d", "e"]  # furthest first, then as ranked
    by = table.set_index("network")
    assert by["status"].to_dict() == {"a": "finalist", "b": "finalist", "c": "cut at rung 2", "d": "cut at rung 1",
                                      "e": "cut at rung 1"}
    assert by["rung"].to_dict() == {"a": 3, "b": 3, "c": 2, "d": 1, "e": 1}
    assert by["fraction"].to_dict() == {"a": 1.0, "b": 1.0, "c": 0.3, "d": 0.1, "e": 0.1}
    assert by.loc["a", "acc@0.1"] == 0.80 and by.loc["a", "acc@1"] == 0.90
    assert by.loc["c", "acc@0.3"] == 0.75 and np.isnan(by.loc["c", "acc@1"])  # nothing past its cut
    assert by.loc["c", "low@0.3"] < 0.75 < by.loc["c", "high@0.3"]
    # Gaps: to the leader of the rung where each was cut (b led rung 2 with 86%, a rung 1 with 80%).
    assert by.loc["c", "leader"] == "b" and by.loc["c", "gap_points"] == pytest.approx(11.0)
    assert by.loc["d", "leader"] == "a" and by.loc["d", "gap_points"] == pytest.approx(20.0)
    assert by.loc["e", "gap_points"] == pytest.approx(25.0) and by.loc["e", "score_gap"] == pytest.approx(0.25)
    assert np.isnan(by.loc["a", "gap_points"]) and by.loc["a", "leader"] == ""
    # Scores at the last rung reached; parameters in millions; unknown stays unknown.
    assert by.loc["c", "logme"] == pytest.approx(0.75 - 1.5) and by.loc["c", "knn_accuracy"] == pytest.approx(0.70)
    assert by.loc["a", "params_millions"] == pytest.approx(5.3) and np.isnan(by.loc["c", "params_millions"])
    assert by.loc["a", "images_per_second"] == 402.0 and by.loc["d", "images_per_second"] == 400.0
    assert by.loc["a", "forward_passes"] == 100 + 200 + 200 + 700 and by.loc["d", "forward_passes"] == 300
    assert by["led_at"].to_dict() == {"a": "0.1 1", "b": "0.3", "c": "", "d": "", "e": ""}


def test_the_sentence_counts_rungs_names_leaders_and_the_cost():
    table = selection_table(*inputs())
    assert selection_sentence(table, "digits", COST) == (
        "On digits, 2 of 5 candidates reached the full training set after 2 rungs of halving; the rung leaders "
        "were a at 10%, b at 30% and a at 100% of the training images. Halving spent 31% of the forward passes "
        "of trying every candidate (12,345 of 39,800 images).")
    steady = {**ACCURACY, 0.3: {"a": 0.87, "b": 0.86, "c": 0.75}}
    table = selection_table(*inputs(steady))
    assert selection_sentence(table, "digits", rst=True) == (
        "On digits, 2 of 5 candidates reached the full training set after 2 rungs of halving; ``a`` led at every "
        "rung.")
    with pytest.raises(ValueError, match="no record for dataset 'cifar'"):
        selection_sentence(table, "cifar")


def test_a_last_rung_below_the_full_set_keeps_its_survivors():
    records, decisions = inputs()
    records = [r for r in records if r["fraction"] < 1]
    table = selection_table(records, decisions[:2])
    assert table.set_index("network")["status"].to_dict() == {"b": "finalist", "a": "finalist", "c": "cut at rung 2",
                                                              "d": "cut at rung 1", "e": "cut at rung 1"}
    assert table["network"].tolist()[:2] == ["b", "a"]  # as rung 2 ranked them
    assert selection_sentence(table, "digits").startswith(
        "On digits, 2 of 5 candidates survived 2 rungs of halving (the last on 30% of the training images); ")
    # A rung without its decision yet: its candidates are still being screened.
    pending = selection_table(records, decisions[:1])
    assert set(pending.loc[pending["fraction"] == 0.3, "status"]) == {"screening"}


def test_csv_markdown_and_report_section(tmp_path):
    table = selection_table(*inputs())
    write_selection(table, tmp_path / "selection.csv", tmp_path / "selection.md", {"digits": COST},
                    tmp_path / "selection.rst")
    back = pd.read_csv(tmp_path / "selection.csv", keep_default_na=False)
    assert back["network"].tolist() == table["network"].tolist()
    assert back.loc[back["network"] == "c", "status"].item() == "cut at rung 2"
    np.testing.assert_allclose(pd.to_numeric(back["acc@0.3"].replace("", np.nan)), table["acc@0.3"], equal_nan=True)
    text = (tmp_path / "selection.md").read_text()
    assert text == selection_markdown(table, {"digits": COST})
    assert text.startswith("# Selection\n\n- On digits, 2 of 5 candidates reached the full training set")
    c = next(line for line in text.splitlines() if line.startswith("| digits    | c"))
    cells = [cell.strip() for cell in c.strip("|").split("|")]
    low, high = table.set_index("network").loc["c", ["low@0.3", "high@0.3"]]
    assert cells[:6] == ["digits", "c", "cut at rung 2", "70.0% [63.6, 76.4]",
                         f"75.0% [{100 * low:.1f}, {100 * high:.1f}]", ""]
    assert cells[-1] == "11.0 (b)" and cells[-4] == "n/a"  # c's parameter count is unknown
    from docutils.core import publish_parts

    page = (tmp_path / "selection.rst").read_text()
    assert page == selection_rst(table, {"digits": COST})
    body = publish_parts(page, writer="html", settings_overrides={"halt_level": 2})["html_body"]
    assert "<table" in body and "Halving spent 31%" in body


def test_the_figure_is_written(tmp_path):
    import matplotlib.image

    records, decisions = inputs()
    plot_selection(records, decisions, "digits", tmp_path / "selection_digits.png")
    path = tmp_path / "selection_digits.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.std() > 0


def test_the_figure_greys_the_cut_among_many_candidates(tmp_path):
    """Over ten candidates, only the finalists get colours and legend entries."""
    names = [f"net{i:02d}" for i in range(12)]
    accuracy = {0.1: {n: 0.5 + 0.02 * i for i, n in enumerate(names)}, 0.3: {}, 1.0: {}}
    ranked = sorted(names, key=lambda n: -accuracy[0.1][n])
    accuracy[1.0] = {n: accuracy[0.1][n] + 0.1 for n in ranked[:2]}
    records = [record(n, 0, 0.1, a) for n, a in accuracy[0.1].items()]
    records += [{**record(n, 2, 1.0, a), "rung": 1} for n, a in accuracy[1.0].items()]
    decisions = [{**decision(0, 0.1, accuracy[0.1]), "kept": ranked[:2], "cut": ranked[2:]},
                 {**decision(1, 1.0, accuracy[1.0]), "kept": ranked[:2], "cut": []}]
    table = selection_table(records, decisions)
    assert (table["status"] == "finalist").sum() == 2 and (table["status"] == "cut at rung 1").sum() == 10
    assert selection_sentence(table, "digits").startswith(
        "On digits, 2 of 12 candidates reached the full training set after 1 rung of halving; net11 led at every")
    plot_selection(records, decisions, "digits", tmp_path / "many.png")
    assert (tmp_path / "many.png").stat().st_size > 1000


def test_a_score_a_rung_did_not_compute_reads_as_unknown(tmp_path):
    records, decisions = inputs()
    records = [{**r, "logme": None, "images_per_second": None} if r["network"] == "d" else r for r in records]
    by = selection_table(records, decisions).set_index("network")
    assert np.isnan(by.loc["d", "logme"]) and np.isnan(by.loc["d", "images_per_second"])
    line = next(line for line in selection_markdown(selection_table(records, decisions)).splitlines()
                if line.startswith("| digits    | d"))
    assert [c.strip() for c in line.strip("|").split("|")][6] == "n/a"
    plot_selection(records, decisions, "digits", tmp_path / "selection.png")
