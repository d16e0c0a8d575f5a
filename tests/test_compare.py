"""The comparison table, its CSV/Markdown files and the bar chart."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from transfer_lab import references
from transfer_lab.compare import (
    COLUMNS,
    SHOWN,
    comparison_table,
    over_budget,
    pareto_front,
    plot_comparison,
    plot_confusion,
    plot_curves,
    plot_tradeoff,
    summary_lines,
    to_markdown,
    tradeoff_points,
    write_table,
)
from transfer_lab.references import Reference

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def head_metrics(network, dataset, head, val, test=None, n_test=None, seconds=1.5):
    n = {"train": 100, "validation": 25}
    accuracy = {"train": 1.0, "validation": val}
    if test is not None:
        accuracy["test"] = test
        n["test"] = n_test
    arch = {"resnet": "resnet50", "vgg": "vgg16"}[network]
    return {
        "network": network, "arch": arch, "weights": "DEFAULT", "dataset": dataset, "head": head,
        "feature_dim": {"resnet": 2048, "vgg": 4096}[network], "n": n, "accuracy": accuracy,
        "best_epoch": 3, "train_seconds": seconds, "head_kind": head,
        "curve": [{"epoch": e, "train_loss": 1.0 / e, "validation_loss": 1.2 / e, "validation_accuracy": val}
                  for e in (1, 2, 3)],
        "class_names": ["a", "b"],
        "confusion_matrix": {split: [[n[split] // 2, 0], [n[split] - n[split] // 2 - 1, 1]] for split in n},
    }


def extract_metrics(network, dataset, split, n_images, seconds, n_computed=None):
    return {"network": network, "dataset": dataset, "split": split, "n_images": n_images,
            "n_computed": n_images if n_computed is None else n_computed, "seconds": seconds}


@pytest.fixture
def inputs():
    heads = [
        head_metrics("vgg", "digits", "mlp", 0.75, test=0.70, n_test=40, seconds=3.0),
        head_metrics("resnet", "digits", "linear", 0.9, test=0.875, n_test=40),
        head_metrics("resnet", "digits", "mlp", 0.95, test=0.925, n_test=40),
        head_metrics("vgg", "digits", "linear", 0.8, test=0.625, n_test=40),
        head_metrics("resnet", "mine", "linear", 0.5),  # no test split
        head_metrics("resnet", "mine", "mlp", 0.625),
    ]
    extracts = [
        extract_metrics("resnet", "digits", "train", 100, 2.0),
        extract_metrics("resnet", "digits", "validation", 25, 0.5),
        extract_metrics("resnet", "digits", "test", 40, 1.5),
        extract_metrics("vgg", "digits", "train", 100, 4.0),
        extract_metrics("vgg", "digits", "validation", 25, 1.0),
        extract_metrics("vgg", "digits", "test", 40, 0.5),
        extract_metrics("resnet", "mine", "train", 100, 8.0),
        extract_metrics("resnet", "mine", "validation", 25, 2.0),
    ]
    return heads, extracts


@pytest.fixture
def table(inputs):
    return comparison_table(*inputs)


def row(table, network, dataset, head):
    match = table[(table.network == network) & (table.dataset == dataset) & (table["head"] == head)]
    assert len(match) == 1
    return match.iloc[0]


def test_one_row_per_head_with_columns(table, inputs):
    assert list(table.columns) == COLUMNS
    assert len(table) == len(inputs[0]) == 6
    assert not table.duplicated(["network", "dataset", "head"]).any()


def test_rows_are_sorted(table):
    keys = list(zip(table.dataset, table.network, table["head"], strict=True))
    assert keys == sorted(keys)
    assert keys[0] == ("digits", "resnet", "linear")


def test_values_are_copied_from_head_metrics(table):
    r = row(table, "vgg", "digits", "mlp")
    assert r.arch == "vgg16" and r.weights == "DEFAULT"
    assert r.feature_dim == 4096
    assert (r.n_train, r.n_validation, r.n_test) == (100, 25, 40)
    assert r.validation_accuracy == pytest.approx(0.75)
    assert r.test_accuracy == pytest.approx(0.70)
    assert r.head_seconds == pytest.approx(3.0)


def test_extraction_cost_is_summed_over_splits(table):
    r = row(table, "resnet", "digits", "mlp")
    assert r.extract_seconds == pytest.approx(4.0)  # 2.0 + 0.5 + 1.5
    assert r.images_per_second == pytest.approx(165 / 4.0)
    v = row(table, "vgg", "digits", "linear")
    assert v.extract_seconds == pytest.approx(5.5)
    assert v.images_per_second == pytest.approx(165 / 5.5)
    m = row(table, "resnet", "mine", "linear")
    assert m.extract_seconds == pytest.approx(10.0)
    assert m.images_per_second == pytest.approx(12.5)
    # Every head of a (network, dataset) shares its extraction cost.
    assert row(table, "resnet", "digits", "linear").extract_seconds == r.extract_seconds


def test_dataset_without_test_gives_nan_and_zero(table):
    for head in ("linear", "mlp"):
        r = row(table, "resnet", "mine", head)
        assert math.isnan(r.test_accuracy)
        assert r.n_test == 0
    assert table.loc[table.dataset == "digits", "test_accuracy"].notna().all()


def test_missing_extraction_metrics_give_nan_cost(inputs):
    heads, extracts = inputs
    table = comparison_table(heads, [m for m in extracts if m["network"] != "vgg"])
    r = row(table, "vgg", "digits", "mlp")
    assert math.isnan(r.extract_seconds) and math.isnan(r.images_per_second)
    assert row(table, "resnet", "digits", "mlp").extract_seconds == pytest.approx(4.0)


def test_write_table_csv_round_trip(table, tmp_path):
    csv, md = tmp_path / "out" / "comparison.csv", tmp_path / "out" / "comparison.md"
    write_table(table, csv, md)
    back = pd.read_csv(csv)
    assert list(back.columns) == COLUMNS
    assert len(back) == len(table)
    for col in ("network", "arch", "weights", "dataset", "head"):
        assert list(back[col]) == list(table[col])
    for col in ("feature_dim", "n_train", "n_validation", "n_test"):
        assert list(back[col]) == [int(v) for v in table[col]]
    for col in ("validation_accuracy", "test_accuracy", "extract_seconds", "images_per_second",
                "head_seconds"):
        np.testing.assert_allclose(back[col].to_numpy(float), table[col].to_numpy(float),
                                   rtol=1e-5, equal_nan=True)
    assert back["test_accuracy"].isna().sum() == 2
    assert sorted(p.name for p in csv.parent.iterdir()) == ["comparison.csv", "comparison.md"]
    assert list(back["best"]) == list(table["best"])


def test_write_table_markdown_shows_percentages(table, tmp_path):
    csv, md = tmp_path / "comparison.csv", tmp_path / "comparison.md"
    write_table(table, csv, md)
    text = md.read_text()
    assert text == to_markdown(table)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(table)  # header, separator, one line per row
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == SHOWN
    cells = {}
    for line in lines[2:]:
        values = [c.strip() for c in line.strip("|").split("|")]
        cells[(values[0], values[3], values[5].strip("*"))] = dict(zip(SHOWN, values, strict=True))
    r = cells[("resnet", "digits", "mlp")]  # the best head of (resnet, digits): in bold
    assert r["validation_accuracy"] == "**95.0%**"
    assert r["test_accuracy"] == "**92.5%**"
    assert r["head"] == "**mlp**" and r["best"] == "best"
    assert cells[("resnet", "digits", "linear")]["validation_accuracy"] == "90.0%"
    assert cells[("resnet", "digits", "linear")]["best"] == ""
    assert r["images_per_second"] == "41"
    assert cells[("resnet", "mine", "linear")]["test_accuracy"] == "n/a"
    assert cells[("resnet", "mine", "linear")]["validation_accuracy"] == "50.0%"
    # Above the table, one line per dataset names its best network and head.
    assert "- digits: resnet (resnet50, mlp head on its features): validation 95.0%, test 92.5%" in text
    assert "- mine: resnet (resnet50, mlp head on its features): validation 62.5%" in text


def test_markdown_keeps_one_decimal_for_seconds(table):
    # to_markdown formats seconds as "%.1f"; the Markdown must show them that way
    # (4.0 s, not "4"), the same for every row.
    lines = [line for line in to_markdown(table).splitlines() if line.startswith("|")][2:]
    col = SHOWN.index("extract_seconds")
    shown = {tuple(c.strip() for c in line.strip("|").split("|"))[col] for line in lines}
    assert shown == {"4.0", "5.5", "10.0"}


def test_plot_comparison_writes_a_png(table, tmp_path):
    import matplotlib.image

    assert table.dataset.nunique() == 2
    path = tmp_path / "plots" / "comparison.png"
    plot_comparison(table, path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["comparison.png"]


def test_a_resumed_extraction_is_rated_by_the_images_it_computed():
    table = comparison_table([head_metrics("resnet", "ds", "linear", 0.9, 0.8, n_test=10)],
                             [extract_metrics("resnet", "ds", "train", 1000, 2.0, n_computed=400),
                              extract_metrics("resnet", "ds", "validation", 100, 0.5)])
    assert table.loc[0, "images_per_second"] == pytest.approx(500 / 2.5)


def test_best_is_one_row_per_network_and_dataset_chosen_on_validation(table):
    best = table[table.best]
    assert sorted(zip(best.network, best.dataset, best["head"], strict=True)) == [
        ("resnet", "digits", "mlp"), ("resnet", "mine", "mlp"), ("vgg", "digits", "linear")]
    # vgg/digits: linear wins on validation (0.80 > 0.75) although mlp is better on test.
    assert row(table, "vgg", "digits", "mlp").test_accuracy > row(table, "vgg", "digits", "linear").test_accuracy


def test_fine_tuning_rows_sit_beside_heads_without_extraction_cost(inputs):
    heads, extracts = inputs
    tuned = {**head_metrics("vgg", "digits", "finetune", 0.85, test=0.8, n_test=40, seconds=60.0),
             "method": "finetune"}
    table = comparison_table(heads + [tuned], extracts)
    r = row(table, "vgg", "digits", "finetune")
    assert r.method == "finetune" and r.best
    assert math.isnan(r.extract_seconds) and math.isnan(r.images_per_second)
    assert r.head_seconds == pytest.approx(60.0)
    assert not row(table, "vgg", "digits", "linear").best
    assert row(table, "vgg", "digits", "linear").method == "features"
    assert summary_lines(table)[0] == "digits: resnet (resnet50, mlp head on its features): validation 95.0%, test 92.5%"


def features_meta(arch="resnet50", weights="IMAGENET1K_V1", input_size=224, layer=None, pool=None):
    """The features' meta a head's metrics carry (``meta.features``), as network_meta writes it
    for a network whose preprocessing crops to ``input_size``; ``pool`` as a NetworkSpec with
    that key records it in ``network_spec``."""
    from transfer_lab.networks import network_meta
    from transfer_lab.preprocess import Preprocess
    from transfer_lab.specs import NetworkSpec

    spec = NetworkSpec(arch, weights, layer=layer)
    crop = Preprocess(input_size + 32, input_size, "bilinear", (0.5,) * 3, (0.5,) * 3) if input_size else None
    meta = network_meta("net", "data", spec, crop or Preprocess(256, 224, "bilinear", (0.5,) * 3, (0.5,) * 3),
                        {"seed": 0}, {})
    if input_size is None:
        del meta["input_size"]  # an older file
    if pool is not None:
        meta["network_spec"] = json.dumps({**spec.to_dict(), "pool": pool}, sort_keys=True)
    return meta


def probe_metrics(network="resnet", dataset="cifar", head_kind="logreg", **meta):
    m = head_metrics(network, dataset, "probe", 0.9, test=0.9, n_test=40)
    meta = {"arch": m["arch"], **meta}
    return {**m, "head_kind": head_kind, "weights": meta.get("weights", "IMAGENET1K_V1"),
            "meta": {"features": features_meta(**meta)}}


FULL = {"cifar": {"source": "cifar10", "train_per_class": None}}


def test_rows_of_a_published_protocol_carry_its_number():
    lab = {"cifar": {"source": "cifar10", "train_per_class": 100}}
    metrics = [
        {**head_metrics("resnet", "cifar", "linear", 0.7), "weights": "IMAGENET1K_V1"},
        {**head_metrics("vgg", "cifar", "linear", 0.7), "arch": "vgg16"},  # DEFAULT: VGG16's only weights
        {**head_metrics("vgg", "cifar", "mlp", 0.7), "arch": "vgg16"},  # not the lab's head
    ]
    table = comparison_table(metrics, [], lab)
    assert row(table, "resnet", "cifar", "linear").reference == \
        "73–74% validation accuracy (lab forks, 100/class)"
    assert row(table, "resnet", "cifar", "linear").reference_metric == "validation_accuracy"
    assert row(table, "vgg", "cifar", "linear").reference == "71–76% validation accuracy (lab forks, 100/class)"
    assert row(table, "vgg", "cifar", "mlp").reference == row(table, "vgg", "cifar", "mlp").reference_metric == ""
    assert "73–74% validation accuracy" in to_markdown(table)
    assert "reference_metric" not in to_markdown(table)
    # ResNet-50's DEFAULT weights are IMAGENET1K_V2, which the lab never had.
    v2 = {**metrics[0], "weights": "DEFAULT"}
    assert comparison_table([v2], [], lab).loc[0, "reference"] == ""
    # The full training set is another protocol: no lab number, but the CLIP linear probe's.
    assert comparison_table(metrics[:1], [], FULL).loc[0, "reference"] == ""
    r = comparison_table([probe_metrics()], [], FULL).loc[0]
    assert r.reference == "91.8% test accuracy (CLIP paper linear probe, full train)"
    assert r.reference_metric == "test_accuracy"


@pytest.mark.parametrize("change", [
    {"input_size": 96},                  # a quick run at another resolution
    {"input_size": None},                # not recorded (an older file)
    {"weights": "DEFAULT"},              # IMAGENET1K_V2 for ResNet-50
    {"weights": "random"},
    {"layer": "layer3"},                 # not the penultimate features
    {"pool": "cls+mean"},                # another pooling than the model's own
    {"head_kind": "linear"},             # another classifier
    {"head_kind": "knn"},
])
def test_a_row_off_the_published_protocol_gets_no_reference(change):
    assert comparison_table([probe_metrics(**change)], [], FULL).loc[0, "reference"] == ""


def test_a_training_subset_or_a_row_without_features_meta_gets_no_published_number():
    subset = {"cifar": {"source": "cifar10", "train_per_class": 100}}
    assert comparison_table([probe_metrics()], [], subset).loc[0, "reference"] == ""
    bare = {**probe_metrics()}
    del bare["meta"]
    assert comparison_table([bare], [], FULL).loc[0, "reference"] == ""
    finetuned = {**probe_metrics(head_kind="finetune"), "method": "finetune"}
    assert comparison_table([finetuned], [], FULL).loc[0, "reference"] == ""


def test_reference_describe_names_the_metric_split_and_protocol():
    per_class = Reference("timm:some_vit.tag", "torchvision:FGVCAircraft", ("logreg",), None, "test",
                          0.5, 0.5, "a paper, Table 1", metric="balanced_accuracy", weights=("DEFAULT",),
                          input_size=224)
    assert per_class.describe() == "50.0% test mean per-class accuracy (a paper, Table 1, full train)"
    assert per_class.column == "test_balanced_accuracy"
    lab = Reference("vgg16", "cifar10", ("linear",), 100, "validation", 0.71, 0.76, "lab forks")
    assert lab.describe() == "71–76% validation accuracy (lab forks, 100/class)"
    with pytest.raises(ValueError, match="metric"):
        Reference("vgg16", "cifar10", ("linear",), 100, "test", 0.7, 0.7, "x", metric="top5_accuracy")


def test_a_mean_per_class_reference_stands_beside_balanced_accuracy(monkeypatch):
    ref = Reference("timm:vit_base_patch16_clip_224.openai", "torchvision:OxfordIIITPet", ("logreg",), None,
                    "test", 0.9, 0.9, "a paper", metric="balanced_accuracy", weights=("DEFAULT",),
                    input_size=224)
    monkeypatch.setattr(references, "REFERENCES", (ref,))
    pets = {"pets": {"source": "torchvision:OxfordIIITPet", "train_per_class": None}}
    m = {**probe_metrics(dataset="pets", arch="timm:vit_base_patch16_clip_224.openai", weights="DEFAULT"),
         "arch": "timm:vit_base_patch16_clip_224.openai"}
    r = comparison_table([m], [], pets).loc[0]
    assert r.reference == "90.0% test mean per-class accuracy (a paper, full train)"
    assert r.reference_metric == "test_balanced_accuracy"
    # The DINOv2-style pooled variant of the same model is another protocol.
    pooled = {**probe_metrics(dataset="pets", arch="timm:vit_base_patch16_clip_224.openai", weights="DEFAULT",
                              pool="cls+mean"), "arch": "timm:vit_base_patch16_clip_224.openai"}
    assert comparison_table([pooled], [], pets).loc[0, "reference"] == ""


def test_default_weights_in_references_are_the_v1_weights_they_stand_for():
    """A reference that accepts 'DEFAULT' for a torchvision arch means the one tag it lists;
    torchvision still resolves DEFAULT to it (else a newer DEFAULT would match silently)."""
    from transfer_lab.catalog import catalog

    for ref in references.REFERENCES:
        if ref.weights and "DEFAULT" in ref.weights and not ref.arch.startswith("timm:"):
            tags = [w for w in ref.weights if w != "DEFAULT"]
            assert tags == [catalog().torchvision[ref.arch].default], ref


def test_html_and_report_summary(table, tmp_path):
    paths = {ext: tmp_path / f"comparison.{ext}" for ext in ("csv", "md", "html", "rst")}
    write_table(table, paths["csv"], paths["md"], paths["html"], paths["rst"])
    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and "<b>95.0%</b>" in page and "<b>mlp</b>" in page
    from docutils.core import publish_parts

    body = publish_parts(paths["rst"].read_text(), writer="html",
                         settings_overrides={"halt_level": 2})["html_body"]
    assert "<strong>95.0%</strong>" in body and "<table" in body
    assert "digits: resnet (resnet50, mlp head on its features)" in body


def _assert_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_report_figures(table, inputs, tmp_path):
    heads, _ = inputs
    plot_tradeoff(table, tmp_path / "tradeoff.png")
    plot_confusion(table, heads, "digits", tmp_path / "confusion_digits.png")
    plot_curves(heads, "digits", tmp_path / "curves_digits.png")
    logreg = {**head_metrics("resnet", "mine", "probe", 0.6), "head_kind": "logreg", "C": 0.1,
              "curve": [{"iteration": i, "train_loss": 2.0 / i} for i in range(1, 6)]}
    plot_curves(heads + [logreg], "mine", tmp_path / "curves_mine.png")
    for name in ("tradeoff", "confusion_digits", "curves_digits", "curves_mine"):
        _assert_png(tmp_path / f"{name}.png")


def test_pareto_front_keeps_what_nothing_beats_on_both():
    # cost lower and accuracy higher are better: (1, .7) and (2, .9) and (4, .95) trade off;
    # (3, .8) is beaten by (2, .9); (5, .95) by (4, .95) (same accuracy, dearer).
    cost, accuracy = [3, 1, 2, 5, 4], [0.8, 0.7, 0.9, 0.95, 0.95]
    assert pareto_front(cost, accuracy).tolist() == [False, True, True, False, True]
    assert pareto_front([1], [0.5]).tolist() == [True]
    assert pareto_front([], []).tolist() == []


def test_pareto_front_ties_and_nan_do_not_depend_on_order():
    # Exact duplicates do not dominate each other: both stay, in either order.
    assert pareto_front([2, 2, 3], [0.9, 0.9, 0.8]).tolist() == [True, True, False]
    assert pareto_front([3, 2, 2], [0.8, 0.9, 0.9]).tolist() == [False, True, True]
    # Equal cost, lower accuracy: dominated; NaN: off the front and dominates nothing.
    assert pareto_front([2, 2], [0.9, 0.8]).tolist() == [True, False]
    assert pareto_front([1, np.nan, 2], [0.5, 0.99, 0.6]).tolist() == [True, False, True]
    rng = np.random.default_rng(0)
    cost, accuracy = rng.integers(0, 4, 40).astype(float), rng.integers(0, 4, 40) / 4
    order = rng.permutation(40)
    assert pareto_front(cost[order], accuracy[order]).tolist() == pareto_front(cost, accuracy)[order].tolist()


def test_over_budget_reads_params_and_throughput_and_refuses_unknown_keys():
    rows = pd.DataFrame({"params": [5.3, 25.6, np.nan, 88.0], "images_per_second": [900, 300, 50, np.nan]})
    assert over_budget(rows, None).tolist() == [False] * 4
    assert over_budget(rows, {"max_params": 20}).tolist() == [False, True, False, True]  # unknown: not judged
    assert over_budget(rows, {"min_images_per_second": 100}).tolist() == [False, False, True, False]
    assert over_budget(rows, {"max_params": 20, "min_images_per_second": 100}).tolist() == [False, True, True, True]
    assert over_budget(rows, {"max_params": None, "min_images_per_second": 300}).tolist() == [False] * 2 + [True, False]
    assert over_budget(rows.drop(columns="params"), {"max_params": 1}).tolist() == [False] * 4
    selection = rows.rename(columns={"params": "params_millions"})
    assert over_budget(selection, {"max_params": 20}, "params_millions").tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="budget: unknown key.*max_flops"):
        over_budget(rows, {"max_flops": 3})
    with pytest.raises(ValueError, match="budget.max_params: expected a positive number"):
        over_budget(rows, {"max_params": -1})


def _tradeoff_table() -> pd.DataFrame:
    """Four networks' best heads on one dataset (and a worse head that is not drawn)."""
    rows = [("small", "linear", 0.80, 1000.0), ("mid", "linear", 0.85, 400.0), ("slow", "linear", 0.84, 100.0),
            ("big", "linear", 0.92, 50.0), ("big", "knn", 0.50, 50.0)]
    return pd.DataFrame([{
        "dataset": "digits", "method": "features", "network": n, "head": h, "validation_accuracy": a,
        "test_accuracy": a, "test_accuracy_low": a - 0.02, "test_accuracy_high": a + 0.02,
        "images_per_second": ips} for n, h, a, ips in rows])


def test_tradeoff_front_and_budget(tmp_path):
    table = _tradeoff_table()
    points, metric = tradeoff_points(table, "digits", "accuracy", None, None)
    assert metric == "test_accuracy"
    assert dict(zip(points["network"], points["front"], strict=True)) == {
        "small": True, "mid": True, "slow": False, "big": True}
    assert not points["over"].any() and points["params"].isna().all()
    params = {"small": 4.0, "mid": 20.0, "slow": 10.0, "big": 300.0}
    points, _ = tradeoff_points(table, "digits", "accuracy", params, {"max_params": 100})
    by = points.set_index("network")
    assert by["over"].to_dict() == {"small": False, "mid": False, "slow": False, "big": True}
    # big is over budget: off the front; slow is still beaten by mid.
    assert by["front"].to_dict() == {"small": True, "mid": True, "slow": False, "big": False}
    assert by.loc["big", "params"] == 300.0
    plot_tradeoff(table, tmp_path / "tradeoff.png", params=params, budget={"max_params": 100})
    _assert_png(tmp_path / "tradeoff.png")
    with pytest.raises(ValueError, match="budget: unknown key"):
        plot_tradeoff(table, tmp_path / "other.png", budget={"params": 100})
