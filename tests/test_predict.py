"""Predict on new images and export a deployable model: library, Snakemake, command line, fresh process."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_workflow, snakemake, write_config
from job_imports import assert_job_imports
from near_ties import assert_same_class
from PIL import Image

from transfer_lab.bottleneck import read_bottleneck
from transfer_lab.datasets import load_prepared
from transfer_lab.heads import load_head
from transfer_lab.images import NoImagesError, find_images
from transfer_lab.predict import PredictError, Predictor, load_predictor, predict_files, resolve_storage
from transfer_lab.preprocess import AS_FILES, Storage


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"])
def test_unreadable_head_file_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "lite0_digits_linear.pt"
    path.write_bytes(content)
    with pytest.raises(PredictError, match=rf"^{path}: not a head file or fine-tuned network \(.+\); expected "):
        load_predictor(path)


def test_an_older_heads_photos_were_stored_at_the_config_networks_largest_resize():
    """A head without storage meta, trained on photos without image_size: they were stored at
    the largest resize of the config's networks (ResNet-50 V1: 256, Inception-v3: 342)."""
    config = {"datasets": {"photos": {"source": "imagefolder", "root": "photos"}},
              "networks": {"resnet": {"arch": "resnet50", "weights": "IMAGENET1K_V1"},
                           "inception": {"arch": "inception_v3", "weights": "IMAGENET1K_V1"}}}
    assert resolve_storage({"dataset": "photos"}, config, "head.pt") == Storage(342, "crop")
    config["datasets"]["photos"]["image_size"] = 128
    assert resolve_storage({"dataset": "photos"}, config, "head.pt") == Storage(128, "crop")


def test_equal_probabilities_are_ranked_in_class_order_whatever_top_k(tmp_path):
    """A kNN head's vote can tie two classes and gives 0 to every class no neighbour voted
    for. torch.topk leaves ties in any order (here it put class 900 before 7 at top_k 2, and
    another zero class at each top_k), so predict ranks equal probabilities in class order:
    its class is evaluation's argmax, and the runners-up do not change with top_k."""
    from types import SimpleNamespace

    probabilities = torch.zeros(1000)
    probabilities[[7, 900]] = 0.4
    probabilities[500] = 0.2
    model = SimpleNamespace(storage=lambda image: image,
                            classify=lambda batch: probabilities.expand(len(batch), -1).clone())
    names = [f"c{i}" for i in range(1000)]
    predictor = Predictor(model, names, Storage(8, "squash"), {}, "knn.pt", "knn", torch.device("cpu"))
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path in paths:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    ranked = ["c7", "c900", "c500", "c0", "c1", "c2", "c3"]
    for top_k in range(1, 8):
        for row in predict_files(predictor, paths, top_k):
            assert row["predicted"] == names[int(probabilities.argmax())] == "c7"
            assert [row[f"class_{i}"] for i in range(1, top_k + 1)] == ranked[:top_k]
            assert [row[f"probability_{i}"] for i in range(1, top_k + 1)] == pytest.approx(
                [0.4, 0.4, 0.2, 0, 0, 0, 0][:top_k])


def test_the_weights_transform_inside_an_exported_graph_is_extractions_number_for_number():
    """A dataset kept as its files has no storage step: predict and export apply the weights'
    transform to each image as it comes, with the resize matrices computed in the graph from its
    size (DevicePreprocess.traced_matrices, which extraction's DevicePreprocess.matrices caches).
    They are the rows and columns that a centre crop keeps of the whole resize matrices
    (resize_matrix, Pillow's, tested in test_preprocess.py), bit for bit, for any size and
    aspect, a centre crop offset of a half included."""
    from transfer_lab.preprocess import DevicePreprocess, Preprocess, resize_matrix, resized_size

    stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for p in (Preprocess(36, 32, "bicubic", *stats), Preprocess(256, 224, "bilinear", *stats),
              Preprocess(342, 299, "bilinear", *stats), Preprocess(72, 64, "nearest", *stats)):
        prep = DevicePreprocess(p)
        for height, width in ((37, 53), (53, 37), (40, 100), (299, 299), (500, 375), (8, 8), (2, 3), (1000, 999)):
            new_h, new_w = resized_size(height, width, p.resize)
            top, left = int(round((new_h - p.crop) / 2.0)), int(round((new_w - p.crop) / 2.0))
            whole = (resize_matrix(height, new_h, p.interpolation)[top:top + p.crop].float(),
                     resize_matrix(width, new_w, p.interpolation)[left:left + p.crop].T.float())
            for expected, cached, traced in zip(whole, prep.matrices(height, width, torch.device("cpu")),
                                                prep.traced_matrices(height, width, torch.device("cpu")), strict=True):
                assert torch.equal(expected, traced) and torch.equal(cached, traced), (p, height, width)
                assert traced.dtype == torch.float32
    image = torch.randint(0, 256, (1, 53, 37, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prep(image), prep(image, traced=True))
    assert resolve_storage({"dataset": "raw", "store": "files"}, None, "head.pt") == AS_FILES
    config = {"datasets": {"raw": {"source": "imagefolder", "root": "photos", "store": "files"}}, "networks": {}}
    assert resolve_storage({"dataset": "raw"}, config, "head.pt") == AS_FILES  # an older head: from the config


def test_find_images_folders_globs_and_plain_paths(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.png", "a/sub/y.JPG", "a/notes.txt", "a/.hidden.png"):
        (tmp_path / name).write_bytes(b"")
    found = find_images([tmp_path / "a", str(tmp_path / "a" / "*.txt"), tmp_path / "missing.png"])
    assert found == [tmp_path / "a/sub/y.JPG", tmp_path / "a/x.png", tmp_path / "a/notes.txt",
                     tmp_path / "missing.png"]
    with pytest.raises(NoImagesError, match=r"no files match .*\*\.gif"):
        find_images([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError, match="empty holds no"):
        find_images([tmp_path / "empty"])


# --- end to end: Snakemake, the command line, the exported file --------------------------

TINY = {
    "networks": {"lite0": {"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 32}},
    "datasets": {"digits": {"source": "digits"}},
    "split": {"validation_fraction": 0.2, "test_fraction": 0.0, "seed": 0},  # no test split: less to extract
    "heads": {"linear": {"kind": "linear", "epochs": 20}},
    "extract": {"batch_size": 256},
}
N_TRAIN_IMAGES = 6


def _write_new_images(folder: Path, digits) -> None:
    """Training images as PNG files, a larger grey one, an RGBA one, and a file that is no image."""
    folder.mkdir()
    images, _ = digits.subset("train")
    for i in range(N_TRAIN_IMAGES):
        Image.fromarray(images[i]).save(folder / f"train_{i}.png")
    Image.fromarray(images[10]).resize((30, 44), Image.BILINEAR).convert("L").save(folder / "grey_30x44.png")
    Image.fromarray(images[11]).convert("RGBA").resize((20, 20)).save(folder / "rgba_20.png")
    (folder / "broken.png").write_bytes(b"this is not a PNG")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny grid up to its head, then `snakemake predict export` on a folder of new images."""
    workdir = copy_workflow(tmp_path_factory.mktemp("predict"))
    write_config(workdir, TINY)
    snakemake(workdir, "results/datasets/digits.npz")
    _write_new_images(workdir / "new", load_prepared(workdir / "results/datasets/digits.npz"))
    imports = tmp_path_factory.mktemp("imports")
    run = snakemake(workdir, "predict", "export", "--config", "predict={images: new/, top_k: 2}",
                    hooks={"TRANSFER_LAB_TEST_IMPORTS": str(imports)})
    assert_job_imports(imports, __file__)  # extract_features_without_test: a dataset without a test split
    return workdir, run


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))




@pytest.mark.integration
def test_snakemake_predict_writes_one_row_per_image(built):
    workdir, run = built
    assert run.jobs == {"extract_features_without_test": 1, "train_head": 1, "predict": 1, "export_model": 1,
                        "export": 1}
    rows = _rows((workdir / "results/predictions/lite0_digits_linear.csv").read_text())
    names = [Path(r["path"]).name for r in rows]
    assert names == sorted(names) and len(rows) == N_TRAIN_IMAGES + 3
    assert list(rows[0]) == ["path", "predicted", "probability", "class_1", "probability_1",
                             "class_2", "probability_2", "error"]
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert "broken.png: not a readable image" in broken["error"] and broken["predicted"] == ""
    for row in rows:
        if row is broken:
            continue
        assert row["error"] == "" and row["predicted"] == row["class_1"] in [str(d) for d in range(10)]
        assert 0.1 < float(row["probability"]) == float(row["probability_1"]) >= float(row["probability_2"])
    # A second run has nothing to do.
    again = snakemake(workdir, "predict", "export", "--config", "predict={images: new/, top_k: 2}")
    assert again.jobs == {}


@pytest.mark.integration
def test_training_images_get_the_class_evaluation_gave_them(built):
    workdir, _ = built
    rows = {Path(r["path"]).name: r for r in
            _rows((workdir / "results/predictions/lite0_digits_linear.csv").read_text())}
    head, head_file = load_head(workdir / "results/heads/lite0_digits_linear.pt")
    train = read_bottleneck(workdir / "results/bottleneck/lite0_digits_bottleneck_features_train.p")
    x = (torch.from_numpy(train.features[:N_TRAIN_IMAGES]) - head_file["mean"]) / head_file["std"]
    with torch.no_grad():
        evaluated = torch.softmax(head(x), dim=1)
    for i in range(N_TRAIN_IMAGES):
        assert abs(float(rows[f"train_{i}.png"]["probability"]) - float(evaluated[i].max())) < 1e-3
    # The class evaluation gave, wherever its top class leads by more than the two paths'
    # probabilities may differ by (2 x 1e-3); at a near-tie, one of the tied classes.
    predicted = [head_file["class_names"].index(rows[f"train_{i}.png"]["predicted"]) for i in range(N_TRAIN_IMAGES)]
    assert_same_class(np.array(predicted), evaluated.numpy(), 2e-3, min_clear=0.5)


@pytest.mark.integration
def test_command_line_predict_matches_the_workflow(built, tmp_path):
    workdir, _ = built
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"))
    out = subprocess.run(
        [sys.executable, "-m", "transfer_lab", "predict", "--head", "results/heads/lite0_digits_linear.pt", "new/",
         "--top-k", "3", "--device", "cpu", "-o", str(tmp_path / "cli.csv")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 of 9 images could not be read" in out.stderr
    table = out.stdout.splitlines()
    assert table[0].split() == ["image", "predicted", "probability", "runners-up"] and len(table) == 10
    assert "error: new/broken.png: not a readable image" in out.stdout
    cli_rows = _rows((tmp_path / "cli.csv").read_text())
    rule_rows = _rows((workdir / "results/predictions/lite0_digits_linear.csv").read_text())
    assert [(r["path"], bool(r["error"])) for r in cli_rows] == [(r["path"], bool(r["error"])) for r in rule_rows]
    for a, b in zip(cli_rows, rule_rows, strict=True):
        if not a["error"]:
            assert abs(float(a["probability"]) - float(b["probability"])) < 1e-5
            assert f"{a['predicted']}  " in next(line for line in table if line.startswith(a["path"]))
            # The same first two classes, in order; where two of the three first tie to within
            # what the two runs' probabilities may differ by (2 x 1e-5: the CLI may run on other
            # threads, which round otherwise), either order of the tied two.
            classes = [a[f"class_{i}"] for i in (1, 2, 3)]
            p = [float(a[f"probability_{i}"]) for i in (1, 2, 3)]
            allowed = {(classes[0], classes[1])}
            if p[0] - p[1] < 2e-5:
                allowed.add((classes[1], classes[0]))
            if p[1] - p[2] < 2e-5:
                allowed.add((classes[0], classes[2]))
            assert (b["predicted"], b["class_2"]) in allowed, (a, b)
            assert a["predicted"] == a["class_1"] and b["predicted"] == b["class_1"]


@pytest.mark.integration
def test_head_of_another_network_is_refused_naming_both(built):
    workdir, _ = built
    head = workdir / "results/heads/lite0_digits_linear.pt"
    with pytest.raises(PredictError, match=r"features of network 'lite0' .* not of the requested network 'resnet'"):
        load_predictor(head, network="resnet")
    changed = {"networks": {"lite0": {**TINY["networks"]["lite0"], "input_size": 64}}, "datasets": TINY["datasets"]}
    with pytest.raises(PredictError, match=r"trained on network 'lite0' as .*input 32.* is now .*input 64"):
        load_predictor(head, network="lite0", config=changed)



@pytest.mark.integration
def test_storage_comes_from_the_head_file_else_from_the_config(built, tmp_path):
    """Heads record how their dataset's images were stored; an older head without that
    needs the config's dataset entry, and says so when there is none."""
    workdir, _ = built
    head = workdir / "results/heads/lite0_digits_linear.pt"
    predictor = load_predictor(head, config={"datasets": {}})  # no config needed
    assert predictor.storage == Storage(8, "squash")
    head_file = torch.load(head, weights_only=True)
    for key in ("storage_size", "storage_fit"):
        del head_file["network_meta"][key]
    older = tmp_path / "older.pt"
    torch.save(head_file, older)
    assert load_predictor(older, config={"datasets": TINY["datasets"]}).storage == Storage(8, "squash")
    with pytest.raises(PredictError, match="cannot tell the storage size of dataset 'digits'"):
        load_predictor(older, config={"datasets": {}})


@pytest.mark.integration
def test_snakemake_predict_says_what_to_set(built):
    workdir, _ = built
    run = snakemake(workdir, "-n", "predict", check=False)
    assert run.returncode != 0 and "predict: set predict.images to image files, folders or glob patterns" in run.output
    run = snakemake(workdir, "-n", "predict", "--config", "predict={images: new/, head: nope}", check=False)
    assert "predict.head: 'nope' is not in heads; valid: linear" in run.output


FRESH = """
import json, sys
sys.modules["transfer_lab"] = None          # any import of the project would now fail
import numpy as np, torch
extra = {"transfer_lab.json": ""}
model = torch.export.load(sys.argv[1], extra_files=extra).module()
info = json.loads(extra["transfer_lab.json"])
out = {}
for path in sys.argv[2:]:
    probs = model(torch.from_numpy(np.load(path)))
    out[path] = probs.tolist()
assert not any(m.startswith("transfer_lab.") for m in sys.modules)
print(json.dumps({"class_names": info["class_names"], "input": info["input"], "probabilities": out}))
"""


@pytest.mark.integration
def test_exported_model_reproduces_predict_in_a_fresh_process(built, tmp_path):
    from transfer_lab.images import read_image
    from transfer_lab.predict import predict_files

    workdir, _ = built
    exported = workdir / "results/export/lite0_digits_linear.pt2"
    predictor = load_predictor(workdir / "results/heads/lite0_digits_linear.pt", storage=Storage(8, "squash"))
    paths = sorted(p for p in (workdir / "new").iterdir() if p.name != "broken.png")
    expected = {str(r["path"]): r["probabilities"] for r in predict_files(predictor, paths)}
    arrays = []
    for p in paths:  # decoded here (EXIF, modes) exactly as predict decodes; the model takes the pixels
        arrays.append(tmp_path / f"{p.stem}.npy")
        np.save(arrays[-1], read_image(p))
    out = subprocess.run([sys.executable, "-I", "-c", FRESH, str(exported), *map(str, arrays)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["class_names"] == [str(d) for d in range(10)]
    assert result["input"]["dtype"] == "uint8" and result["input"]["channels"] == "RGB"
    for p, npy in zip(paths, arrays, strict=True):
        got = np.array(result["probabilities"][str(npy)])
        assert np.abs(got - expected[str(p)]).max() <= 1e-4, p


@pytest.mark.integration
def test_a_digits_head_at_an_image_size_of_its_own_predicts_new_images_as_training_saw_them(tmp_path):
    """digits with image_size 16: preparation stores the 8x8 digits at 16 (as every other source
    honours image_size), the head records 16, and predict takes an 8x8 digit file through the
    same 16-pixel storage step: its probabilities are those evaluation gave the stored image."""
    from sklearn.datasets import load_digits

    from transfer_lab.datasets import SplitSpec, plan_dataset
    from transfer_lab.predict import predict_files
    from transfer_lab.sources import dataset_spec

    workdir = copy_workflow(tmp_path / "wd")
    entry = {"source": "digits", "image_size": 16, "split": {"train_per_class": 10}}
    config = {**TINY, "datasets": {"digits": entry}}
    write_config(workdir, config)
    snakemake(workdir, "results/heads/lite0_digits_linear.pt")
    # The 8x8 originals of the first training images: the sklearn rows preparation kept, in its order.
    plan = plan_dataset(dataset_spec({"source": "digits"}), SplitSpec(**{**TINY["split"], **entry["split"]}))
    grey = np.rint(load_digits().images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    originals = grey[plan.rows[plan.split == 0][:N_TRAIN_IMAGES]]
    (workdir / "new").mkdir()
    paths = [workdir / "new" / f"digit_{i}.png" for i in range(N_TRAIN_IMAGES)]
    for path, original in zip(paths, originals, strict=True):
        Image.fromarray(original).save(path)  # grey, 8x8: as a user's scan might come
    predictor = load_predictor(workdir / "results/heads/lite0_digits_linear.pt")
    head, head_file = load_head(workdir / "results/heads/lite0_digits_linear.pt")
    train = read_bottleneck(workdir / "results/bottleneck/lite0_digits_bottleneck_features_train.p")
    with torch.no_grad():
        evaluated = torch.softmax(head((torch.from_numpy(train.features) - head_file["mean"]) / head_file["std"]), 1)
    for i, row in enumerate(predict_files(predictor, paths)):
        assert row["error"] == "" and np.abs(row["probabilities"] - evaluated[i].numpy()).max() < 1e-4, row["path"]
    # Because the images were stored at the size the head records, and predict's storage step is preparation's.
    prepared = load_prepared(workdir / "results/datasets/digits.npz")
    assert prepared.images.shape[1:] == (16, 16, 3) and prepared.meta["storage_size"] == 16
    assert predictor.storage == Storage(16, "squash")
    for original, image in zip(originals, prepared.subset("train")[0], strict=False):
        rgb = torch.from_numpy(np.repeat(original[..., None], 3, axis=-1))
        assert torch.equal(predictor.model.storage(rgb), torch.from_numpy(image))


def _textured_folder(root: Path) -> Path:
    """Two classes of 8 textured images (a flat colour would look the same through any resize)
    in the sizes, formats and modes of photos: RGB, grey and CMYK JPEGs, PNG, BMP."""
    rng = np.random.default_rng(7)
    kinds = [(".jpg", "RGB", (80, 60)), (".png", "RGB", (48, 96)), (".jpg", "L", (64, 64)), (".png", "RGB", (100, 40)),
             (".jpg", "CMYK", (70, 90)), (".bmp", "RGB", (50, 50)), (".jpg", "RGB", (66, 77)), (".png", "L", (90, 72))]
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i, (ext, mode, (width, height)) in enumerate(kinds):
            coarse = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC).convert(mode)
            image.save(root / name / f"{i}{ext}", **({"quality": 90} if ext == ".jpg" else {}))
    return root


@pytest.mark.integration
def test_a_head_on_a_dataset_kept_as_files_predicts_as_extraction_decoded_them(tmp_path):
    """store: files has no storage step: extraction decodes each file and applies the network's
    own resize, crop and normalisation. predict (the rule, the library) and the exported file do
    the same, so a training file gets the probabilities evaluation gave it."""
    from transfer_lab.export import load_exported
    from transfer_lab.predict import predict_files

    workdir = copy_workflow(tmp_path / "wd")
    root = _textured_folder(tmp_path / "photos")
    config = {
        # lite0 pretrained (random weights hardly tell one image from another) resizes to 36; the
        # other network makes the largest resize 54, which a storage step would resize to first.
        "networks": {**TINY["networks"], "large": {**TINY["networks"]["lite0"], "weights": "random", "input_size": 48}},
        "datasets": {"photos": {"source": "imagefolder", "root": str(root), "store": "files"}},
        "split": {"validation_fraction": 0.25, "test_fraction": 0.25, "seed": 0},
        "heads": {"linear": {"kind": "linear", "epochs": 5}},
        "predict": {"network": "lite0", "images": str(root)},
    }
    write_config(workdir, config)
    snakemake(workdir, "predict", "export")
    prepared = load_prepared(workdir / "results/datasets/photos.npz")
    head, head_file = load_head(workdir / "results/heads/lite0_photos_linear.pt")
    expected = {}
    for split in ("train", "validation", "test"):
        features = read_bottleneck(workdir / f"results/bottleneck/lite0_photos_bottleneck_features_{split}.p").features
        with torch.no_grad():
            probs = torch.softmax(head((torch.from_numpy(features) - head_file["mean"]) / head_file["std"]), 1)
        expected.update(zip(prepared.subset(split)[0], probs.numpy(), strict=True))
    rows = _rows((workdir / "results/predictions/lite0_photos_linear.csv").read_text())
    assert len(rows) == len(expected) == 16
    for row in rows:
        want = expected[str(Path(row["path"]).resolve())]
        assert row["error"] == "" and row["predicted"] == head_file["class_names"][int(want.argmax())], row
        assert abs(float(row["probability"]) - want.max()) < 1e-5, (row, want)
    # The library (the storage step from the head file) and the exported program alike.
    from transfer_lab.decode import read_raw

    predictor = load_predictor(workdir / "results/heads/lite0_photos_linear.pt")
    assert predictor.storage == AS_FILES and predictor.meta["store"] == "files"
    paths = [Path(p) for p in expected]
    for path, row in zip(paths, predict_files(predictor, paths), strict=True):
        assert np.abs(row["probabilities"] - expected[str(path)]).max() < 1e-5, path
    module, record = load_exported(workdir / "results/export/lite0_photos_linear.pt2")
    assert record["storage"] == {"store": "files", "size": None, "fit": None}
    with torch.no_grad():
        for path in paths[:6]:  # decoded as extraction decodes them: the program takes pixels
            image = read_raw(str(path), gpu_jpeg=False).pixels.permute(1, 2, 0).contiguous()
            assert np.abs(module(image).numpy() - expected[str(path)]).max() < 1e-4, path
