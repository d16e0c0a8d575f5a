"""The ranking: intervals in the table, the choice on validation, paired verdicts, the summary
across datasets and the label-efficiency curves, from metrics in the format heads write."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transfer_lab.compare import COLUMNS, comparison_table, to_markdown, to_rst_summary, write_table
from transfer_lab.evaluation import classification_metrics, combine_repeats, correct_matrix
from transfer_lab.label_efficiency import COLUMNS as CURVE_COLUMNS
from transfer_lab.label_efficiency import label_efficiency_table, plot_label_efficiency, write_label_efficiency
from transfer_lab.ranking import select_best, summary_markdown, summary_table, verdict_lines, write_summary
from transfer_lab.uncertainty import Difference, holm, mcnemar_exact, outcome, paired_difference, summarise_accuracy

N_CLASSES = 4
NAMES = list("abcd")


def outputs(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probabilities that put a wrong image on the next class, a right one on its own."""
    predicted = np.where(correct, labels, (labels + 1) % N_CLASSES)
    probabilities = np.full((len(labels), N_CLASSES), 0.1)
    probabilities[np.arange(len(labels)), predicted] = 0.7
    return probabilities


def fitted(network: str, dataset: str, head: str, validation: list, test: list | None, shots=None,
           n_train: int = 80, method: str = "features") -> dict:
    """A classifier's metrics JSON, made by the code heads use: one fit per repeat, from
    bool arrays saying which validation and test images it got right."""
    fits = []
    for r, v in enumerate(validation):
        v = np.asarray(v, bool)
        splits = {"train": (outputs(np.ones(n_train, bool), np.arange(n_train) % N_CLASSES), np.arange(n_train) % N_CLASSES),
                  "validation": (outputs(v, np.arange(len(v)) % N_CLASSES), np.arange(len(v)) % N_CLASSES)}
        if test is not None:
            t = np.asarray(test[r], bool)
            splits["test"] = (outputs(t, np.arange(len(t)) % N_CLASSES), np.arange(len(t)) % N_CLASSES)
        fits.append({**classification_metrics(splits, NAMES), "train_seconds": 0.5})
    return {"network": network, "arch": f"arch_{network}", "weights": "DEFAULT", "dataset": dataset, "head": head,
            "method": method, "head_kind": head, "feature_dim": 16, "curve": [], "shots": shots,
            **combine_repeats(fits, list(range(len(fits))))}


def right(n: int, wrong: list[int] | range) -> np.ndarray:
    out = np.ones(n, bool)
    out[list(wrong)] = False
    return out


@pytest.fixture
def metrics() -> list[dict]:
    """digits: 'strong' is clearly better than 'weak' on 400 test images; 'close' ties with
    'strong'. 'strong' has two repeats."""
    n = 400
    return [
        fitted("strong", "digits", "linear", [right(100, range(5)), right(100, range(6))],
               [right(n, range(20)), right(n, range(24))]),
        fitted("strong", "digits", "mlp", [right(100, range(10))], [right(n, range(10))]),
        fitted("weak", "digits", "linear", [right(100, range(20))], [right(n, range(80))]),
        fitted("close", "digits", "linear", [right(100, range(8))], [right(n, range(18, 44))]),
    ]


@pytest.fixture
def table(metrics) -> pd.DataFrame:
    return comparison_table(metrics, [])


def row(table, network, head):
    return table[(table["network"] == network) & (table["head"] == head)].iloc[0]


def test_columns_means_over_repeats_and_the_interval(table, metrics):
    assert list(table.columns) == COLUMNS
    r = row(table, "strong", "linear")
    assert r["repeats"] == 2
    assert r["validation_accuracy"] == pytest.approx(np.mean([0.95, 0.94]))
    assert r["test_accuracy"] == pytest.approx(np.mean([380 / 400, 376 / 400]))
    assert r["test_accuracy_sd"] == pytest.approx(np.std([0.95, 0.94], ddof=1))
    expected = summarise_accuracy(correct_matrix(metrics[0], "test"))
    assert (r["test_accuracy_low"], r["test_accuracy_high"]) == pytest.approx((expected.low, expected.high))
    assert r["test_accuracy_low"] < r["test_accuracy"] < r["test_accuracy_high"]
    # Every error lands on one other class: per-class recall equals accuracy here, top-5 is all right.
    assert r["test_balanced_accuracy"] == pytest.approx(r["test_accuracy"])
    assert np.isnan(r["test_top5_accuracy"])  # 4 classes: no top-5
    assert np.isnan(row(table, "weak", "linear")["test_accuracy_sd"])  # one repeat


def test_verdicts_pair_each_network_with_the_datasets_best(table, metrics):
    best = table[table["best"]]
    assert sorted(zip(best["network"], best["head"], strict=True)) == [("close", "linear"), ("strong", "linear"),
                                                          ("weak", "linear")]
    top = row(table, "strong", "linear")
    assert top["versus"] == "" and top["verdict"] == "" and np.isnan(top["mcnemar_p"])
    weak = row(table, "weak", "linear")
    assert weak["versus"] == "strong (linear)" and weak["verdict"] == "worse"
    d = paired_difference(correct_matrix(metrics[2], "test"), correct_matrix(metrics[0], "test"))
    assert (weak["test_difference"], weak["test_difference_low"], weak["test_difference_high"]) == pytest.approx(
        (d.mean, d.low, d.high))
    assert weak["mcnemar_p"] == pytest.approx(mcnemar_exact(correct_matrix(metrics[2], "test")[0],
                                                            correct_matrix(metrics[0], "test")[0]))
    assert row(table, "close", "linear")["verdict"] == "tied"
    assert row(table, "strong", "mlp")["versus"] == ""  # not its network's choice: no verdict
    lines = verdict_lines(table)
    assert lines[1].startswith("digits: strong (linear) beats weak (linear) by 14.5 points [")
    assert lines[1].endswith("(p < 0.001)")
    assert lines[0].startswith("digits: strong (linear) and close (linear) are tied (difference ")


def test_a_network_better_on_test_than_the_validation_choice_is_said_to_beat_it():
    lucky = fitted("lucky", "digits", "linear", [right(100, [1])], [right(500, range(100))])
    solid = fitted("solid", "digits", "linear", [right(100, [1, 2])], [right(500, range(25))])
    table = comparison_table([lucky, solid], [])
    assert row(table, "solid", "linear")["versus"] == "lucky (linear)"  # validation chose lucky
    assert row(table, "solid", "linear")["verdict"] == "better"
    assert verdict_lines(table)[0].startswith("digits: solid (linear) beats lucky (linear) by 15.0 points [")


def test_holm_correction_turns_a_lone_win_into_a_tie_among_several_comparisons():
    """On 400 test images 'mid' is wrong on 12 that 'top' gets right and right on 3 that 'top'
    gets wrong: McNemar's p = 2 (1 + 15 + 105 + 455) / 2**15 = 0.035. Alone against 'top' that
    is a loss; beside a second comparison, Holm doubles the smallest p to 0.07: a tie."""
    top = fitted("top", "digits", "linear", [right(100, [1])], [right(400, range(3))])
    mid = fitted("mid", "digits", "linear", [right(100, [1, 2])], [right(400, range(3, 15))])
    other = fitted("other", "digits", "linear", [right(100, [1, 2, 3])], [right(400, range(4))])
    alone = row(comparison_table([top, mid], []), "mid", "linear")
    assert alone["mcnemar_p"] == pytest.approx(1152 / 2**15) == alone["mcnemar_p_raw"]
    assert alone["verdict"] == "worse"
    table = comparison_table([top, mid, other], [])
    r = row(table, "mid", "linear")
    assert r["mcnemar_p_raw"] == pytest.approx(1152 / 2**15)
    assert r["mcnemar_p"] == pytest.approx(2 * 1152 / 2**15)
    assert r["verdict"] == "tied"
    assert (r["test_difference_low"], r["test_difference_high"]) == (alone["test_difference_low"],
                                                                     alone["test_difference_high"])
    d = r[["test_difference", "test_difference_low", "test_difference_high"]].to_numpy(float)
    assert outcome(Difference(*d), r["mcnemar_p_raw"], 0.05) == "worse"  # the interval alone still excludes 0
    ps = table.loc[table["versus"] != "", ["mcnemar_p_raw", "mcnemar_p"]].to_numpy(float)
    np.testing.assert_allclose(holm(ps[:, 0]), ps[:, 1])
    lines = verdict_lines(table)
    assert "digits: top (linear) and mid (linear) are tied (difference 2.3 [" in lines[0] and "p = 0.07)" in lines[0]
    assert lines[-1] == ("digits: p-values Holm-corrected over the 2 comparisons with its best (mcnemar_p_raw: as "
                         "tested); the intervals are not adjusted")
    assert not any("Holm" in line for line in verdict_lines(comparison_table([top, mid], [])))
    assert "Holm-corrected over the dataset's comparisons" in to_markdown(table)


def test_markdown_shows_intervals_spreads_and_verdicts(table):
    text = to_markdown(table)
    r = row(table, "weak", "linear")
    assert f"80.0% [{100 * r['test_accuracy_low']:.1f}, {100 * r['test_accuracy_high']:.1f}]" in text
    s = row(table, "strong", "linear")
    assert f"**94.5% ± 0.7 [{100 * s['test_accuracy_low']:.1f}, {100 * s['test_accuracy_high']:.1f}]**" in text
    assert "Paired verdicts:\n\n- digits: strong (linear) and close (linear) are tied" in text
    assert "- digits: strong (linear) beats weak (linear) by 14.5 points" in text
    assert f"{100 * r['test_difference']:+.1f} [" in text


def test_select_by_balanced_accuracy_changes_the_choice():
    """Two heads: one better on accuracy, the other on balanced accuracy (it gets the rare class)."""
    labels = np.array([0] * 90 + [1] * 10)

    def head(name, predicted):
        m = classification_metrics({"train": (outputs_for(predicted, 2), labels), "validation": (outputs_for(predicted, 2), labels),
                                    "test": (outputs_for(predicted, 2), labels)}, ["common", "rare"])
        return {"network": "net", "arch": "a", "weights": "w", "dataset": "signs", "head": name, "method": "features",
                "feature_dim": 4, "curve": [], **combine_repeats([{**m, "train_seconds": 0.1}], [0])}

    majority = head("majority", np.zeros(100, int))                        # 90% accurate, 50% balanced
    minority = head("careful", np.r_[np.zeros(78, int), np.ones(22, int)])  # 88% accurate, 93.3% balanced
    by_accuracy = comparison_table([majority, minority], [])
    by_balance = comparison_table([majority, minority], [], select_by="balanced_accuracy")
    assert by_accuracy.loc[by_accuracy["best"], "head"].tolist() == ["majority"]
    assert by_balance.loc[by_balance["best"], "head"].tolist() == ["careful"]
    assert "chosen on validation balanced accuracy" in to_markdown(by_balance, select_by="balanced_accuracy")
    with pytest.raises(ValueError, match="evaluation.select_by: 'f1'"):
        select_best(by_accuracy, ["network"], "f1")


def outputs_for(predicted: np.ndarray, n_classes: int) -> np.ndarray:
    probabilities = np.full((len(predicted), n_classes), 0.2)
    probabilities[np.arange(len(predicted)), predicted] = 0.8
    return probabilities


def test_summary_across_datasets_ranks_each_networks_choice(metrics, tmp_path):
    n = 200
    more = [
        fitted("strong", "cifar", "linear", [right(50, [1])], [right(n, range(40))]),
        fitted("weak", "cifar", "linear", [right(50, [1, 2])], [right(n, range(20))]),
        fitted("close", "cifar", "linear", [right(50, [1, 2, 3])], [right(n, range(60))]),
    ]
    table = comparison_table(metrics + more, [])
    summary = summary_table(table)
    assert list(summary.columns) == ["network", "cifar", "digits", "cifar_head", "digits_head", "mean_accuracy",
                                     "mean_rank"]
    by = summary.set_index("network")
    # digits: strong 94.5% > close 93.5% > weak 80%; cifar: weak 90% > strong 80% > close 70%.
    assert by.loc["weak", "cifar"] == pytest.approx(0.9) and by.loc["weak", "digits"] == pytest.approx(0.8)
    ranks = {"strong": (2, 1), "close": (3, 2), "weak": (1, 3)}
    for network, (cifar, digits) in ranks.items():
        assert by.loc[network, "mean_rank"] == pytest.approx((cifar + digits) / 2)
    assert by.loc["strong", "mean_accuracy"] == pytest.approx((0.8 + by.loc["strong", "digits"]) / 2)
    assert summary["network"].tolist() == ["strong", "weak", "close"]  # 1.5, 2.0, 2.5
    write_summary(summary, table, tmp_path / "summary.csv", tmp_path / "summary.md")
    back = pd.read_csv(tmp_path / "summary.csv")
    assert back["network"].tolist() == ["strong", "weak", "close"]
    text = (tmp_path / "summary.md").read_text()
    assert text == summary_markdown(summary, table)
    weak = next(line for line in text.splitlines() if line.startswith("| weak"))
    assert [c.strip() for c in weak.strip("|").split("|")] == ["weak", "90.0% (linear)", "80.0% (linear)", "85.0%",
                                                               "2.00"]
    assert "| cifar (test)" in text


def test_networks_tied_on_a_dataset_share_the_mean_of_their_ranks():
    same = [right(100, range(10))]
    table = comparison_table([fitted(n, "digits", "linear", [right(20, [1])], same) for n in ("a", "b")]
                             + [fitted("c", "digits", "linear", [right(20, [1])], [right(100, range(30))])], [])
    assert summary_table(table).set_index("network")["mean_rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}


def test_report_page_puts_the_summary_above_the_table_and_builds(table):
    from docutils.core import publish_parts

    from transfer_lab.ranking import summary_rst

    summary = summary_table(table)
    page = to_rst_summary(table, preface=summary_rst(summary, table))
    assert page.index("Summary across datasets") < page.index("Best per dataset") < page.index("Paired verdicts")
    assert page.index("Paired verdicts") < page.index("| dataset")
    body = publish_parts(page, writer="html", settings_overrides={"halt_level": 2})["html_body"]
    assert "beats weak (linear) by 14.5 points" in body and body.count("<table") == 2


def test_write_table_round_trips_the_new_columns(table, tmp_path):
    paths = [tmp_path / f"c.{ext}" for ext in ("csv", "md", "html", "rst")]
    write_table(table, *paths, confidence=0.9)
    back = pd.read_csv(paths[0], keep_default_na=False)
    assert list(back.columns) == COLUMNS
    assert back.loc[back["network"] == "weak", "verdict"].item() == "worse"
    for col in ("test_accuracy_low", "test_accuracy_high", "test_difference", "mcnemar_p"):
        np.testing.assert_allclose(pd.to_numeric(back[col].replace("", np.nan)).to_numpy(float),
                                   table[col].to_numpy(float), rtol=1e-5, equal_nan=True)
    assert "the 90% bootstrap interval" in paths[1].read_text()


def test_no_test_split_means_no_verdict_but_says_so():
    table = comparison_table([fitted("a", "mine", "linear", [right(40, [1])], None),
                              fitted("b", "mine", "linear", [right(40, [1, 2])], None)], [])
    assert row(table, "b", "linear")["versus"] == "a (linear)"
    assert np.isnan(row(table, "b", "linear")["mcnemar_p"])
    assert np.isnan(row(table, "a", "linear")["test_accuracy_low"])
    assert verdict_lines(table) == ["mine: no test split, so no paired verdict (validation chose the classifiers)"]


def test_label_efficiency_table_and_figure(metrics, table, tmp_path):
    shots = [
        fitted(network, "digits", head, [right(100, range(k)) for k in wrong], [right(400, range(4 * k)) for k in wrong],
               shots=s, n_train=s * N_CLASSES)
        for network, head in (("strong", "linear"), ("strong", "mlp"), ("weak", "linear"), ("close", "linear"))
        for s, wrong in ((1, (40, 45)), (5, (20, 22)))
    ]
    curve = label_efficiency_table(shots, metrics, table, [1, 5, "all"])
    assert list(curve.columns) == CURVE_COLUMNS
    assert len(curve) == 8 + 4  # four heads at 1 and 5 shots, and the full-data heads
    strong = curve[(curve["network"] == "strong") & (curve["head"] == "linear")]
    assert strong["shots"].tolist() == ["1", "5", "all"]
    assert strong["images_per_class"].tolist() == [1.0, 5.0, 20.0]  # 80 training images, 4 classes
    assert strong["repeats"].tolist() == [2, 2, 2]
    one = strong.iloc[0]
    assert one["accuracy"] == pytest.approx(np.mean([1 - 160 / 400, 1 - 180 / 400]))
    assert one["accuracy_low"] < one["accuracy"] < one["accuracy_high"] and one["split"] == "test"
    # Drawn: each network's head chosen on validation (strong: linear, not mlp).
    assert set(curve.loc[curve["selected"], "head"]) == {"linear"}
    assert not curve.loc[curve["head"] == "mlp", "selected"].any()
    # Without 'all', the full-data heads are not on the curve.
    assert set(label_efficiency_table(shots, metrics, table, [1, 5])["shots"]) == {"1", "5"}
    write_label_efficiency(curve, tmp_path / "label_efficiency.csv")
    back = pd.read_csv(tmp_path / "label_efficiency.csv", dtype={"shots": str})
    assert back["shots"].tolist() == curve["shots"].tolist()
    plot_label_efficiency(curve, "digits", tmp_path / "label_efficiency_digits.png")
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "label_efficiency_digits.png")
    assert image.shape[0] > 100 and image.std() > 0


def test_chosen_names_each_dataset_s_best_and_each_network_s_head_for_predict():
    """results/choice.json: what predict applies when the config names no network or head."""
    from transfer_lab.ranking import chosen

    table = pd.DataFrame({
        "network": ["a", "a", "b", "b", "a"],
        "dataset": ["d", "d", "d", "d", "e"],
        "head": ["linear", "knn", "linear", "knn", "linear"],
        "validation_accuracy": [0.80, 0.85, 0.90, 0.70, 0.5],
        "best": [False, True, True, False, True],
    })
    choice = chosen(table, "accuracy")
    assert choice["d"] == {"network": "b", "head": "linear", "head_of": {"a": "knn", "b": "linear"},
                           "network_of": {"linear": "b", "knn": "a"}}
    assert choice["e"]["network"] == "a" and choice["e"]["head"] == "linear"
