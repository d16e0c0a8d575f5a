"""Which architectures and weights exist: torchvision's and timm's names, cached per version.

Validating a config needs every torchvision classification model name, each one's weights
tags with their download URLs, smallest input, parameter count and ImageNet-1k top-1
(static facts a zoo's candidates are filtered and ranked by, ``transfer_lab.zoo``);
timm's model names, each one's pretrained tags and where their files are (the Hugging Face
hub or a URL), and which timm models compute tokens (transformers, whose features a
``pool`` setting can choose). Reading them means importing torchvision and timm: seconds
and most of a gigabyte, paid by every ``snakemake`` call (the workflow validates its config
when it is parsed) and again by every cluster job, which parses the workflow too. The
names change only when those libraries do, so they are read once per installed (torch,
torchvision, timm) version and kept as JSON in the user's cache folder; a parse on an
unchanged environment imports neither library.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

# Bump when the file's layout changes, so an older cache file is not read.
FORMAT = 4
LIBRARIES = ("torch", "torchvision", "timm")


@dataclass(frozen=True)
class TorchvisionArch:
    """One torchvision classification model: its weights tags and what they need."""

    default: str  # the tag 'DEFAULT' stands for
    urls: dict[str, str]  # weights tag -> checkpoint URL
    min_size: int  # smallest input side its feature maps survive (the weights' meta)
    # weights tag -> (resize, crop) of its eval transform: the shorter side an image is
    # resized to, then the centre crop (ResNet-50 IMAGENET1K_V1: 256, 224).
    sizes: dict[str, tuple[int, int]]
    params: dict[str, int]  # weights tag -> parameter count (the weights' meta num_params)
    # weights tag -> ImageNet-1K top-1 in % (meta _metrics), for the tags that publish one
    top1: dict[str, float]


@dataclass(frozen=True)
class Catalog:
    torchvision: dict[str, TorchvisionArch]
    # timm architecture name (without a pretrained tag) -> its pretrained tags, timm's
    # default first; () for an architecture without pretrained weights.
    timm: dict[str, tuple[str, ...]]
    # '<arch>.<tag>' -> where its file is, for the few not at timm's own hub repository
    # 'timm/<arch>.<tag>' (another repository, or a plain URL); see timm_source.
    timm_sources: dict[str, dict[str, str]]
    timm_tokens: frozenset[str]  # timm architectures whose features are tokens (transformers)
    # The (input side, crop_pct) of timm's eval transforms: what they crop to, and the
    # fraction of the resize that crop is. The distinct pairs, timm's defaults (224, 0.875)
    # first; and per architecture, indices into them: its default config's (what the bare
    # name builds), then each of its tags' in the order of ``timm``; an architecture whose
    # every config has the defaults is left out (a small file). See timm_size.
    timm_size_table: tuple[tuple[int, float], ...]
    timm_sizes: dict[str, tuple[int, ...]]

    def timm_size(self, arch: str, tag: str | None) -> tuple[int, float]:
        """(input side, crop_pct) of timm's pretrained config ``arch.tag`` (``tag`` None: the
        arch's default config), as ``timm.data.resolve_data_config`` reads them."""
        indices = self.timm_sizes.get(arch)
        if indices is None:
            return self.timm_size_table[0]
        return self.timm_size_table[indices[0] if tag is None else indices[1 + self.timm[arch].index(tag)]]

    def timm_source(self, arch: str, tag: str) -> dict[str, str]:
        """Where the weights of ``arch.tag`` come from: ``{"hf_hub_id": ...}`` (with
        ``"hf_hub_filename"`` when timm names one) or ``{"url": ...}``, as timm's own
        pretrained config says; timm prefers the hub when a config has both."""
        name = f"{arch}.{tag}"
        return self.timm_sources.get(name, {"hf_hub_id": f"timm/{name}"})


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/transfer-lab`` (default ``~/.cache/transfer-lab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transfer-lab"


def library_versions() -> dict[str, str]:
    """The installed versions the catalog depends on, read without importing anything."""
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def cache_path(versions: dict[str, str]) -> Path:
    tag = "-".join(f"{name}{version}" for name, version in versions.items())
    return cache_dir() / f"catalog-v{FORMAT}-{tag}.json".replace("+", "_")


def read_libraries() -> dict:
    """The catalog's contents, read from torchvision and timm themselves (slow)."""
    import timm
    import torchvision.models
    from torchvision.models import get_model_weights

    archs = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = get_model_weights(name)
        archs[name] = {
            "default": weights.DEFAULT.name,
            "urls": {w.name: w.url for w in weights},
            "min_size": min(min(w.meta.get("min_size", (1, 1))) for w in weights),
            "sizes": {w.name: _resize_crop(w) for w in weights},
            "params": {w.name: int(w.meta["num_params"]) for w in weights if "num_params" in w.meta},
            "top1": {w.name: float(top1) for w in weights if (top1 := _imagenet_top1(w)) is not None},
        }
    tags, sources, sizes = {}, {}, {}
    table = [(int(timm.models.PretrainedCfg().input_size[-1]), float(timm.data.DEFAULT_CROP_PCT))]

    def size_index(cfg) -> int:
        # timm.data.resolve_data_config's reading of a config: its crop_pct, or timm's default.
        size = (int(cfg.input_size[-1]), float(cfg.crop_pct or timm.data.DEFAULT_CROP_PCT))
        if size not in table:
            table.append(size)
        return table.index(size)

    for arch in timm.list_models():
        tags[arch] = []
        cfgs = timm.models.get_arch_pretrained_cfgs(arch)  # timm's default first
        indices = [size_index(next(iter(cfgs.values())))]
        for name, cfg in cfgs.items():
            if not cfg.has_weights:
                continue
            tags[arch].append(name.split(".", 1)[1])
            indices.append(size_index(cfg))
            if cfg.hf_hub_id:
                source = {"hf_hub_id": cfg.hf_hub_id, "hf_hub_filename": cfg.hf_hub_filename}
            else:
                source = {"url": cfg.url}
            source = {key: value for key, value in source.items() if value}
            if source != {"hf_hub_id": f"timm/{name}"}:  # only what differs from the rule (small file)
                sources[name] = source
        if any(indices):
            sizes[arch] = indices
    return {"torchvision": dict(sorted(archs.items())), "timm": tags, "timm_sources": sources,
            "timm_tokens": token_archs(), "timm_size_table": table, "timm_sizes": sizes}


def _resize_crop(weights) -> tuple[int, int]:
    """(resize, crop) of torchvision weights' eval transform, read from ``transforms()``
    (a partial of its ImageClassification: reading it downloads nothing)."""
    t = weights.transforms()
    return int(t.resize_size[0]), int(t.crop_size[0])


def _imagenet_top1(weights) -> float | None:
    """ImageNet-1K top-1 (%) from torchvision weights' metadata; None for weights evaluated on
    something else, or not at all (VGG16's IMAGENET1K_FEATURES publishes NaN)."""
    top1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return None if top1 is None or math.isnan(top1) else top1


def token_archs() -> list[str]:
    """The timm architectures whose ``forward_features`` returns tokens (batch, tokens, channels)
    with ``num_prefix_tokens`` in front (ViT, DeiT, EVA, BEiT, ...): where ``pool`` applies.

    Decided per model family (a module of ``timm.models``): a family whose model class offers
    timm's token API (``forward_intermediates(..., return_prefix_tokens=...)``) is checked by
    building its shortest-named architecture on the meta device (no memory, no weights) and
    running ``forward_features``; encoders that return feature maps instead (Qwen3's and
    DeepSeek's ViTs) are left out. Building all of timm's 1,300 architectures would take minutes.
    """
    import collections
    import importlib
    import inspect

    import timm
    import torch
    from timm.models._registry import _model_to_module as model_module

    families = collections.defaultdict(list)
    for arch in timm.list_models():
        families[model_module[arch]].append(arch)
    tokens = []
    for family, archs in sorted(families.items()):
        module = importlib.import_module(f"timm.models.{family}")
        if not any(
            issubclass(cls, torch.nn.Module) and "return_prefix_tokens" in inspect.signature(
                getattr(cls, "forward_intermediates", lambda: None)).parameters
            for _, cls in inspect.getmembers(module, inspect.isclass)
        ):
            continue
        try:
            with torch.device("meta"):
                model = timm.create_model(min(archs, key=lambda name: (len(name), name)))
                side = model.pretrained_cfg["input_size"][-1]
                out = model.forward_features(torch.zeros(1, 3, side, side))
        except Exception:  # a family that cannot be probed is not offered pool
            continue
        if out.ndim == 3 and isinstance(getattr(model, "num_prefix_tokens", None), int):
            tokens.extend(archs)
    return sorted(tokens)


def _parse(contents: dict) -> Catalog:
    return Catalog(
        torchvision={
            name: TorchvisionArch(**{**arch, "sizes": {tag: tuple(size) for tag, size in arch["sizes"].items()}})
            for name, arch in contents["torchvision"].items()
        },
        timm={name: tuple(tags) for name, tags in contents["timm"].items()},
        timm_sources=contents["timm_sources"],
        timm_tokens=frozenset(contents["timm_tokens"]),
        timm_size_table=tuple((int(side), float(pct)) for side, pct in contents["timm_size_table"]),
        timm_sizes={arch: tuple(indices) for arch, indices in contents["timm_sizes"].items()},
    )


@functools.cache
def catalog() -> Catalog:
    """The catalog of the installed libraries: from the cache file, or read and cached.

    A cache folder that cannot be written only costs the slow read on every call.
    """
    versions = library_versions()
    path = cache_path(versions)
    try:
        contents = json.loads(path.read_text())
        if contents.get("versions") == versions:
            return _parse(contents)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable or from another layout: read the libraries again
    contents = {"versions": versions, **read_libraries()}
    try:
        with atomic_write(path, "w") as f:
            json.dump(contents, f, separators=(",", ":"))
    except OSError:
        pass
    return _parse(contents)
