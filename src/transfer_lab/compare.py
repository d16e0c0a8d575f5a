"""The comparison: one row per (network, dataset, head or fine-tuning), and its figures.

Written as CSV (for programs), Markdown and HTML (for people), a reStructuredText
summary (the report's first page) and PNG figures. The best classifier of each
(network, dataset) is chosen on validation (``evaluation.select_by``: accuracy or
balanced accuracy); the test split is reported, never used to choose. Scores are means
over a classifier's repeats; test accuracy carries a bootstrap interval, and each
network's chosen classifier a paired verdict against the dataset's best
(:mod:`transfer_lab.ranking`).
"""

from __future__ import annotations

import html
import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .evaluation import correct_matrix, repeat_scores
from .files import atomic_write
from .ranking import VERDICT_COLUMNS, add_verdicts, percent, select_best, shown_metric, verdict_lines
from .references import Protocol, find_reference
from .uncertainty import BOOTSTRAP, Bootstrap, summarise_accuracy

COLUMNS = [
    "network", "arch", "weights", "dataset", "method", "head", "feature_dim",
    "n_train", "n_validation", "n_test", "repeats",
    "validation_accuracy", "validation_accuracy_sd", "validation_balanced_accuracy",
    "test_accuracy", "test_accuracy_sd", "test_accuracy_low", "test_accuracy_high",
    "test_balanced_accuracy", "test_macro_f1", "test_top5_accuracy",
    "best", *VERDICT_COLUMNS,
    "reference", "reference_metric", "extract_seconds", "images_per_second", "head_seconds",
]
# The Markdown and HTML tables: spreads and intervals go into the accuracy cells, the
# verdict into its sentence above the table.
SHOWN = [c for c in COLUMNS if not c.endswith(("_sd", "_low", "_high")) and c not in ("verdict", "reference_metric")]
BEST_NOTE = ("**Bold**: the best classifier of each (network, dataset), chosen on validation "
             "{select}; test accuracy is reported, never used to choose.")


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _sd(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


def score_columns(m: dict, bootstrap: Bootstrap = BOOTSTRAP) -> dict:
    """A classifier's scores as comparison columns: means (and sds) over its repeats, and the
    bootstrap interval of its test accuracy (NaN without test predictions)."""
    out: dict = {"repeats": len(m.get("repeats") or [m])}
    for split in ("validation", "test"):
        accuracy = repeat_scores(m, "accuracy", split)
        out[f"{split}_accuracy"], out[f"{split}_accuracy_sd"] = _mean(accuracy), _sd(accuracy)
    out["validation_balanced_accuracy"] = _mean(repeat_scores(m, "balanced_accuracy", "validation"))
    for key in ("balanced_accuracy", "macro_f1", "top5_accuracy"):
        out[f"test_{key}"] = _mean(repeat_scores(m, key, "test"))
    interval = summarise_accuracy(correct_matrix(m, "test"), bootstrap)
    out["test_accuracy_low"], out["test_accuracy_high"] = interval.low, interval.high
    return out


def row_protocol(m: dict, dataset: dict) -> Protocol:
    """What a head's metrics ``m`` (and its features' meta, ``m["meta"]["features"]``) say of
    the protocol it followed, for matching published references. ``dataset``: the
    dataset's ``source`` and ``train_per_class``. What the metrics do not record (an older
    file, a fine-tuned network) is None and matches no reference that constrains it."""
    features = (m.get("meta") or {}).get("features") or {}
    spec = json.loads(features["network_spec"]) if features.get("network_spec") else {}
    return Protocol(
        arch=m["arch"], source=dataset.get("source"), head_kind=m.get("head_kind", m["head"]),
        train_per_class=dataset.get("train_per_class"), weights=m.get("weights"),
        input_size=features.get("input_size"), layer=features.get("layer"),
        pool=features.get("pool", spec.get("pool")),
    )


def comparison_table(
    head_metrics: list[dict],
    extract_metrics: list[dict],
    datasets: dict[str, dict] | None = None,
    select_by: str = "accuracy",
    bootstrap: Bootstrap = BOOTSTRAP,
) -> pd.DataFrame:
    """Join classifier results with the extraction cost of their (network, dataset), mark
    each (network, dataset)'s best on validation ``select_by`` and add the paired verdicts.

    ``head_metrics`` holds both heads on bottleneck features (``method: features``) and
    fine-tuned networks (``method: finetune``), which have no extraction cost.
    Extraction cost sums every split of the pair, so images/s is the whole dataset's
    throughput, model loading excluded; after a resumed run it counts the images that
    run computed (``n_computed``), not those taken from earlier shards. ``datasets``
    (name -> ``source``, ``train_per_class``) lets rows that follow a published protocol
    carry its number (``reference``) and the column to read it beside (``reference_metric``:
    ``test_accuracy``, or ``test_balanced_accuracy`` for a mean per-class accuracy).
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
        ref = find_reference(row_protocol(m, info))
        rows.append({
            "network": m["network"], "arch": m["arch"], "weights": m["weights"],
            "dataset": m["dataset"], "method": method, "head": m["head"],
            "feature_dim": m["feature_dim"],
            "n_train": m["n"]["train"], "n_validation": m["n"]["validation"],
            "n_test": m["n"].get("test", 0),
            **score_columns(m, bootstrap),
            "best": False,
            "reference": ref.describe() if ref else "",
            "reference_metric": ref.column if ref else "",
            "extract_seconds": seconds,
            "images_per_second": n_images / seconds if seconds and seconds > 0 else float("nan"),
            "head_seconds": m["train_seconds"],
        })
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in VERDICT_COLUMNS])
    table = table.sort_values(["dataset", "network", "method", "head"], ignore_index=True)
    if len(table):
        table.loc[select_best(table, ["network", "dataset"], select_by), "best"] = True
    table["best"] = table["best"].astype(bool)
    by_key = {(m["network"], m["dataset"], m["head"]): m for m in head_metrics}
    return add_verdicts(table, by_key, select_by, bootstrap)[COLUMNS]


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The best row of each dataset (across networks): the chosen classifier that the others
    are compared with (``versus`` empty)."""
    return table[table["best"] & (table["versus"] == "")].sort_values("dataset", kind="stable")


def accuracy_cell(mean: float, sd: float = float("nan"), low: float = float("nan"),
                  high: float = float("nan")) -> str:
    """``94.4%``, with ``± 0.3`` (sd over repeats, in points) and ``[92.0, 96.7]`` (the interval)
    where they exist."""
    if pd.isna(mean):
        return "n/a"
    text = percent(mean)
    if pd.notna(sd):
        text += f" ± {100 * sd:.1f}"
    if pd.notna(low) and pd.notna(high):
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def _difference_cell(r) -> str:
    if pd.isna(r["test_difference"]):
        return ""
    return f"{100 * r['test_difference'] + 0.0:+.1f} [{100 * r['test_difference_low'] + 0.0:+.1f}, " \
           f"{100 * r['test_difference_high'] + 0.0:+.1f}]"


def _formatted(table: pd.DataFrame, bold: str) -> pd.DataFrame:
    """Cells as people read them (the ``SHOWN`` columns); the best row's head and accuracies
    wrapped in ``bold``."""
    shown = table.copy()
    shown["validation_accuracy"] = [accuracy_cell(m, sd) for m, sd in
                                    zip(table["validation_accuracy"], table["validation_accuracy_sd"], strict=True)]
    shown["test_accuracy"] = [accuracy_cell(*v) for v in table[["test_accuracy", "test_accuracy_sd",
                                                               "test_accuracy_low", "test_accuracy_high"]].to_numpy()]
    for col in ("validation_balanced_accuracy", "test_balanced_accuracy", "test_macro_f1", "test_top5_accuracy"):
        shown[col] = shown[col].map(percent)
    shown["test_difference"] = [_difference_cell(r) for _, r in table.iterrows()]
    for col in ("mcnemar_p", "mcnemar_p_raw"):
        shown[col] = shown[col].map(lambda p: f"{p:.2g}" if pd.notna(p) else "")
    for col in ("extract_seconds", "head_seconds"):
        shown[col] = shown[col].map(lambda v: f"{v:.1f}" if pd.notna(v) else "n/a")
    shown["images_per_second"] = shown["images_per_second"].map(lambda v: f"{v:.0f}" if pd.notna(v) else "n/a")
    shown["best"] = shown["best"].map(lambda b: "best" if b else "")
    for col in ("head", "validation_accuracy", "test_accuracy"):
        shown[col] = [bold.format(v) if b else v for v, b in zip(shown[col], table["best"], strict=True)]
    return shown[SHOWN]


def summary_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per dataset: which network and classifier transfer best to it."""
    lines = []
    for _, r in best_rows(table).iterrows():
        test = f", test {accuracy_cell(r.test_accuracy, r.test_accuracy_sd, r.test_accuracy_low, r.test_accuracy_high)}" \
            if pd.notna(r.test_accuracy) else ""
        how = "fine-tuned end to end" if r.method == "finetune" else f"{r['head']} head on its features"
        lines.append(f"{r.dataset}: {r.network} ({r.arch}, {how}): validation "
                     f"{accuracy_cell(r.validation_accuracy, r.validation_accuracy_sd)}{test}")
    return lines


def notes(table: pd.DataFrame, select_by: str = "accuracy", confidence: float = 0.95) -> list[str]:
    """What the table's marks mean, in the units the cells use."""
    level = f"{100 * confidence:g}%"
    return [
        BEST_NOTE.format(select=select_by.replace("_", " ")),
        f"Accuracy: the mean over a classifier's repeats ({', '.join(str(n) for n in sorted(set(table['repeats'])))} "
        f"here), ± their standard deviation in points where there are several; [low, high]: the {level} "
        "bootstrap interval of test accuracy (test images and repeats resampled).",
        f"versus: each network's chosen classifier against the dataset's best; test_difference: this row minus "
        f"that one, in points, with its {level} paired bootstrap interval (not adjusted for multiple comparisons); "
        "mcnemar_p: McNemar's exact test, Holm-corrected over the dataset's comparisons with its best when there "
        "are several (mcnemar_p_raw: as tested). A verdict of better or worse needs the corrected p below "
        f"{1 - confidence:.2g} and the interval on one side of 0.",
    ]


def _sections(table: pd.DataFrame) -> list[tuple[str, list[str]]]:
    verdicts = verdict_lines(table)
    return [("Best per dataset", summary_lines(table))] + ([("Paired verdicts", verdicts)] if verdicts else [])


def to_markdown(table: pd.DataFrame, select_by: str = "accuracy", confidence: float = 0.95) -> str:
    shown = _formatted(table, "**{}**")
    # disable_numparse: tabulate would re-parse "4.0" as 4 and drop the decimal.
    aligns = ["right" if pd.api.types.is_numeric_dtype(table[c]) and table[c].dtype != bool
              or c.endswith(("accuracy", "seconds", "difference", "_p")) else "left" for c in shown.columns]
    lists = "".join(f"{title}:\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
                    for title, lines in _sections(table))
    body = shown.to_markdown(index=False, disable_numparse=True, colalign=aligns)
    return f"# Comparison\n\n{lists}{body}\n\n" + "\n\n".join(notes(table, select_by, confidence)) + "\n"


def to_rst_summary(table: pd.DataFrame, select_by: str = "accuracy", confidence: float = 0.95,
                   preface: str = "") -> str:
    """The report's first page: ``preface`` (the summary across datasets), the best per
    dataset, the paired verdicts, then the table's essential columns."""
    keep = ["dataset", "network", "method", "head", "validation_accuracy", "test_accuracy",
            "reference", "images_per_second"]
    if not table["reference"].astype(bool).any():
        keep.remove("reference")
    shown = _formatted(table, "**{}**")[keep].rename(columns={
        "validation_accuracy": "validation", "test_accuracy": "test", "images_per_second": "images/s"})
    lists = "".join(f"{title}:\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
                    for title, lines in _sections(table))
    grid = shown.to_markdown(index=False, tablefmt="grid", disable_numparse=True)
    return (f"{preface}\n" if preface else "") + f"{lists}{grid}\n\n" + "\n\n".join(
        notes(table, select_by, confidence)) + "\n"


def to_html(table: pd.DataFrame, select_by: str = "accuracy", confidence: float = 0.95) -> str:
    """A standalone page (the report shows it in a frame): best rows in bold."""
    shown = _formatted(table, "<b>{}</b>")
    for col in shown.columns:
        if col not in ("head", "validation_accuracy", "test_accuracy"):
            shown[col] = shown[col].map(lambda v: html.escape(str(v)))
    lists = "".join(f"<h3>{title}</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
                    for title, lines in _sections(table))
    body = shown.to_html(index=False, escape=False, border=0, na_rep="n/a")
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
             "th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "th{background:#f4f4f4}")
    text = "".join(f"<p>{html.escape(n).replace('**Bold**', '<b>Bold</b>')}</p>"
                   for n in notes(table, select_by, confidence))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Comparison</title>"
            f"<style>{style}</style></head><body>{lists}{body}{text}</body></html>\n")


def write_table(
    table: pd.DataFrame,
    csv_path: str | os.PathLike,
    md_path: str | os.PathLike,
    html_path: str | os.PathLike | None = None,
    rst_path: str | os.PathLike | None = None,
    select_by: str = "accuracy",
    confidence: float = 0.95,
    preface: str = "",
) -> None:
    """The table as CSV (full precision), Markdown, HTML and the report's first page
    (``preface`` above it: the summary across datasets)."""
    with atomic_write(csv_path, "w") as f:
        table.to_csv(f, index=False, float_format="%.6g")
    with atomic_write(md_path, "w") as f:
        f.write(to_markdown(table, select_by, confidence))
    if html_path is not None:
        with atomic_write(html_path, "w") as f:
            f.write(to_html(table, select_by, confidence))
    if rst_path is not None:
        with atomic_write(rst_path, "w") as f:
            f.write(to_rst_summary(table, select_by, confidence, preface))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png_path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    pyplot().close(fig)
    with atomic_write(png_path) as f:
        f.write(buf.getvalue())


def error_bars(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """(2, n) distances in points from each value down and up to its interval's ends, for
    matplotlib's ``yerr``; 0 where there is no interval (validation accuracy)."""
    if metric != "test_accuracy":
        return np.zeros((2, len(rows)))
    value = rows["test_accuracy"].to_numpy(float)
    bars = np.stack([value - rows["test_accuracy_low"].to_numpy(float),
                     rows["test_accuracy_high"].to_numpy(float) - value])
    return 100 * np.nan_to_num(np.clip(bars, 0, None))


def plot_comparison(table: pd.DataFrame, png_path: str | os.PathLike) -> None:
    """Grouped bars: one panel per dataset, networks along x, one bar per head.

    Test accuracy where the dataset has a test split (error bars: its bootstrap
    interval), else validation accuracy; the value is printed above each bar so the
    chart reads without a ruler.
    """
    plt = pyplot()
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(max(6, 3 + 2.2 * table["network"].nunique()) * len(datasets), 4.8),
        squeeze=False,
    )
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = table[table["dataset"] == dataset]
        metric = shown_metric(part)
        networks, heads = sorted(part["network"].unique()), sorted(part["head"].unique())
        width = 0.8 / len(heads)
        for j, head in enumerate(heads):
            rows = part[part["head"] == head].set_index("network").reindex(networks)
            xs = np.arange(len(networks)) - 0.4 + width * (j + 0.5)
            values, bars = 100 * rows[metric].to_numpy(float), error_bars(rows, metric)
            ax.bar(xs, values, width, yerr=bars, capsize=3, error_kw={"elinewidth": 1}, label=head)
            for x, v, up in zip(xs, values, bars[1], strict=True):
                if np.isfinite(v):
                    ax.annotate(f"{v:.1f}", (x, v + up), textcoords="offset points", xytext=(0, 2),
                                ha="center", fontsize=8)
        ax.set_xticks(range(len(networks)), networks, rotation=15, ha="right")
        ax.set_ylim(0, 115)  # headroom for the legend above the bars
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(f"{dataset}: {metric.split('_')[0]} accuracy by network and head")
        ax.legend(title="head", loc="upper right", ncol=len(heads), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path)


BUDGET_KEYS = ("max_params", "min_images_per_second")


def pareto_front(cost: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Bool mask of the points no other point dominates: none has cost <= and accuracy >=
    with one of the two strictly better.

    Exact duplicates do not dominate each other, so both stay on the front (the answer does
    not depend on the order of the points); a point with a NaN coordinate is neither on the
    front nor dominates anything."""
    cost, accuracy = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
    if cost.shape != accuracy.shape:
        raise ValueError(f"pareto_front: {cost.shape} costs against {accuracy.shape} accuracies")
    valid = ~(np.isnan(cost) | np.isnan(accuracy))
    c, a = cost[:, None], accuracy[:, None]  # row i, column j: does j dominate i?
    dominated = ((cost <= c) & (accuracy >= a) & ((cost < c) | (accuracy > a)) & valid).any(axis=1)
    return valid & ~dominated


def check_budget(budget: Mapping | None) -> dict:
    """The budget's limits, None where unset; an unknown key or a limit that is not a
    positive number is refused, named."""
    budget = dict(budget or {})
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise ValueError(f"budget: unknown key(s) {', '.join(unknown)}; expected {', '.join(BUDGET_KEYS)}")
    for key, value in budget.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"budget.{key}: expected a positive number, got {value!r}")
    return {key: budget.get(key) for key in BUDGET_KEYS}


def over_budget(rows: pd.DataFrame, budget: Mapping | None, params_column: str = "params") -> np.ndarray:
    """Bool mask of the rows over ``budget``: more parameters than ``max_params`` (millions,
    column ``params_column``: ``params`` here, ``params_millions`` in the selection table)
    or fewer images/s than ``min_images_per_second`` (column ``images_per_second``). A row
    whose number is unknown (NaN or missing column) is not over that limit: it cannot be
    judged, and is not silently dropped."""
    limits = check_budget(budget)
    over = np.zeros(len(rows), dtype=bool)
    for key, column, exceeds in (("max_params", params_column, np.greater),
                                 ("min_images_per_second", "images_per_second", np.less)):
        if limits[key] is not None and column in rows:
            values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
            over |= ~np.isnan(values) & exceeds(values, limits[key])
    return over


def tradeoff_points(table: pd.DataFrame, dataset: str, select_by: str,
                   params: Mapping[str, float | None] | None, budget: Mapping | None) -> tuple[pd.DataFrame, str]:
    """Each network's best feature head on ``dataset`` with a throughput, its ``params``
    (millions), ``over`` (over budget) and ``front`` (on the Pareto front of accuracy
    against throughput among those within budget); and the metric shown."""
    part = table[(table["dataset"] == dataset) & (table["method"] == "features")]
    part = part.loc[select_best(part, ["network"], select_by)] if len(part) else part
    metric = shown_metric(part)
    part = part.dropna(subset=["images_per_second"]).copy()
    part["params"] = [float("nan") if (params or {}).get(n) is None else float(params[n]) for n in part["network"]]
    part["over"] = over_budget(part, budget)
    within = ~part["over"].to_numpy()
    front = np.zeros(len(part), dtype=bool)  # the front of what can be deployed
    front[within] = pareto_front(-part["images_per_second"].to_numpy(float)[within],
                                 part[metric].to_numpy(float)[within])
    part["front"] = front
    return part, metric


def plot_tradeoff(table: pd.DataFrame, png_path: str | os.PathLike, select_by: str = "accuracy",
                  params: Mapping[str, float | None] | None = None, budget: Mapping | None = None) -> None:
    """Accuracy of each network's best feature head (chosen on validation ``select_by``;
    test accuracy with its interval where there is a test split) against its extraction
    throughput (images/s, log scale), one panel per dataset: up and right is better.

    The Pareto front (networks that no other beats on both accuracy and throughput, among
    those within ``budget``) is a step line. ``budget`` (``max_params`` in millions,
    ``min_images_per_second``) greys out the networks over it, hollow and labelled "over
    budget"; ``params`` (network -> millions of parameters, None where unknown) is what
    ``max_params`` is checked against."""
    check_budget(budget)
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part, metric = tradeoff_points(table, dataset, select_by, params, budget)
        if part.empty:
            ax.text(0.5, 0.5, "no extraction timings", ha="center", va="center", transform=ax.transAxes)
        for (_, r), low, high in zip(part.iterrows(), *error_bars(part, metric), strict=True):
            style = ({"fmt": "o", "mfc": "none", "color": "0.6"} if r["over"] else {"fmt": "o"})
            ax.errorbar(r.images_per_second, 100 * r[metric], yerr=[[low], [high]], capsize=3, **style)
            text = f"{r.network} ({r['head']})" + (", over budget" if r["over"] else "")
            ax.annotate(text, (r.images_per_second, 100 * r[metric]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8, color="0.5" if r["over"] else "black")
        front = part[part["front"]].sort_values("images_per_second", kind="stable")
        if len(front):
            ax.step(front["images_per_second"], 100 * front[metric], where="pre", color="black", lw=1,
                    ls="--", alpha=0.6, label="Pareto front" + (" (within budget)" if part["over"].any() else ""))
            ax.legend(fontsize=8, loc="lower left")
        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("extraction throughput (images/s, log scale)")
        ax.set_ylabel(f"{metric.split('_')[0]} accuracy of the best head (%)")
        ax.set_title(f"{dataset}: accuracy against extraction cost")
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    save_figure(fig, png_path)


def _best_split(metrics: dict) -> str:
    return "test" if "test" in metrics["confusion_matrix"] else "validation"


def plot_confusion(table: pd.DataFrame, metrics: Sequence[dict], dataset: str, png_path: str | os.PathLike) -> None:
    """One row-normalised confusion matrix per network: that of its best classifier on the
    dataset, on test (else validation), with class names; counts printed when they fit."""
    plt = pyplot()
    best = table[(table["dataset"] == dataset) & table["best"]]
    by_key = {(m["network"], m["head"]): m for m in metrics if m["dataset"] == dataset}
    chosen = [by_key[(r.network, r["head"])] for _, r in best.iterrows() if (r.network, r["head"]) in by_key]
    n_classes = len(chosen[0]["class_names"]) if chosen else 1
    side = min(4 + 0.28 * n_classes, 16)
    fig, axes = plt.subplots(1, max(len(chosen), 1), figsize=(side * max(len(chosen), 1), side), squeeze=False)
    for ax, m in zip(axes[0], chosen, strict=False):  # no classifier: one empty panel
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
        ax.set_title(f"{m['network']} + {m['head']}: {split} accuracy {percent(m['accuracy'][split])}",
                     fontsize=10)
    if not chosen:
        axes[0][0].text(0.5, 0.5, "no classifier metrics", ha="center", va="center")
    fig.suptitle(f"{dataset}: confusion matrix of each network's best classifier (rows: true class)")
    fig.tight_layout()
    save_figure(fig, png_path)


def plot_curves(metrics: Sequence[dict], dataset: str, png_path: str | os.PathLike) -> None:
    """Training curves, one panel per network: validation loss per epoch of every head
    trained by epochs (and of fine-tuning); logreg's L-BFGS objective per evaluation in a
    panel of its own, since iterations and epochs do not share an axis."""
    plt = pyplot()
    part = [m for m in metrics if m["dataset"] == dataset]
    networks = list(dict.fromkeys(m["network"] for m in part))
    iterative = [m for m in part if m["curve"] and "iteration" in m["curve"][0]]
    n_panels = len(networks) + (1 if iterative else 0)
    fig, axes = plt.subplots(1, max(n_panels, 1), figsize=(5 * max(n_panels, 1), 4), squeeze=False)
    for ax, network in zip(axes[0], networks, strict=False):  # the objective panel comes after
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
    save_figure(fig, png_path)
