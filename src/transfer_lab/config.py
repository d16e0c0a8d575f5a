"""Config validation: the JSON schema (with its defaults), then what a schema cannot say.

Runs when the workflow is parsed, so every mistake surfaces before any job starts,
naming the config key and the valid choices.
"""

from __future__ import annotations

import copy
import itertools
import os

import jsonschema
import yaml

from . import sources

# The head name of a fine-tuned network: in the comparison, and for predict and export
# (so no head in the config may take it).
FINETUNED = "finetune"


def head_choices(heads) -> list[str]:
    """What ``predict.head`` (and an exported file's head) may name: a head, or ``finetune``."""
    return [*heads, FINETUNED]


# Head kinds whose fit does not depend on the seed (L-BFGS from zero; no training at all).
SEEDLESS_KINDS = ("logreg", "knn")


def effective_repeats(kind: str, shots: int | None, repeats: int) -> int:
    """How many times a head is trained: ``evaluation.repeats``, except once for a kind
    whose fit ignores the seed on the full training set (``shots`` None), where the other
    runs would be copies. On a label-efficiency subset every repeat draws other images."""
    return 1 if shots is None and kind in SEEDLESS_KINDS else repeats


class ConfigError(ValueError):
    pass


def _with_defaults(validator_class):
    """A validator that fills in ``default`` values while it validates (also nested ones)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        message = f"{error.instance!r} is not valid; valid choices: {', '.join(map(str, error.validator_value))}"
        path = list(error.absolute_path)
        if path[:1] == ["datasets"] and path[-1:] == ["source"] and isinstance(error.instance, str):
            close = sources.close_matches(error.instance)
            message += f"; did you mean: {', '.join(close)}?" if close else ""
        return message
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; valid keys: {', '.join(allowed)}"
    if error.validator == "required" and not error.absolute_path and "then" in error.schema_path:
        return "give networks or zoo (or both): none is there"  # the schema's if/then at the top level
    if error.validator == "pattern" and error.schema.get("pattern", "").startswith("^[A-Za-z0-9]"):
        return f"{error.instance!r} is not a valid name (letters, digits, '_' and '-', starting with a letter or digit)"
    return error.message


_JSON_TYPES = {"integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),)}


def _alternatives(schema: dict, root: dict) -> list[dict]:
    """``schema`` with a local ``$ref`` followed, or its ``oneOf``/``anyOf`` branches."""
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return _alternatives(node, root)
    branches = schema.get("oneOf") or schema.get("anyOf")
    return [alt for branch in branches for alt in _alternatives(branch, root)] if branches else [schema]


def _types(schema: dict) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def coerce_command_line_strings(value, schema: dict, root: dict):
    """``value`` with strings read as YAML where the schema wants a number, boolean or null.

    Snakemake parses a nested ``--config`` value with YAML's BaseLoader, so in
    ``--config 'finetune={epochs: 1}'`` every scalar is a string ('1', 'true', 'null').
    Such a string becomes what a config file would have given, where the schema does not
    take it as a string; anything else is left for validation to report.
    """
    alternatives = _alternatives(schema, root)
    if isinstance(value, dict):
        for alt in alternatives:
            if "object" in _types(alt) or "properties" in alt:
                props, extra = alt.get("properties", {}), alt.get("additionalProperties")
                for key, item in value.items():
                    sub = props.get(key, extra if isinstance(extra, dict) else None)
                    if sub is not None:
                        value[key] = coerce_command_line_strings(item, sub, root)
                break
        return value
    if isinstance(value, list):
        for alt in alternatives:
            if "array" in _types(alt) and isinstance(alt.get("items"), dict):
                return [coerce_command_line_strings(item, alt["items"], root) for item in value]
        return value
    if isinstance(value, str):
        types = [t for alt in alternatives for t in _types(alt)]
        if value in ("null", "~") and "null" in types:
            return None
        # A string alternative limited to some words ('all' among numbers) takes only those.
        takes_string = any("string" in _types(alt) and value in alt.get("enum", [value]) for alt in alternatives)
        if types and not takes_string:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            wanted = tuple(c for t in types for c in _JSON_TYPES.get(t, ()))
            if isinstance(parsed, wanted) and not (isinstance(parsed, bool) and "boolean" not in types):
                return parsed
    return value


def load_schema(path: str | os.PathLike) -> dict:
    """The config schema, with what the dataset sources define (the ``source`` choices and
    the options only some sources take) filled in from their registry."""
    with open(path) as f:
        schema = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 20x faster
    entry = schema["properties"]["datasets"]["additionalProperties"]
    entry["properties"] = {**sources.schema_properties(), **entry["properties"]}
    return schema


def _schema_check(validator: jsonschema.protocols.Validator, config: dict) -> None:
    """Validate against the schema (filling defaults); raise :class:`ConfigError` listing every error."""
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(
            f"  {_path(e)}: {_describe(e)}" for e in errors))


def expand_zoo_into_networks(config: dict) -> dict[str, str]:
    """Add the candidates of ``config["zoo"]`` to ``config["networks"]`` (after the hand-written
    ones); return candidate name -> zoo entry key (empty without a zoo).

    Idempotent, since Snakemake may validate the same dict twice: a network of the candidate's
    name that defines the very same network (the same :class:`~transfer_lab.specs.NetworkSpec`)
    is that candidate; one that defines another network is a collision, refused naming both.
    """
    if not config.get("zoo"):
        return {}
    from .specs import NetworkSpec
    from .zoo import expand_zoo_entries

    try:
        expanded = expand_zoo_entries(config["zoo"])
    except ValueError as err:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {line}" for line in str(err).splitlines())) from None
    networks = config.setdefault("networks", {})
    problems, origins = [], {}
    for key, candidates in expanded.items():
        for name, entry in candidates.items():
            origins[name] = key
            if name not in networks:
                networks[name] = entry
            elif NetworkSpec.from_config(networks[name]) != NetworkSpec.from_config(entry):
                problems.append(
                    f"  zoo.{key}: candidate {name!r} ({NetworkSpec.from_config(entry).describe()}) has the name of "
                    f"networks.{name} ({NetworkSpec.from_config(networks[name]).describe()}), another network; "
                    f"rename networks.{name} or narrow zoo.{key}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))
    return origins


def validate_config(config: dict, schema: dict, check_resources: bool = True) -> dict:
    """Validate ``config`` in place, filling defaults; raise :class:`ConfigError` listing every problem.

    A ``zoo`` section is expanded into ``networks`` first (:func:`expand_zoo_into_networks`),
    so its candidates are checked like hand-written networks.
    ``check_resources`` also checks what the schema cannot: that archs and weights
    exist in the installed torchvision/timm, and the dataset keys that depend on the
    source, and a dataset root that is already there (cheaply: a table's header). Whether
    a dataset's files are all in place is checked by ``prepare_dataset``.
    """
    coerce_command_line_strings(config, schema, schema)
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
    _schema_check(validator, config)
    origins = expand_zoo_into_networks(config)
    if origins:
        _schema_check(validator, config)  # the candidates' entries get their defaults, as hand-written ones
    problems = []
    for name, spec in config["datasets"].items():
        if spec.get("download") and sources.get(spec["source"]).fetch is not None:
            # Downloads land in the project, where the workflow's fetch step writes them.
            expected = sources.download_root(name)
            spec.setdefault("root", expected)
            if os.path.normpath(spec["root"]) != expected:
                problems.append(
                    f"  datasets.{name}.root: with download: true the archive is fetched into "
                    f"{expected}/; remove root or set it to {expected}"
                )
    checks = []
    if check_resources:
        from .specs import NetworkSpec, check_network

        def check_network_entry(name: str, entry: dict) -> None:
            check_network(name, NetworkSpec.from_config(entry))

        def check_dataset_keys(name: str, spec: dict) -> None:
            sources.check_dataset(name, sources.dataset_spec(spec), on_disk=False)

        checks = [(check_network_entry, config["networks"]), (check_dataset_keys, config["datasets"])]
    for check, section in checks:
        for name, spec in section.items():
            try:
                check(name, spec)
            except ValueError as err:
                from_zoo = section is config["networks"] and name in origins
                origin = f" (a candidate of zoo.{origins[name]})" if from_zoo else ""
                problems.append(f"  {err}{origin}")
    # Fine-tuning names networks and datasets by their keys.
    finetune = config.get("finetune", {})
    for section in ("networks", "datasets"):
        for name in finetune.get(section, []):
            if name not in config[section]:
                problems.append(
                    f"  finetune.{section}: {name!r} is not a key of {section}; "
                    f"valid: {', '.join(config[section])}"
                )
    if config.get("selection") is not None:
        from .selection import check_keep, check_rungs  # numpy only

        for check, key in ((check_rungs, "rungs"), (check_keep, "keep")):
            try:
                check(config["selection"][key])
            except ValueError as err:
                problems.append(f"  {err}")
    if FINETUNED in config["heads"]:
        problems.append(f"  heads: {FINETUNED!r} is the name of fine-tuned networks (in the comparison, "
                        "and predict.head); give the head another name")
    predict = config.get("predict") or {}
    for key, section in (("network", "networks"), ("dataset", "datasets"), ("head", "heads")):
        valid = head_choices(config[section]) if key == "head" else list(config[section])
        if predict.get(key) is not None and predict[key] not in valid:
            problems.append(f"  predict.{key}: {predict[key]!r} is not in {section}; "
                            f"valid: {', '.join(valid)}")
    # File names join names with '_': no two combinations may spell the same file.
    pairs = itertools.product(config["networks"], config["datasets"])
    triples = itertools.product(config["networks"], config["datasets"], config["heads"])
    for combos in (pairs, triples):
        stems: dict[str, tuple] = {}
        for combo in combos:
            stem = "_".join(combo)
            if stem in stems:
                problems.append(
                    f"  names {stems[stem]} and {combo} give the same file names ({stem}_...); rename one"
                )
            stems[stem] = combo
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(problems))
    return config
