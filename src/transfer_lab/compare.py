"""The comparison: one row per (network, dataset, head or fine-tuning), and its figures.

Written as CSV (for programs), Markdown and HTML (for people), a reStructuredText
summary (the report's first page) and PNG figures. The best classifier of each
(network, dataset) is chosen on validation accuracy; the test split is reported,
never used to choose.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .files import atomic_write
from .references import reference_for

COLUMNS = [
    "network", "arch", "weights", "dataset", "method", "head", "feature_dim",
    "n_train", "n_validation", "n_test", "validation_accuracy", "test_accuracy", "best",
    "reference", "extract_seconds", "images_per_second", "head_seconds",
]
BEST_NOTE = ("**Bold**: the best classifier of each (network, dataset), chosen on validation "
             "accuracy; test accuracy is reported, never used to choose.")


def comparison_table(
    head_metrics: list[dict], extract_metrics: list[dict], datasets: dict[str, dict] | None = None
) -> pd.DataFrame:
    """Join classifier results with the extraction cost of their (network, dataset).

    ``head_metrics`` holds both heads on bottleneck features (``method: features``) and
    fine-tuned networks (``method: finetune``), which have no extraction cost.
    Extraction cost sums every split of the pair, so images/s is the whole dataset's
    throughput, model loading excluded; after a resumed run it counts the images that
    run computed (``n_computed``), not those taken from earlier shards. ``datasets``
    (name -> ``source``, ``train_per_class``) lets rows that follow a published protocol
    carry its number.
    """
    cost: dict[tuple[str, str], list[float]] = {}
    for m in extract_metrics:
        c = cost.setdefault((m["network"], m["dataset"]), [0.0, 0])
        c[0] += m["seconds"]
        c[1] += m["n_computed"]
    datasets = datasets or {}
    rows = []
    for m in head_metrics:
        method = m.get("method", "features")
        seconds, n_images = (
            cost.get((m["network"], m["dataset"]), (float("nan"), 0)) if method == "features"
            else (float("nan"), 0)
        )
        info = datasets.get(m["dataset"], {})
        rows.append({
            "network": m["network"], "arch": m["arch"], "weights": m["weights"],
            "dataset": m["dataset"], "method": method, "head": m["head"],
            "feature_dim": m["feature_dim"],
            "n_train": m["n"]["train"], "n_validation": m["n"]["validation"],
            "n_test": m["n"].get("test", 0),
            "validation_accuracy": m["accuracy"]["validation"],
            "test_accuracy": m["accuracy"].get("test", float("nan")),
            "best": False,
            "reference": reference_for(m["arch"], info.get("source"), m.get("head_kind", m["head"]),
                                       info.get("train_per_class")),
            "extract_seconds": seconds,
            "images_per_second": n_images / seconds if seconds and seconds > 0 else float("nan"),
            "head_seconds": m["train_seconds"],
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(["dataset", "network", "method", "head"], ignore_index=True)
    if len(table):
        # idxmax keeps the first of equal maxima: ties go to the row sorted first.
        best = table.groupby(["network", "dataset"], sort=False)["validation_accuracy"].idxmax()
        table.loc[best.to_numpy(), "best"] = True
    table["best"] = table["best"].astype(bool)
    return table


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The best row of each dataset (across networks), by validation accuracy."""
    ranked = table.sort_values(["dataset", "validation_accuracy"], ascending=[True, False], kind="stable")
    return ranked.groupby("dataset", sort=True).head(1)


def _percent(v: float) -> str:
    return f"{100 * v:.1f}%" if pd.notna(v) else "n/a"


def _formatted(table: pd.DataFrame, bold: str) -> pd.DataFrame:
    """Cells as people read them; the best row's head and accuracies wrapped in ``bold``."""
    shown = table.copy()
    for col in ("validation_accuracy", "test_accuracy"):
        shown[col] = shown[col].map(_percent)
    for col in ("extract_seconds", "head_seconds"):
        shown[col] = shown[col].map(lambda v: f"{v:.1f}" if pd.notna(v) else "n/a")
    shown["images_per_second"] = shown["images_per_second"].map(lambda v: f"{v:.0f}" if pd.notna(v) else "n/a")
    shown["best"] = shown["best"].map(lambda b: "best" if b else "")
    for col in ("head", "validation_accuracy", "test_accuracy"):
        shown[col] = [bold.format(v) if b else v for v, b in zip(shown[col], table["best"])]
    return shown


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per dataset: which network and classifier transfer best to it."""
    lines = []
    for _, r in best_rows(table).iterrows():
        test = f", test {_percent(r.test_accuracy)}" if pd.notna(r.test_accuracy) else ""
        how = "fine-tuned end to end" if r.method == "finetune" else f"{r['head']} head on its features"
        lines.append(f"{r.dataset}: {r.network} ({r.arch}, {how}): validation "
                     f"{_percent(r.validation_accuracy)}{test}")
    return lines


def to_markdown(table: pd.DataFrame) -> str:
    shown = _formatted(table, "**{}**")
    # disable_numparse: tabulate would re-parse "4.0" as 4 and drop the decimal.
    aligns = ["right" if pd.api.types.is_numeric_dtype(table[c]) and table[c].dtype != bool
              or c.endswith(("accuracy", "seconds")) else "left" for c in shown.columns]
    best = "\n".join(f"- {line}" for line in summary_lines(table))
    body = shown.to_markdown(index=False, disable_numparse=True, colalign=aligns)
    return f"# Comparison\n\nBest per dataset:\n\n{best}\n\n{body}\n\n{BEST_NOTE}\n"


def to_rst_summary(table: pd.DataFrame) -> str:
    """The report's first page: the best per dataset, then the table's essential columns."""
    keep = ["dataset", "network", "method", "head", "validation_accuracy", "test_accuracy",
            "reference", "images_per_second"]
    if not table["reference"].astype(bool).any():
        keep.remove("reference")
    shown = _formatted(table, "**{}**")[keep].rename(columns={
        "validation_accuracy": "validation", "test_accuracy": "test", "images_per_second": "images/s"})
    best = "\n".join(f"- {line}" for line in summary_lines(table))
    grid = shown.to_markdown(index=False, tablefmt="grid", disable_numparse=True)
    return f"Best per dataset:\n\n{best}\n\n{grid}\n\n{BEST_NOTE}\n"


def to_html(table: pd.DataFrame) -> str:
    """A standalone page (the report shows it in a frame): best rows in bold."""
    shown = _formatted(table, "<b>{}</b>")
    for col in shown.columns:
        if col not in ("head", "validation_accuracy", "test_accuracy"):
            shown[col] = shown[col].map(lambda v: html.escape(str(v)))
    best = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(table))
    body = shown.to_html(index=False, escape=False, border=0, na_rep="n/a")
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
             "th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "th{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Comparison</title>"
            f"<style>{style}</style></head><body><h3>Best per dataset</h3><ul>{best}</ul>{body}"
            f"<p>{html.escape(BEST_NOTE).replace('**Bold**', '<b>Bold</b>')}</p></body></html>\n")


def write_table(
    table: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    html_path: str | os.PathLike | None = None,
    rst_path: str | os.PathLike | None = None,
) -> None:
    with atomic_write(csv_path, "w") as f:
        table.to_csv(f, index=False, float_format="%.6g")
    with atomic_write(md_path, "w") as f:
        f.write(to_markdown(table))
    if html_path is not None:
        with atomic_write(html_path, "w") as f:
            f.write(to_html(table))
    if rst_path is not None:
        with atomic_write(rst_path, "w") as f:
            f.write(to_rst_summary(table))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png_path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    with atomic_write(png_path) as f:
        f.write(buf.getvalue())


def _metric(part: pd.DataFrame) -> str:
    """Test accuracy where every row of the panel has one, else validation accuracy."""
    return "test_accuracy" if part["test_accuracy"].notna().all() else "validation_accuracy"


def plot_comparison(table: pd.DataFrame, png_path: str | os.PathLike) -> None:
    """Grouped bars: one panel per dataset, networks along x, one bar per head.

    Test accuracy where the dataset has a test split, else validation accuracy; the
    value is printed on each bar so the chart reads without a ruler.
    """
    plt = _pyplot()
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(max(6, 3 + 2.2 * table["network"].nunique()) * len(datasets), 4.8),
        squeeze=False,
    )
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        metric = _metric(part)
        grid = part.pivot(index="network", columns="head", values=metric)
        networks, heads = list(grid.index), list(grid.columns)
        width = 0.8 / len(heads)
        for j, head in enumerate(heads):
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(networks))]
            bars = ax.bar(xs, 100 * grid[head].to_numpy(), width, label=head)
            ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
        ax.set_xticks(range(len(networks)), networks, rotation=15, ha="right")
        ax.set_ylim(0, 115)  # headroom for the legend above the bars
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(f"{dataset}: {metric.split('_')[0]} accuracy by network and head")
        ax.legend(title="head", loc="upper right", ncol=len(heads), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, png_path)


def plot_tradeoff(table: pd.DataFrame, png_path: str | os.PathLike) -> None:
    """Validation accuracy of each network's best feature head against its extraction
    throughput (images/s, log scale), one panel per dataset: up and right is better."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = table[(table["dataset"] == dataset) & (table["method"] == "features")]
        part = part.sort_values("validation_accuracy", ascending=False, kind="stable")
        part = part.groupby("network", sort=False).head(1).dropna(subset=["images_per_second"])
        if part.empty:
            ax.text(0.5, 0.5, "no extraction timings", ha="center", va="center", transform=ax.transAxes)
        for _, r in part.iterrows():
            ax.scatter(r.images_per_second, 100 * r.validation_accuracy, s=40)
            ax.annotate(f"{r.network} ({r['head']})", (r.images_per_second, 100 * r.validation_accuracy),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("extraction throughput (images/s, log scale)")
        ax.set_ylabel("validation accuracy of the best head (%)")
        ax.set_title(f"{dataset}: accuracy against extraction cost")
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    _save(fig, png_path)


def _best_split(metrics: dict) -> str:
    return "test" if "test" in metrics["confusion_matrix"] else "validation"


def plot_confusion(table: pd.DataFrame, metrics: Sequence[dict], dataset: str, png_path: str | os.PathLike) -> None:
    """One row-normalised confusion matrix per network: that of its best classifier on the
    dataset, on test (else validation), with class names; counts printed when they fit."""
    plt = _pyplot()
    best = table[(table["dataset"] == dataset) & table["best"]]
    by_key = {(m["network"], m["head"]): m for m in metrics if m["dataset"] == dataset}
    chosen = [by_key[(r.network, r["head"])] for _, r in best.iterrows() if (r.network, r["head"]) in by_key]
    n_classes = len(chosen[0]["class_names"]) if chosen else 1
    side = min(4 + 0.28 * n_classes, 16)
    fig, axes = plt.subplots(1, max(len(chosen), 1), figsize=(side * max(len(chosen), 1), side), squeeze=False)
    for ax, m in zip(axes[0], chosen):
        split = _best_split(m)
        cm = np.asarray(m["confusion_matrix"][split], dtype=float)
        rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        names = m["class_names"]
        size = 8 if len(names) <= 20 else 5
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=size)
        ax.set_yticks(range(len(names)), names, fontsize=size)
        if len(names) <= 12:
            for i in range(len(names)):
                for j in range(len(names)):
                    if cm[i, j]:
                        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{m['network']} + {m['head']}: {split} accuracy {_percent(m['accuracy'][split])}",
                     fontsize=10)
    if not chosen:
        axes[0][0].text(0.5, 0.5, "no classifier metrics", ha="center", va="center")
    fig.suptitle(f"{dataset}: confusion matrix of each network's best classifier (rows: true class)")
    fig.tight_layout()
    _save(fig, png_path)


def plot_curves(metrics: Sequence[dict], dataset: str, png_path: str | os.PathLike) -> None:
    """Training curves, one panel per network: validation loss per epoch of every head
    trained by epochs (and of fine-tuning); logreg's L-BFGS objective per evaluation in a
    panel of its own, since iterations and epochs do not share an axis."""
    plt = _pyplot()
    part = [m for m in metrics if m["dataset"] == dataset]
    networks = list(dict.fromkeys(m["network"] for m in part))
    iterative = [m for m in part if m["curve"] and "iteration" in m["curve"][0]]
    n_panels = len(networks) + (1 if iterative else 0)
    fig, axes = plt.subplots(1, max(n_panels, 1), figsize=(5 * max(n_panels, 1), 4), squeeze=False)
    for ax, network in zip(axes[0], networks):
        for m in part:
            if m["network"] == network and m["curve"] and "epoch" in m["curve"][0]:
                epochs = [c["epoch"] for c in m["curve"]]
                line, = ax.plot(epochs, [c["validation_loss"] for c in m["curve"]], label=f"{m['head']} validation")
                ax.plot(epochs, [c["train_loss"] for c in m["curve"]], ls="--", color=line.get_color(),
                        alpha=0.6, label=f"{m['head']} train")
                if m.get("best_epoch"):
                    ax.axvline(m["best_epoch"], color=line.get_color(), ls=":", alpha=0.6)
        ax.set_title(f"{network}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if iterative:
        ax = axes[0][n_panels - 1]
        for m in iterative:
            ax.plot([c["iteration"] for c in m["curve"]], [c["train_loss"] for c in m["curve"]],
                    label=f"{m['network']} {m['head']} (C={m.get('C')})")
        ax.set_title("logreg: refit objective")
        ax.set_xlabel("L-BFGS evaluation")
        ax.set_ylabel("regularised loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}: training curves (dotted line: the kept epoch)")
    fig.tight_layout()
    _save(fig, png_path)
