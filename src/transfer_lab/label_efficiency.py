"""Label-efficiency curves: accuracy against the number of labelled training images per class.

Each point is one head trained on ``shots`` images per class (rule train_shots, every
repeat on its own draw), or on the full training set (``all``: the comparison's own
heads). The figure draws, for each network, the head kind the comparison chose for it on
validation, with the bootstrap interval that pools its repeats shaded around it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .compare import pyplot, save_figure
from .evaluation import correct_matrix, repeat_scores
from .files import atomic_write
from .ranking import select_best
from .uncertainty import BOOTSTRAP, Bootstrap, summarise_accuracy

COLUMNS = [
    "network", "dataset", "head", "shots", "images_per_class", "n_train", "repeats", "split",
    "accuracy", "accuracy_sd", "accuracy_low", "accuracy_high", "selected",
]


def _point(m: dict, bootstrap: Bootstrap) -> dict:
    """One classifier's place on the curve: x (shots, or the full set's images per class) and
    its accuracy on test (validation where the dataset has no test split)."""
    split = "test" if (m.get("labels") or {}).get("test") is not None else "validation"
    runs = m.get("repeats") or [m]
    n_train = float(np.mean([r["n_train"] for r in runs]))
    s = summarise_accuracy(correct_matrix(m, split), bootstrap)
    scores = repeat_scores(m, "accuracy", split)
    shots = m.get("shots")
    return {
        "network": m["network"], "dataset": m["dataset"], "head": m["head"],
        "shots": "all" if shots is None else str(shots),
        "images_per_class": float(shots) if shots is not None else n_train / len(m["class_names"]),
        "n_train": n_train, "repeats": len(runs), "split": split,
        "accuracy": float(np.mean(scores)), "accuracy_sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else np.nan,
        "accuracy_low": s.low, "accuracy_high": s.high,
    }


def label_efficiency_table(
    shot_metrics: Sequence[dict],
    head_metrics: Sequence[dict],
    table: pd.DataFrame,
    shots: Sequence[int | str],
    select_by: str = "accuracy",
    bootstrap: Bootstrap = BOOTSTRAP,
) -> pd.DataFrame:
    """Every (network, dataset, head, shots) point; ``selected`` marks the head kind each
    network's curve is drawn with: its best feature head in the comparison ``table`` (on
    validation ``select_by``, so the same choice as the comparison's where that is a head).
    ``head_metrics`` give the ``all`` points when ``shots`` lists ``all``."""
    full = [m for m in head_metrics if m.get("method", "features") == "features"] if "all" in shots else []
    curve = pd.DataFrame([_point(m, bootstrap) for m in [*shot_metrics, *full]], columns=COLUMNS[:-1])
    features = table[table["method"] == "features"]
    chosen = features.loc[select_best(features, ["network", "dataset"], select_by)] if len(features) else features
    picked = set(zip(chosen["network"], chosen["dataset"], chosen["head"], strict=True))
    curve["selected"] = [key in picked for key in zip(curve["network"], curve["dataset"], curve["head"], strict=True)]
    return curve.sort_values(["dataset", "network", "head", "images_per_class"], ignore_index=True)


def write_label_efficiency(curve: pd.DataFrame, csv_path: str | os.PathLike) -> None:
    with atomic_write(csv_path, "w") as f:
        curve.to_csv(f, index=False, float_format="%.6g")


def plot_label_efficiency(curve: pd.DataFrame, dataset: str, png_path: str | os.PathLike) -> None:
    """Accuracy against images per class (log scale), one line per network (its selected
    head kind), the interval over test images and repeats shaded."""
    plt = pyplot()
    part = curve[(curve["dataset"] == dataset) & curve["selected"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for network, line in part.groupby("network", sort=True):
        line = line.sort_values("images_per_class")
        x = line["images_per_class"].to_numpy(float)
        drawn, = ax.plot(x, 100 * line["accuracy"], marker="o", label=f"{network} ({line['head'].iloc[0]})")
        ax.fill_between(x, 100 * line["accuracy_low"], 100 * line["accuracy_high"], color=drawn.get_color(),
                        alpha=0.2, linewidth=0)
    ticks = part.drop_duplicates("shots").sort_values("images_per_class")
    if len(ticks):
        ax.set_xscale("log")
        ax.set_xticks(ticks["images_per_class"], [s if s != "all" else f"all\n(~{x:.0f})" for s, x in
                                                  zip(ticks["shots"], ticks["images_per_class"], strict=True)])
        ax.minorticks_off()
        ax.legend(title="network (head)", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no label-efficiency points", ha="center", va="center", transform=ax.transAxes)
    split = part["split"].iloc[0] if len(part) else "test"
    ax.set_xlabel("labelled training images per class (log scale)")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"{dataset}: accuracy against labelled images per class")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path)
