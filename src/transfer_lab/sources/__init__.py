"""Dataset sources: readers of the formats people actually have on disk, one module each.

Every module of this package that defines a module-level ``SOURCE``
(a :class:`~transfer_lab.sources.base.Source`), or a family of them as ``SOURCES``
(torchvision's datasets, ``torchvision:<Class>``), is a source: adding a format is adding
one file. Everything else the project knows about sources comes from those descriptors:
the config schema's choices and options (:func:`schema_properties`), the checks before
any job (:func:`check_dataset`), storage size and fit, official splits, the file rule
fetch_dataset makes, and the datasets table of docs/configuration.md (:func:`docs_table`).

No torch here: the workflow reads all of it when it is parsed.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Mapping

from . import base

# Where rule fetch_dataset puts a dataset's downloaded files (what root must then be).
_DOWNLOADS = "resources/raw"
# How each fit (storage.FITS) reads in the docs table.
_FIT_WORDS = {"squash": "resized to a square", "crop": "shorter side resized, centre-cropped"}
# The docs table's storage size of a source that follows the networks (Source.image_size None).
_NETWORKS_SIZE = "the networks' largest resize"


@functools.cache
def _registry() -> dict[str, base.Source]:
    """name -> descriptor, by name, for every module here that defines ``SOURCE`` or ``SOURCES``."""
    found: dict[str, base.Source] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        single = getattr(module, "SOURCE", None)
        for source in ([single] if single is not None else []) + list(getattr(module, "SOURCES", ())):
            if source.name in found:
                raise RuntimeError(f"{module.__name__}: source {source.name!r} is already defined")
            found[source.name] = source
    return dict(sorted(found.items()))


@functools.cache
def _options() -> dict[str, tuple[base.Option, tuple[str, ...]]]:
    """option name -> (its declaration, the sources that take it)."""
    options: dict[str, tuple[base.Option, tuple[str, ...]]] = {}
    for source in _registry().values():
        for option in source.options:
            known, owners = options.get(option.name, (option, ()))
            if known != option:
                raise RuntimeError(f"sources {owners[0]!r} and {source.name!r} declare option {option.name!r} "
                                   "differently; one declaration, or two names")
            options[option.name] = (option, (*owners, source.name))
    return options


def names() -> list[str]:
    """Every source's name, sorted: the config's choices for ``datasets.<name>.source``."""
    return list(_registry())


def close_matches(name: str) -> list[str]:
    """The sources ``name`` may have meant: similar names, case aside, with or without a
    family's prefix (``mnist``, ``torchvision:Cifar100``)."""
    # A family's names are compared by what follows the prefix: the prefix alike in all
    # of them would make every one look close.
    keys = {n.lower().rsplit(":", 1)[-1]: n for n in names()}
    return [keys[k] for k in difflib.get_close_matches(name.lower().rsplit(":", 1)[-1], list(keys), n=3)]


def get(name: str) -> base.Source:
    """The descriptor of source ``name``; an unknown name is refused listing the valid
    ones, and those close to it."""
    try:
        return _registry()[name]
    except KeyError:
        close = close_matches(name)
        raise ValueError(
            f"unknown dataset source {name!r}"
            + (f"; did you mean: {', '.join(close)}?" if close else "")
            + f" Valid: {', '.join(names())}"
        ) from None


def dataset_spec(entry: Mapping[str, Any]) -> base.DatasetSpec:
    """A config ``datasets`` entry as readers and checks take it. Keys that are no
    source's business (the entry's ``split`` overrides) stay behind. ``network_resize`` is
    no config key: the workflow adds it to the entries it hands its jobs, for the datasets
    whose storage size follows the networks (:func:`follows_networks`)."""
    return base.DatasetSpec(
        source=entry["source"],
        root=entry.get("root"),
        image_size=entry.get("image_size"),
        download=bool(entry.get("download", False)),
        store=entry.get("store", "pixels"),
        options={name: entry[name] for name in _options() if name in entry},
        network_resize=entry.get("network_resize"),
    )


def download_root(dataset: str) -> str:
    """The folder a dataset with ``download: true`` is fetched into, and read from."""
    return f"{_DOWNLOADS}/{dataset}"


def follows_networks(spec: base.DatasetSpec) -> bool:
    """Whether the dataset is stored at the configured networks' largest resize: a photo
    source (its ``image_size`` None) and no ``image_size`` of the dataset's own, stored as
    pixels (``store: files`` stores no pixels: nothing of it depends on the networks)."""
    return spec.store == "pixels" and spec.image_size is None and get(spec.source).image_size is None


def storage_size(spec: base.DatasetSpec) -> int | None:
    """The side of the stored square images: ``image_size``, else the source's own size, else
    (photo sources) the largest resize of the configured networks, ``spec.network_resize``.
    None for a dataset kept as its files (``store: files``): nothing is stored, and extraction
    takes each decoded file to the network's own resize."""
    if spec.store == "files":
        return None
    if spec.image_size is not None:
        return int(spec.image_size)
    own = get(spec.source).image_size
    if own is not None:
        return own
    if spec.network_resize is None:
        raise ValueError(
            f"source {spec.source!r} stores its images at the largest resize of the configured networks "
            "(the shorter side before their centre crop), and no network is given: set the dataset's image_size"
        )
    return int(spec.network_resize)


def storage_fit(spec: base.DatasetSpec) -> str:
    """How a source's images are fit into the storage square (``storage.to_storage``'s ``fit``)."""
    return get(spec.source).fit


def _only(owners: tuple[str, ...] | list[str]) -> str:
    return f"only the {', '.join(owners)} source{'s' if len(owners) > 1 else ''}"


def check_dataset(name: str, spec: base.DatasetSpec, on_disk: bool = True) -> None:
    """Cheap checks that the files a source needs are where ``root`` says.

    Raises ValueError naming the config key, the path and what is expected there. Reads
    no images. The workflow runs them when it is parsed with ``on_disk=False``: a root
    that is not there yet passes (a dry run plans the grid before the data is in place),
    one that is there is looked at, so a bad table fails before any job; and all of them
    first thing in ``prepare_dataset``.
    """
    where = f"datasets.{name}"
    source = get(spec.source)
    for key, (option, owners) in _options().items():
        if spec.options.get(key, option.schema.get("default")) != option.schema.get("default") and (
                source.name not in owners):
            verb = "have" if len(owners) > 1 else "has"
            raise ValueError(f"{where}.{key}: {_only(owners)} {verb} {option.needs}, not {spec.source!r}")
    if spec.store == "files" and not source.stores_files:
        able = [s.name for s in _registry().values() if s.stores_files]
        raise ValueError(
            f"{where}.store: {_only(able)} can store their original files, not {spec.source!r} (its images are "
            "not whole files on disk); use store: pixels"
        )
    if spec.store == "files" and spec.image_size is not None:
        raise ValueError(
            f"{where}.image_size: a dataset with store: files stores no pixels (extraction decodes its files and "
            "resizes them to each network's own input), so image_size would change nothing; remove it, or use "
            "store: pixels"
        )
    if spec.download and source.fetch is None:
        fetched = [s.name for s in _registry().values() if s.fetch is not None]
        raise ValueError(
            f"{where}.download: {_only(fetched)} can be downloaded, not {spec.source!r}; "
            "place the files in root yourself"
        )
    if not source.needs_root:
        return
    expected = f"expected {source.expects}"
    if not spec.root:
        raise ValueError(f"{where}.root: required for source {spec.source!r}; {expected}")
    if spec.download:
        return
    path = Path(spec.root)
    if not path.exists():
        if not on_disk:
            return
        raise ValueError(f"{where}.root: {spec.root} does not exist; {expected}")
    problem = source.check(path) if source.check is not None else None
    if problem:
        raise ValueError(f"{where}.root: {spec.root} {problem}; {expected}")


def schema_properties() -> dict[str, dict]:
    """The JSON-schema properties of a ``datasets`` entry that the sources define:
    ``source`` (its choices, and what each is) and the options some sources take."""
    properties = {
        "source": {
            "type": "string",
            "enum": names(),
            "description": "; ".join(f"{s.name}: {s.title}" for s in _registry().values()),
        }
    }
    for key, (option, owners) in _options().items():
        properties[key] = {**option.schema, "description": f"{', '.join(owners)} only: {option.schema['description']}"}
    return properties


def _markdown(text: str) -> str:
    """Plain text (an error's "expected ...") as a Markdown table cell."""
    return text.replace("|", "\\|").replace("<", "\\<")


def docs_table() -> str:
    """The table "Datasets: what to put where" of docs/configuration.md, as Markdown (a test
    keeps that copy equal)."""
    lines = [
        "| source | what it is | `root` holds | storage size (`image_size` default), fit | official splits |",
        "|---|---|---|---|---|",
    ]
    for s in _registry().values():
        holds = [_markdown(s.expects)] + ([s.notes] if s.notes else [])
        holds += [f"`{o.name}`: {o.schema['description']}" for o in s.options]
        if s.fetch is not None:
            what = s.fetch.what or f"`{s.fetch.file}` (checksum verified)"
            holds.append(f"`download: true` fetches {what} into `{download_root('<name>')}/`")
        size = _NETWORKS_SIZE if s.image_size is None else str(s.image_size)
        cells = [f"`{s.name}`", s.title, "; ".join(holds), f"{size}, {_FIT_WORDS[s.fit]}",
                 ", ".join(s.splits) or "none: carved by `split`"]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
