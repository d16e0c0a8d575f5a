"""What the user reads of a selection by successive halving: the table, the sentence, the figure.

The inputs are the JSON files the selection rules write (:mod:`transfer_lab.selection`
makes their contents):

- one *record* per (candidate, dataset, rung): ``network``, ``dataset``, ``rung``,
  ``fraction`` (of the training images), ``n_train``, ``n_validation``, ``probe``, the
  probe's validation ``accuracy`` with its interval (``low``, ``high``), ``logme``,
  ``knn_accuracy``, ``params`` (a count), ``imagenet_top1`` (percent, as published),
  ``images_per_second`` and ``forward_passes``;
- one *decision* per (dataset, rung): ``rank_by``, ``ranked``, ``kept``, ``cut``,
  ``leader``, ``gaps`` (in the ``rank_by`` score) and ``accuracy_gaps``; a rung on every
  training image cuts nobody;
- per dataset, the forward passes ``spent`` by halving against the ``exhaustive`` count
  of trying every candidate, and their ``share``.

Rungs are numbered from 1 in everything shown here (the order of their fractions), so the
numbers read the same whatever the records call them. Every accuracy here is on the
*validation* split: halving chooses, and choices never look at test images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .compare import pyplot, save_figure
from .files import atomic_write

FIXED_COLUMNS = ["dataset", "network", "status", "rung", "fraction", "rungs", "forward_passes"]
SCORE_COLUMNS = ["logme", "knn_accuracy", "params_millions", "imagenet_top1", "images_per_second", "leader",
                 "gap_points", "rank_by", "score_gap", "led_at"]
FINALIST = "finalist"


def fraction_label(fraction: float) -> str:
    """How a rung's fraction names its columns: ``acc@0.1``, ``acc@1``."""
    return f"{float(fraction):g}"


def _float(value) -> float:
    """A record's number, NaN where it is missing or null (a score a rung did not compute)."""
    return float("nan") if value is None else float(value)


def _by_dataset(items: Sequence[dict], dataset: str) -> list[dict]:
    return [item for item in items if item["dataset"] == dataset]


def _rung_order(records: Sequence[dict]) -> dict[float, int]:
    """Each fraction's rung number, from 1, in increasing order of fraction."""
    return {f: i + 1 for i, f in enumerate(sorted({float(r["fraction"]) for r in records}))}


def _last_known(rows: Sequence[dict], key: str) -> float:
    """The value of ``key`` at the latest rung that has one (NaN if none does): images/s and
    parameters do not change between rungs, but a rung may not have measured them."""
    for r in reversed(rows):
        if r.get(key) is not None:
            return float(r[key])
    return float("nan")


def _status(name: str, last: dict, decision: dict | None, final_fraction: float, rung: int) -> str:
    """``finalist`` (screened on every training image, where no rung cuts, or kept at the
    dataset's last rung), ``cut at rung k``, or ``screening`` where the rung it reached has
    no decision yet."""
    if float(last["fraction"]) == 1.0:
        return FINALIST
    if decision is None:
        return "screening"
    if name in decision.get("cut", []):
        return f"cut at rung {rung}"
    if float(last["fraction"]) == final_fraction and name in decision.get("kept", []):
        return FINALIST
    return "screening"


def _dataset_rows(records: list[dict], decisions: list[dict]) -> list[dict]:
    """The rows of one dataset's table (see :func:`selection_table`)."""
    order = _rung_order(records)
    final_fraction = max(order)
    decision_at = {float(d["fraction"]): d for d in decisions}
    leaders = {f: d["leader"] for f, d in decision_at.items() if d.get("leader")}
    rows = []
    for name in sorted({r["network"] for r in records}):
        mine = sorted((r for r in records if r["network"] == name), key=lambda r: float(r["fraction"]))
        last = mine[-1]
        fraction = float(last["fraction"])
        decision = decision_at.get(fraction)
        status = _status(name, last, decision, final_fraction, order[fraction])
        row = {"dataset": last["dataset"], "network": name, "status": status, "rung": order[fraction],
               "fraction": fraction, "rungs": len(order),
               "forward_passes": int(sum(int(r.get("forward_passes") or 0) for r in mine))}
        for r in mine:
            f = fraction_label(r["fraction"])
            row[f"acc@{f}"], row[f"low@{f}"], row[f"high@{f}"] = (_float(r.get(k)) for k in ("accuracy", "low", "high"))
        params = _last_known(mine, "params")
        row.update({
            "logme": _float(last.get("logme")), "knn_accuracy": _float(last.get("knn_accuracy")),
            "params_millions": params / 1e6, "imagenet_top1": _last_known(mine, "imagenet_top1"),
            "images_per_second": _last_known(mine, "images_per_second"),
            "leader": "", "gap_points": np.nan, "rank_by": decision.get("rank_by", "") if decision else "",
            "score_gap": np.nan,
            "led_at": " ".join(fraction_label(f) for f in sorted(leaders) if leaders[f] == name),
        })
        if status.startswith("cut"):
            leader = decision["leader"]
            top = next((r for r in records if r["network"] == leader and float(r["fraction"]) == fraction), {})
            row["leader"] = leader
            row["gap_points"] = 100 * (_float(top.get("accuracy")) - _float(last.get("accuracy")))
            row["score_gap"] = _float(decision.get("gaps", {}).get(name))
        row["_order"] = (-order[fraction], _position(decision, name), name)
        rows.append(row)
    return sorted(rows, key=lambda r: r.pop("_order"))


def _position(decision: dict | None, name: str) -> int:
    ranked = (decision or {}).get("ranked", [])
    return ranked.index(name) if name in ranked else len(ranked)


def selection_table(records: Sequence[dict], decisions: Sequence[dict]) -> pd.DataFrame:
    """One row per (dataset, candidate), datasets in name order, then the furthest rung
    first and, within a rung, the order the decision ranked them in.

    Columns: ``status`` (``finalist``, ``cut at rung k``, or ``screening`` while a rung
    has no decision), ``rung`` and ``fraction`` (the last rung it was screened at, from
    1, of ``rungs``), ``forward_passes`` (images its screening pushed through it), then
    per rung ``acc@f``, ``low@f``, ``high@f`` (validation accuracy of the probe and its
    interval on the fraction ``f`` of the training images; empty past the rung where it
    was cut), its last rung's ``logme`` and ``knn_accuracy``, ``params_millions``,
    ``imagenet_top1`` (percent), ``images_per_second`` (as measured on this device), and
    for a candidate cut: the rung's ``leader``, ``gap_points`` (the leader's accuracy minus
    its own, in points) and ``score_gap`` (the same in the ``rank_by`` score the cut used).
    ``led_at``: the fractions of the rungs this candidate led.
    """
    rows = [row for dataset in sorted({r["dataset"] for r in records})
            for row in _dataset_rows(_by_dataset(records, dataset), _by_dataset(decisions, dataset))]
    fractions = sorted({float(r["fraction"]) for r in records})
    per_rung = [f"{k}@{fraction_label(f)}" for f in fractions for k in ("acc", "low", "high")]
    return pd.DataFrame(rows, columns=FIXED_COLUMNS + per_rung + SCORE_COLUMNS)


def _names(names: Sequence[str], rst: bool) -> list[str]:
    return [f"``{n}``" if rst else n for n in names]


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _percent_of_training(fraction: float) -> str:
    return f"{100 * fraction:g}% of the training images"


def selection_sentence(table: pd.DataFrame, dataset: str, cost: Mapping | None = None, rst: bool = False) -> str:
    """The choice on ``dataset`` in one sentence (two with ``cost``), e.g. "On digits, 2 of 9
    candidates reached the full training set after 2 rungs; efficientnet_lite2 led at every
    rung. Halving spent 31% of the forward passes of trying every candidate (12,345 of 39,800
    images)." ``rst``: network names as literals, so any name is safe in reStructuredText."""
    part = table[table["dataset"] == dataset]
    if part.empty:
        raise ValueError(f"selection: no record for dataset {dataset!r}")
    n, rungs = len(part), int(part["rungs"].iloc[0])
    finalists = part[part["status"] == FINALIST]
    final_fraction = float(part["fraction"].max())
    cuts = rungs - 1 if final_fraction == 1.0 else rungs
    plural = "s" if cuts != 1 else ""
    if finalists.empty:
        text = f"On {dataset}, {n} candidates are still being screened"
    else:
        count = f"all {n} candidates" if len(finalists) == n else f"{len(finalists)} of {n} candidates"
        if final_fraction < 1.0:
            text = (f"On {dataset}, {count} survived {cuts} rung{plural} of halving (the last on "
                    f"{_percent_of_training(final_fraction)})")
        else:
            after = f" after {cuts} rung{plural} of halving" if cuts else " (no rung before it)"
            text = f"On {dataset}, {count} reached the full training set{after}"
    leaders = {f: name for name, led in zip(part["network"], part["led_at"], strict=True) for f in led.split()}
    if leaders:
        order = sorted(leaders, key=float)
        if len(set(leaders.values())) == 1 and len(leaders) == rungs:
            text += f"; {_names([leaders[order[0]]], rst)[0]} led at every rung"
        else:
            steps = [f"{name} at {100 * float(f):g}%"
                     for f, name in zip(order, _names([leaders[f] for f in order], rst), strict=True)]
            text += f"; the rung leaders were {_listed(steps)} of the training images"
    text += "."
    if cost:
        text += (f" Halving spent {100 * float(cost['share']):.0f}% of the forward passes of trying every candidate "
                 f"({int(cost['spent']):,} of {int(cost['exhaustive']):,} images).")
    return text


def _cell(acc: float, low: float, high: float) -> str:
    if pd.isna(acc):
        return ""
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if pd.notna(low) and pd.notna(high) else ""
    return f"{100 * acc:.1f}%{interval}"


def _number(v: float, fmt: str) -> str:
    return format(v, fmt) if pd.notna(v) else "n/a"


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: one cell per rung (accuracy [interval]), units in the
    headers, empty cells past the rung a candidate was cut at."""
    fractions = [c.split("@", 1)[1] for c in table.columns if c.startswith("acc@")]
    shown = pd.DataFrame({"dataset": table["dataset"], "network": table["network"], "status": table["status"]})
    for f in fractions:
        shown[f"validation @ {f}"] = [_cell(*v) for v in table[[f"acc@{f}", f"low@{f}", f"high@{f}"]].to_numpy(float)]
    shown["LogME"] = table["logme"].map(lambda v: _number(v, ".3f"))
    shown["kNN"] = table["knn_accuracy"].map(lambda v: f"{100 * v:.1f}%" if pd.notna(v) else "n/a")
    shown["params (M)"] = table["params_millions"].map(lambda v: _number(v, ".1f"))
    shown["ImageNet top-1 (%)"] = table["imagenet_top1"].map(lambda v: _number(v, ".1f"))
    shown["images/s"] = table["images_per_second"].map(lambda v: _number(v, ".0f"))
    shown["gap to leader (points)"] = [f"{g:.1f} ({leader})" if pd.notna(g) else ""
                                       for g, leader in zip(table["gap_points"], table["leader"], strict=True)]
    return shown


NOTE = ("Accuracy: the screening probe's, on the validation split, on the share of the training images each "
        "rung used (the header's fraction), with its 95% interval; scores at the last rung a candidate "
        "reached. Gap: the rung leader's accuracy minus the candidate's when it was cut.")


def selection_markdown(table: pd.DataFrame, costs: Mapping[str, Mapping] | None = None) -> str:
    """The page: one sentence per dataset, the table, what its cells mean."""
    costs = costs or {}
    sentences = "\n".join(f"- {selection_sentence(table, d, costs.get(d))}" for d in sorted(set(table["dataset"])))
    body = shown_table(table).to_markdown(index=False, disable_numparse=True)
    return f"# Selection\n\n{sentences}\n\n{body}\n\n{NOTE}\n"


def selection_rst(table: pd.DataFrame, costs: Mapping[str, Mapping] | None = None) -> str:
    """The report's selection section: the sentences and the table as a grid, to go first on
    the report's first page (e.g. as ``preface`` of :func:`transfer_lab.compare.write_table`)."""
    costs = costs or {}
    sentences = "\n".join(f"- {selection_sentence(table, d, costs.get(d), rst=True)}"
                          for d in sorted(set(table["dataset"])))
    grid = shown_table(table).to_markdown(index=False, tablefmt="grid", disable_numparse=True)
    return f"Selection by successive halving:\n\n{sentences}\n\n{grid}\n\n{NOTE}\n"


def write_selection(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                    costs: Mapping[str, Mapping] | None = None, rst_path: str | os.PathLike | None = None) -> None:
    """``results/selection.csv`` (every column, full precision), ``.md`` and, when asked,
    the report's RST section (:func:`selection_rst`)."""
    with atomic_write(csv_path, "w") as f:
        table.to_csv(f, index=False, float_format="%.6g")
    with atomic_write(md_path, "w") as f:
        f.write(selection_markdown(table, costs))
    if rst_path is not None:
        with atomic_write(rst_path, "w") as f:
            f.write(selection_rst(table, costs))


def plot_selection(records: Sequence[dict], decisions: Sequence[dict], dataset: str,
                   png_path: str | os.PathLike) -> None:
    """Validation accuracy against training images (log scale), one line per candidate
    ending at the rung where it was cut (an x there), with its interval as error bars;
    finalists drawn bold and named, every candidate named in the legend when there are
    at most 10, else the cut ones grey. Candidates are nudged apart along x so that their
    bars do not hide each other."""
    plt = pyplot()
    table = selection_table(_by_dataset(records, dataset), _by_dataset(decisions, dataset))
    mine = _by_dataset(records, dataset)
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    if not mine:
        ax.text(0.5, 0.5, "no selection records", ha="center", va="center", transform=ax.transAxes)
    many = len(table) > 10
    sizes = {float(r["fraction"]): int(r["n_train"]) for r in mine}
    for i, row in enumerate(table.itertuples(index=False)):
        points = sorted((r for r in mine if r["network"] == row.network), key=lambda r: float(r["fraction"]))
        nudge = 1 + 0.015 * (i - (len(table) - 1) / 2)
        x = np.array([int(r["n_train"]) for r in points], float) * nudge
        y, low, high = (100 * np.array([_float(r.get(k)) for r in points]) for k in ("accuracy", "low", "high"))
        bars = np.nan_to_num(np.abs(np.stack([y - low, high - y])))  # no interval: no bar
        finalist = row.status == FINALIST
        style = {"lw": 2.2, "alpha": 1.0, "zorder": 3} if finalist else {"lw": 1.0, "alpha": 0.7, "zorder": 2}
        if many and not finalist:
            style["color"] = "0.6"
        drawn = ax.errorbar(x, y, yerr=bars, marker="o", ms=4, capsize=2, elinewidth=0.8,
                            label=row.network if finalist or not many else None, **style)
        if row.status.startswith("cut"):
            ax.plot(x[-1], y[-1], marker="x", ms=9, mew=2, color=drawn.lines[0].get_color(), zorder=4)
        if finalist:
            ax.annotate(row.network, (x[-1], y[-1]), textcoords="offset points", xytext=(6, 0), fontsize=8,
                        va="center", fontweight="bold")
    if sizes:
        ax.set_xscale("log")
        ticks = sorted(sizes)
        ax.set_xticks([sizes[f] for f in ticks], [f"{sizes[f]:,}\n({100 * f:g}%)" for f in ticks])
        ax.minorticks_off()
        ax.plot([], [], "x", color="0.3", mew=2, label="cut here")
        ax.legend(fontsize=7, loc="lower right", title="bold: finalists", title_fontsize=7)
    probe = mine[0].get("probe", "probe") if mine else "probe"
    ax.set_xlabel("training images screened on (log scale)")
    ax.set_ylabel(f"validation accuracy of the {probe} probe (%)")
    ax.set_title(f"{dataset}: successive halving, one line per candidate")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15)
    fig.tight_layout()
    save_figure(fig, png_path)
