"""Classification heads on cached bottleneck features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfer_lab.bottleneck import Bottleneck
from transfer_lab.heads import (
    HEAD_KINDS,
    build_head,
    load_head,
    save_head,
    standardisation,
    train_head,
)

N_CLASSES, DIM = 3, 20
PER_CLASS = {"train": 20, "validation": 10, "test": 10}  # 60 / 30 / 30 images


def config(kind: str, **over) -> dict:
    cfg = {"kind": kind, "epochs": 15, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0,
           "hidden": 32, "dropout": 0.2, "seed": 0, "C": None, "c_grid": [0.01, 1.0], "max_iter": 100, "tol": 1e-3,
           "k": [3, 5], "temperature": 0.07}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def splits() -> dict[str, Bottleneck]:
    """Well-separated Gaussian blobs, with an offset and scale so standardisation matters."""
    rng = np.random.default_rng(42)
    centres = rng.normal(scale=4.0, size=(N_CLASSES, DIM))
    out = {}
    for name, k in PER_CLASS.items():
        labels = np.repeat(np.arange(N_CLASSES), k)
        features = centres[labels] + rng.normal(size=(len(labels), DIM))
        features = (features * 3.0 + 10.0).astype(np.float32)
        out[name] = Bottleneck(features, labels.astype(np.int64), ["a", "b", "c"], meta={})
    return out


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(kind: str, splits, **over):
    return train_head(config(kind, **over), splits["train"], splits["validation"], splits["test"],
                      device="cpu")


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_head_learns_separable_features(splits, kind):
    head_file, metrics = train(kind, splits)
    assert metrics["accuracy"]["validation"] >= 0.9
    if kind != "knn":  # a kNN head is not scored on its own training images
        assert metrics["accuracy"]["train"] >= 0.9
    assert metrics["accuracy"]["test"] >= 0.9
    assert head_file["kind"] == kind


@pytest.mark.parametrize("kind", ["linear", "mlp"])  # the Adam heads; logreg's sweep is tested below
def test_metrics_contents(splits, kind):
    _, metrics = train(kind, splits, epochs=7)
    assert metrics["head_kind"] == kind
    assert metrics["feature_dim"] == DIM
    assert set(metrics["accuracy"]) == {"train", "validation", "test"}
    assert all(0.0 <= a <= 1.0 for a in metrics["accuracy"].values())
    assert metrics["n"] == {"train": 60, "validation": 30, "test": 30}
    curve = metrics["curve"]
    assert len(curve) == 7
    assert [c["epoch"] for c in curve] == list(range(1, 8))
    for c in curve:
        assert set(c) >= {"epoch", "train_loss", "validation_loss", "validation_accuracy"}
        assert np.isfinite(c["train_loss"]) and np.isfinite(c["validation_loss"])
    # The kept epoch is the one with the lowest validation loss.
    losses = [c["validation_loss"] for c in curve]
    assert metrics["best_epoch"] == 1 + int(np.argmin(losses))
    assert metrics["accuracy"]["validation"] == pytest.approx(
        curve[metrics["best_epoch"] - 1]["validation_accuracy"])
    assert metrics["train_seconds"] >= 0
    assert metrics["device"] == "cpu"
    assert metrics["method"] == "features"
    assert metrics["class_names"] == ["a", "b", "c"]
    for split, n in metrics["n"].items():
        cm = np.array(metrics["confusion_matrix"][split])
        assert cm.shape == (N_CLASSES, N_CLASSES) and cm.sum() == n
        assert np.trace(cm) / n == pytest.approx(metrics["accuracy"][split])
        per_class = metrics["per_class_accuracy"][split]
        assert list(per_class) == ["a", "b", "c"]
        assert [per_class[c] for c in "abc"] == pytest.approx(np.diag(cm) / cm.sum(axis=1))


def test_no_test_split_gives_no_test_metrics(splits):
    _, metrics = train_head(config("linear", epochs=3), splits["train"], splits["validation"],
                            device="cpu")
    assert set(metrics["accuracy"]) == {"train", "validation"}
    assert set(metrics["n"]) == {"train", "validation"}


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_same_seed_same_result(splits, kind):
    file_a, metrics_a = train(kind, splits, epochs=5)
    file_b, metrics_b = train(kind, splits, epochs=5)
    for m in (metrics_a, metrics_b):
        m.pop("train_seconds")
    assert metrics_a == metrics_b
    assert file_a["state_dict"].keys() == file_b["state_dict"].keys()
    for key in file_a["state_dict"]:
        assert torch.equal(file_a["state_dict"][key], file_b["state_dict"][key])


def test_other_seed_other_weights(splits):
    file_a, _ = train("mlp", splits, epochs=3, seed=0)
    file_b, _ = train("mlp", splits, epochs=3, seed=1)
    assert not torch.equal(file_a["state_dict"]["0.weight"], file_b["state_dict"]["0.weight"])


def test_mismatched_dimensions_are_refused(splits):
    val = splits["validation"]
    narrow = Bottleneck(val.features[:, :5], val.labels, val.class_names, {})
    with pytest.raises(ValueError, match="dimensions"):
        train_head(config("linear"), splits["train"], narrow, device="cpu")


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_save_load_round_trip_gives_same_logits(splits, kind, tmp_path):
    head_file, metrics = train(kind, splits, epochs=6)
    original = build_head(head_file["config"], DIM, N_CLASSES)
    original.load_state_dict(head_file["state_dict"])
    original.eval()

    path = tmp_path / "heads" / f"net_data_{kind}.pt"
    save_head(path, head_file)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    head, loaded = load_head(path)
    assert not head.training
    assert loaded["class_names"] == ["a", "b", "c"]
    assert loaded["feature_dim"] == DIM
    assert loaded["config"] == config(kind, epochs=6)

    val = splits["validation"]
    x = (torch.from_numpy(val.features) - loaded["mean"]) / loaded["std"]
    with torch.no_grad():
        logits = head(x)
        expected = original(x)
    assert logits.shape == (30, N_CLASSES)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    # The stored standardisation reproduces the reported validation accuracy.
    accuracy = (logits.argmax(1).numpy() == val.labels).mean()
    assert accuracy == pytest.approx(metrics["accuracy"]["validation"])


def test_head_file_loads_with_weights_only(splits, tmp_path):
    head_file, _ = train("mlp", splits, epochs=2)
    path = tmp_path / "h.pt"
    save_head(path, head_file)
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["kind"] == "mlp"
    assert data["mean"].dtype == torch.float32 and data["mean"].shape == (DIM,)
    assert data["std"].dtype == torch.float32 and data["std"].shape == (DIM,)
    assert all(isinstance(v, torch.Tensor) for v in data["state_dict"].values())
    assert data["network_meta"] == {}
    # mean/std are the training split's own statistics (std possibly floored).
    np.testing.assert_allclose(data["mean"].numpy(), splits["train"].features.mean(0), rtol=1e-5)


def test_standardisation_floors_constant_features():
    rng = np.random.default_rng(0)
    features = rng.normal(loc=5.0, scale=2.0, size=(200, 6)).astype(np.float32)
    features[:, 3] = 0.0  # e.g. a ReLU unit never active on the training images
    mean, scale = standardisation(features)
    stds = features.std(axis=0)
    assert mean[3] == 0.0
    assert scale[3] == pytest.approx(np.median(stds))
    assert scale[3] > 0.5  # floored at the median std, not at ~0
    # Features above the median keep their own std; the others are floored at it.
    np.testing.assert_allclose(scale, np.maximum(stds, np.median(stds)), rtol=1e-6)
    above = stds >= np.median(stds)
    np.testing.assert_allclose(scale[above], stds[above], rtol=1e-6)
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-6)
    # A later image that activates the unit stays on a sane scale.
    z = (np.array([[5, 5, 5, 3.0, 5, 5]], np.float32) - mean) / scale
    assert np.isfinite(z).all() and np.abs(z).max() < 10


def test_standardisation_of_all_constant_features_is_finite():
    features = np.ones((10, 4), np.float32)
    mean, scale = standardisation(features)
    assert (scale > 0).all()
    assert np.isfinite((features - mean) / scale).all()


def test_build_head_shapes():
    linear = build_head(config("linear"), DIM, N_CLASSES)
    mlp = build_head(config("mlp", hidden=7), DIM, N_CLASSES)
    x = torch.zeros(4, DIM)
    assert linear(x).shape == (4, N_CLASSES)
    assert mlp.eval()(x).shape == (4, N_CLASSES)
    assert mlp[0].out_features == 7
    assert isinstance(linear, torch.nn.Linear)


def test_mlp_with_two_hidden_layers_trains_and_round_trips(splits, tmp_path):
    net = build_head(config("mlp", hidden=[16, 8]), DIM, N_CLASSES)
    widths = [m.out_features for m in net if isinstance(m, torch.nn.Linear)]
    assert widths == [16, 8, N_CLASSES]
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == 2
    head_file, metrics = train("mlp", splits, hidden=[16, 8])
    assert metrics["accuracy"]["test"] >= 0.9
    save_head(tmp_path / "h.pt", head_file)
    loaded, _ = load_head(tmp_path / "h.pt")
    assert [m.out_features for m in loaded if isinstance(m, torch.nn.Linear)] == widths


def test_logreg_scores_validation_with_the_train_only_fit(splits):
    """The refit has seen validation: its validation confusion matrix must come from the
    train-only fit, so validation accuracy equals the sweep's entry for the chosen C."""
    _, metrics = train("logreg", splits)
    chosen = next(s for s in metrics["sweep"] if s["C"] == metrics["C"])
    assert metrics["accuracy"]["validation"] == pytest.approx(chosen["validation_accuracy"])


def test_build_head_unknown_kind_lists_kinds():
    with pytest.raises(ValueError) as info:
        build_head(config("svm"), DIM, N_CLASSES)
    msg = str(info.value)
    assert "'svm'" in msg
    for kind in HEAD_KINDS:
        assert kind in msg


def _logreg_cfg(**kw):
    return {"kind": "logreg", "C": None, "c_grid": [0.001, 0.01, 0.1, 1.0, 10.0], "max_iter": 300,
            "epochs": 1, "batch_size": 1, "lr": 0.1, "weight_decay": 0.0, "hidden": 1, "dropout": 0.0,
            "seed": 0, "tol": 1e-3, **kw}


def _digits_bottlenecks():
    """Real, not linearly trivial data: scikit-learn's digits pixels as 'features'."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.25, random_state=0, stratify=ytr)
    names = [str(i) for i in range(10)]
    return [Bottleneck(a, b, names, {}) for a, b in ((xtr, ytr), (xva, yva), (xte, yte))]


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_logreg_matches_scikit_learn_within_one_point(C):
    from sklearn.linear_model import LogisticRegression

    from transfer_lab.heads import fit_logreg, standardisation

    train, validation, test = _digits_bottlenecks()
    mean, std = standardisation(train.features)
    xtr, xte = (train.features - mean) / std, (test.features - mean) / std
    ours = fit_logreg(torch.from_numpy(xtr), torch.from_numpy(train.labels), 10, C, max_iter=500)
    with torch.no_grad():
        our_acc = (ours(torch.from_numpy(xte)).argmax(1).numpy() == test.labels).mean()
    sk = LogisticRegression(C=C, solver="lbfgs", max_iter=5000).fit(xtr, train.labels)
    assert abs(our_acc - sk.score(xte, test.labels)) <= 0.01, (our_acc, sk.score(xte, test.labels))
    # Same objective, same optimum: converged tightly, the weights agree too.
    tight = fit_logreg(torch.from_numpy(xtr), torch.from_numpy(train.labels), 10, C, max_iter=500, tol=1e-6)
    np.testing.assert_allclose(tight.weight.detach().numpy(), sk.coef_, atol=0.05 * np.abs(sk.coef_).max())


def test_logreg_picks_C_on_validation_and_refits_on_train_plus_validation(tmp_path):
    train, validation, test = _digits_bottlenecks()
    head_file, metrics = train_head(_logreg_cfg(), train, validation, test)
    sweep = metrics["sweep"]
    assert [r["C"] for r in sweep] == [0.001, 0.01, 0.1, 1.0, 10.0]
    best = max(sweep, key=lambda r: r["validation_accuracy"])
    assert metrics["C"] == best["C"]
    assert metrics["accuracy"]["validation"] == pytest.approx(best["validation_accuracy"])
    assert metrics["accuracy"]["test"] > 0.9
    assert "best_epoch" not in metrics
    save_head(tmp_path / "h.pt", head_file)
    head, loaded = load_head(tmp_path / "h.pt")
    assert loaded["kind"] == "logreg" and isinstance(head, torch.nn.Linear)


@pytest.mark.parametrize("shape", [(5, 3), (1000, 7), (70_000, 33), (3_000, 1280)])
def test_standardisation_by_blocks_is_numpys_mean_and_std_bit_for_bit(shape, monkeypatch):
    """The blockwise statistics and in-place standardisation hold no matrix-sized temporary,
    yet give the values of the plain expressions (so heads train exactly as before)."""
    from transfer_lab import heads

    monkeypatch.setattr(heads, "BLOCK_BYTES", 4096)  # many blocks, one not full
    x = (np.random.default_rng(7).standard_normal(shape) * 10 + 3).astype(np.float32)
    mean, std = standardisation(x)
    assert mean.tobytes() == x.mean(axis=0).tobytes()
    floor = max(float(np.median(x.std(axis=0))), 1e-6)
    assert std.tobytes() == np.maximum(x.std(axis=0), floor).tobytes()
    expected = (x - mean) / std
    assert heads.standardise_in_place(x, mean, std) is x and x.tobytes() == expected.tobytes()


def test_a_head_job_holds_its_features_about_once(tmp_path):
    """Reading the pickles and training a head, as the train_head job does, peaks at under
    1.5x the feature matrices in host memory (it was 2.4x: the pickle's bytes beside the
    array, the standardised copies and their temporaries). tracemalloc sees numpy's memory;
    the Python objects imported on a first fit are imported before measuring."""
    import tracemalloc

    from transfer_lab.bottleneck import read_bottleneck, write_bottleneck
    from transfer_lab.repeats import train_repeats

    rng = np.random.default_rng(0)
    sizes = {"train": 30_000, "validation": 6_000, "test": 6_000}
    dim = 256
    for name, n in sizes.items():
        write_bottleneck(tmp_path / f"{name}.p", Bottleneck(rng.standard_normal((n, dim), dtype=np.float32),
                                                            rng.integers(0, 10, n), list("abcdefghij"), {}))
    cfg = config("linear", epochs=1, batch_size=1024)
    small = [Bottleneck(read_bottleneck(tmp_path / f"{s}.p").features[:40].copy(), np.arange(40) % 10,
                        list("abcdefghij"), {}) for s in sizes]
    train_repeats(cfg, *small, repeats=1, device="cpu")  # imports what a fit imports
    matrices = sum(sizes.values()) * dim * 4
    tracemalloc.start()
    try:
        splits = {s: read_bottleneck(tmp_path / f"{s}.p") for s in sizes}
        train_repeats(cfg, splits["train"], splits["validation"], splits["test"], repeats=1, device="cpu",
                      consume=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * matrices, f"peak {peak / matrices:.2f}x the feature matrices"
