"""The comparison: one row per (network, dataset, head), as CSV, Markdown and a bar chart."""

from __future__ import annotations

import io
import os

import pandas as pd

from .files import atomic_write

COLUMNS = [
    "network", "arch", "weights", "dataset", "head", "feature_dim",
    "n_train", "n_validation", "n_test", "validation_accuracy", "test_accuracy",
    "extract_seconds", "images_per_second", "head_seconds",
]


def comparison_table(head_metrics: list[dict], extract_metrics: list[dict]) -> pd.DataFrame:
    """Join head results with the extraction cost of their (network, dataset).

    Extraction cost sums every split of the pair, so images/s is the whole dataset's
    throughput, model loading excluded; after a resumed run it counts the images that
    run computed (``n_computed``), not those taken from earlier shards.
    """
    cost: dict[tuple[str, str], list[float]] = {}
    for m in extract_metrics:
        c = cost.setdefault((m["network"], m["dataset"]), [0.0, 0])
        c[0] += m["seconds"]
        c[1] += m["n_computed"]
    rows = []
    for m in head_metrics:
        seconds, n_images = cost.get((m["network"], m["dataset"]), (float("nan"), 0))
        rows.append({
            "network": m["network"], "arch": m["arch"], "weights": m["weights"],
            "dataset": m["dataset"], "head": m["head"], "feature_dim": m["feature_dim"],
            "n_train": m["n"]["train"], "n_validation": m["n"]["validation"],
            "n_test": m["n"].get("test", 0),
            "validation_accuracy": m["accuracy"]["validation"],
            "test_accuracy": m["accuracy"].get("test", float("nan")),
            "extract_seconds": seconds,
            "images_per_second": n_images / seconds if seconds and seconds > 0 else float("nan"),
            "head_seconds": m["train_seconds"],
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["dataset", "network", "head"], ignore_index=True)


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.copy()
    for col in ("validation_accuracy", "test_accuracy"):
        shown[col] = shown[col].map(lambda v: f"{100 * v:.1f}%" if pd.notna(v) else "n/a")
    for col in ("extract_seconds", "head_seconds"):
        shown[col] = shown[col].map(lambda v: f"{v:.1f}")
    shown["images_per_second"] = shown["images_per_second"].map(lambda v: f"{v:.0f}")
    # disable_numparse: tabulate would re-parse "4.0" as 4 and drop the decimal.
    aligns = ["right" if pd.api.types.is_numeric_dtype(table[c]) or c.endswith(("accuracy", "seconds"))
              else "left" for c in shown.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=aligns) + "\n"


def write_table(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    with atomic_write(csv_path, "w") as f:
        table.to_csv(f, index=False, float_format="%.6g")
    with atomic_write(md_path, "w") as f:
        f.write(to_markdown(table))


def plot_comparison(table: pd.DataFrame, png_path: str | os.PathLike) -> None:
    """Grouped bars: one panel per dataset, networks along x, one bar per head.

    Test accuracy where the dataset has a test split, else validation accuracy; the
    value is printed on each bar so the chart reads without a ruler.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(max(6, 3 + 2.2 * table["network"].nunique()) * len(datasets), 4.8),
        squeeze=False,
    )
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        use_test = part["test_accuracy"].notna().all()
        metric = "test_accuracy" if use_test else "validation_accuracy"
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    with atomic_write(png_path) as f:
        f.write(buf.getvalue())
