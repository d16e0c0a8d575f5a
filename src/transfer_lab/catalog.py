"""Which architectures and weights exist: torchvision's and timm's names, cached per version.

Validating a config needs every torchvision classification model name, each one's weights
tags with their download URLs and smallest input, and timm's model names. Reading them
means importing torchvision and timm: seconds and most of a gigabyte, paid by every
``snakemake`` call (the workflow validates its config when it is parsed) and again by
every cluster job, which parses the workflow too. The names change only when those
libraries do, so they are read once per installed (torch, torchvision, timm) version and
kept as JSON in the user's cache folder; a parse on an unchanged environment imports
neither library.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

# Bump when the file's layout changes, so an older cache file is not read.
FORMAT = 1
LIBRARIES = ("torch", "torchvision", "timm")


@dataclass(frozen=True)
class TorchvisionArch:
    """One torchvision classification model: its weights tags and what they need."""

    default: str  # the tag 'DEFAULT' stands for
    urls: dict[str, str]  # weights tag -> checkpoint URL
    min_size: int  # smallest input side its feature maps survive (the weights' meta)


@dataclass(frozen=True)
class Catalog:
    torchvision: dict[str, TorchvisionArch]
    timm: frozenset[str]  # timm architecture names (without a pretrained tag)


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
        }
    return {"torchvision": dict(sorted(archs.items())), "timm": sorted(timm.list_models())}


def _parse(contents: dict) -> Catalog:
    return Catalog(
        torchvision={name: TorchvisionArch(**arch) for name, arch in contents["torchvision"].items()},
        timm=frozenset(contents["timm"]),
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
            json.dump(contents, f)
    except OSError:
        pass
    return _parse(contents)
