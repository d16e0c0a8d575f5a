"""Which network wins: the choice on validation, paired verdicts, and the summary across datasets.

Every choice is made on validation (accuracy, or balanced accuracy with
``evaluation.select_by``), first for each network its classifier, then for each dataset
its best network; test images only ever judge the choices. The judgement is paired:
each network's chosen classifier against the dataset's best, on the same test images
(:func:`transfer_lab.uncertainty.verdict`). With more than two networks on a dataset there
are several such comparisons, so their McNemar p-values are Holm-corrected over the
dataset's comparisons (:func:`transfer_lab.uncertainty.holm`) before the verdict is read;
the paired intervals stay unadjusted (the verdict needs both, so the correction alone
bounds the chance of any false "better" or "worse" on a dataset). Across datasets, each network's chosen
classifier is ranked per dataset (1 = best) and the ranks are averaged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .evaluation import correct_matrix
from .files import atomic_write
from .uncertainty import BOOTSTRAP, Bootstrap, Difference, holm, outcome, sentence, verdict

SELECT_BY = ("accuracy", "balanced_accuracy")
# mcnemar_p: Holm-corrected over the dataset's comparisons (the verdict reads it); mcnemar_p_raw: as tested.
VERDICT_COLUMNS = ["versus", "test_difference", "test_difference_low", "test_difference_high", "mcnemar_p",
                   "mcnemar_p_raw", "verdict"]
_FLIPPED = {"better": "worse", "worse": "better", "tied": "tied"}


def percent(v: float) -> str:
    return f"{100 * v:.1f}%" if pd.notna(v) else "n/a"


def shown_metric(part: pd.DataFrame) -> str:
    """Test accuracy where every row of ``part`` has one, else validation accuracy."""
    return "test_accuracy" if part["test_accuracy"].notna().all() else "validation_accuracy"


def select_best(table: pd.DataFrame, by: list[str], select_by: str) -> np.ndarray:
    """Index labels of the best row of each group on validation ``select_by``; the first of
    equal ones, in the table's order."""
    if select_by not in SELECT_BY:
        raise ValueError(f"evaluation.select_by: {select_by!r} is not one of {', '.join(SELECT_BY)}")
    return table.groupby(by, sort=False)[f"validation_{select_by}"].idxmax().to_numpy()


def label(row) -> str:
    """How a verdict names a classifier: its network, and its head in brackets."""
    return f"{row['network']} ({row['head']})"


def add_verdicts(table: pd.DataFrame, metrics: Mapping[tuple[str, str, str], dict], select_by: str,
                 bootstrap: Bootstrap = BOOTSTRAP) -> pd.DataFrame:
    """Fill the verdict columns of each network's chosen classifier (``best`` rows).

    Per dataset, the chosen classifiers are ranked on validation ``select_by``; the first
    is the dataset's best. Every other chosen classifier gets ``versus`` (the best, named),
    the test accuracy difference to it with the paired interval (this row minus the best),
    McNemar's p as tested (``mcnemar_p_raw``) and Holm-corrected over the dataset's
    comparisons (``mcnemar_p``; equal to the raw p when there is one comparison), and
    ``verdict``: ``better``, ``worse`` or ``tied``, this row against the best, decided by the
    corrected p and the interval (:func:`transfer_lab.uncertainty.outcome`). ``metrics``
    maps (network, dataset, head) to the classifier's metrics JSON. A dataset without test
    predictions gets ``versus`` only.
    """
    table = table.copy()
    table["versus"] = ""
    for column in VERDICT_COLUMNS[1:-1]:
        table[column] = np.nan
    table["verdict"] = ""
    chosen = table[table["best"]]
    for index in select_best(chosen, ["dataset"], select_by):
        top = table.loc[index]
        tested = {}
        for other in chosen.index[(chosen["dataset"] == top["dataset"]) & (chosen.index != index)]:
            row = table.loc[other]
            table.loc[other, "versus"] = label(top)
            correct = [correct_matrix(metrics[(r["network"], r["dataset"], r["head"])], "test") for r in (row, top)]
            if all(c.size for c in correct):
                tested[other] = verdict(label(row), label(top), correct[0], correct[1], bootstrap)
        for other, p, v in zip(tested, holm([v.p for v in tested.values()]), tested.values(), strict=True):
            d = v.difference
            table.loc[other, VERDICT_COLUMNS[1:]] = [d.mean, d.low, d.high, p, v.p, outcome(d, p, bootstrap.alpha)]
    return table


def holm_note(dataset: str, comparisons: int) -> str:
    """What the verdicts of a dataset with several comparisons were corrected for; empty with
    one comparison, where Holm's correction changes nothing."""
    if comparisons < 2:
        return ""
    return (f"{dataset}: p-values Holm-corrected over the {comparisons} comparisons with its best "
            "(mcnemar_p_raw: as tested); the intervals are not adjusted")


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per pair, the dataset's best first: "A beats B by ..." or "A and B are tied
    (...)", with the Holm-corrected p; then, where a dataset has several comparisons, a line
    saying they were corrected (:func:`holm_note`). A dataset with several networks but no
    test split says it has no verdict."""
    lines = []
    for dataset, part in table.groupby("dataset", sort=True):
        compared = part[part["versus"] != ""]
        for _, r in compared.iterrows():
            if pd.isna(r["mcnemar_p"]):
                continue
            # The row holds its own side (row minus best); the sentence names the best first.
            d = Difference(-r["test_difference"], -r["test_difference_high"], -r["test_difference_low"])
            lines.append(f"{dataset}: " + sentence(r["versus"], label(r), d, r["mcnemar_p"], _FLIPPED[r["verdict"]]))
        if len(compared) and compared["mcnemar_p"].isna().all():
            lines.append(f"{dataset}: no test split, so no paired verdict (validation chose the classifiers)")
        note = holm_note(dataset, int(compared["mcnemar_p"].notna().sum()))
        if note:
            lines.append(note)
    return lines


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per network: its chosen classifier's accuracy and head on each dataset (test,
    or validation where the dataset has no test split), the mean accuracy and the mean rank
    over the datasets it was run on (rank 1 = best on a dataset; ties share the mean rank).
    Sorted by mean rank, then mean accuracy."""
    chosen = table[table["best"]]
    datasets = sorted(chosen["dataset"].unique())
    rows: dict[str, dict] = {n: {"network": n} for n in sorted(chosen["network"].unique())}
    ranks: dict[str, list[float]] = {n: [] for n in rows}
    for dataset in datasets:
        part = chosen[chosen["dataset"] == dataset]
        metric = shown_metric(part)
        for (_, r), rank in zip(part.iterrows(), part[metric].rank(ascending=False, method="average"), strict=True):
            rows[r["network"]][dataset] = r[metric]
            rows[r["network"]][f"{dataset}_head"] = r["head"]
            ranks[r["network"]].append(float(rank))
    columns = ["network", *datasets, *(f"{d}_head" for d in datasets), "mean_accuracy", "mean_rank"]
    summary = pd.DataFrame(list(rows.values()), columns=columns[:-2])
    summary["mean_accuracy"] = summary[datasets].mean(axis=1) if datasets else np.nan
    summary["mean_rank"] = [np.mean(ranks[n]) for n in summary["network"]]
    return summary.sort_values(["mean_rank", "mean_accuracy"], ascending=[True, False], ignore_index=True)


def _summary_shown(summary: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    datasets = [c for c in summary.columns if f"{c}_head" in summary.columns]
    shown = pd.DataFrame({"network": summary["network"]})
    for d in datasets:
        split = shown_metric(table[(table["dataset"] == d) & table["best"]]).split("_")[0]
        shown[f"{d} ({split})"] = [f"{percent(a)} ({h})" if pd.notna(a) else "n/a"
                                   for a, h in zip(summary[d], summary[f"{d}_head"], strict=True)]
    shown["mean"] = summary["mean_accuracy"].map(percent)
    shown["mean rank"] = summary["mean_rank"].map(lambda v: f"{v:.2f}")
    return shown


SUMMARY_NOTE = ("Each network's classifier chosen on validation; its accuracy per dataset (test where the dataset "
                "has a test split), the mean over datasets, and the mean rank (1 = best on a dataset).")


def summary_markdown(summary: pd.DataFrame, table: pd.DataFrame) -> str:
    body = _summary_shown(summary, table).to_markdown(index=False, disable_numparse=True)
    return f"# Summary across datasets\n\n{SUMMARY_NOTE}\n\n{body}\n"


def summary_rst(summary: pd.DataFrame, table: pd.DataFrame) -> str:
    """The summary as the report's first page shows it (a grid table, then its note)."""
    grid = _summary_shown(summary, table).to_markdown(index=False, tablefmt="grid", disable_numparse=True)
    return f"Summary across datasets:\n\n{grid}\n\n{SUMMARY_NOTE}\n"


def write_summary(summary: pd.DataFrame, table: pd.DataFrame, csv_path: str | os.PathLike,
                  md_path: str | os.PathLike) -> None:
    with atomic_write(csv_path, "w") as f:
        summary.to_csv(f, index=False, float_format="%.6g")
    with atomic_write(md_path, "w") as f:
        f.write(summary_markdown(summary, table))


def chosen(table: pd.DataFrame, select_by: str) -> dict[str, dict]:
    """Each dataset's chosen classifier, the one its verdicts measure the others against,
    chosen on validation ``select_by``: ``{dataset: {"network", "head", "head_of": {network:
    its chosen head}, "network_of": {head: the best network with it}}}``."""
    out = {}
    for dataset, part in table.groupby("dataset", sort=False):
        picks = part[part["best"]]
        top = picks.loc[select_best(picks, ["dataset"], select_by)[0]]
        by_head = part.loc[select_best(part, ["head"], select_by)]
        out[dataset] = {"network": top["network"], "head": top["head"],
                        "head_of": dict(zip(picks["network"], picks["head"], strict=True)),
                        "network_of": dict(zip(by_head["head"], by_head["network"], strict=True))}
    return out


def write_choice(table: pd.DataFrame, select_by: str, path: str | os.PathLike) -> None:
    """results/choice.json: what ``predict`` and ``export`` apply when the config names no network or head."""
    with atomic_write(path, "w") as f:
        json.dump(chosen(table, select_by), f, indent=2)
