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
        return f"{error.instance!r} is not valid; valid choices: {', '.join(map(str, error.validator_value))}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; valid keys: {', '.join(allowed)}"
    if error.validator == "pattern" and error.schema.get("pattern", "").startswith("^[A-Za-z0-9]"):
        return f"{error.instance!r} is not a valid name (letters, digits, '_' and '-', starting with a letter or digit)"
    return error.message


def load_schema(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def validate_config(config: dict, schema: dict, check_resources: bool = True) -> dict:
    """Validate ``config`` in place, filling defaults; raise :class:`ConfigError` listing every problem.

    ``check_resources`` also checks what the schema cannot: that archs and weights
    exist in the installed torchvision/timm, and the dataset keys that depend on the
    source. Whether a dataset's files are in place is checked by ``prepare_dataset``.
    """
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n" + "\n".join(
            f"  {_path(e)}: {_describe(e)}" for e in errors))
    problems = []
    for name, spec in config["datasets"].items():
        if spec.get("download"):
            # Downloads land in the project, where the workflow's fetch step writes them.
            expected = f"resources/raw/{name}"
            spec.setdefault("root", expected)
            if os.path.normpath(spec["root"]) != expected:
                problems.append(
                    f"  datasets.{name}.root: with download: true the archive is fetched into "
                    f"{expected}/; remove root or set it to {expected}"
                )
    checks = []
    if check_resources:
        from .networks import check_network
        from .sources import check_dataset

        def check_dataset_keys(name: str, spec: dict) -> None:
            check_dataset(name, spec, on_disk=False)

        checks = [(check_network, config["networks"]), (check_dataset_keys, config["datasets"])]
    for check, section in checks:
        for name, spec in section.items():
            try:
                check(name, spec)
            except ValueError as err:
                problems.append(f"  {err}")
    # Fine-tuning names networks and datasets by their keys.
    finetune = config.get("finetune", {})
    for section in ("networks", "datasets"):
        for name in finetune.get(section, []):
            if name not in config[section]:
                problems.append(
                    f"  finetune.{section}: {name!r} is not a key of {section}; "
                    f"valid: {', '.join(config[section])}"
                )
    predict = config.get("predict") or {}
    for key, section in (("network", "networks"), ("dataset", "datasets"), ("head", "heads")):
        if predict.get(key) is not None and predict[key] not in config[section]:
            problems.append(f"  predict.{key}: {predict[key]!r} is not in {section}; "
                            f"valid: {', '.join(config[section])}")
    if str(predict.get("top_k", 1)) == "0":
        problems.append("  predict.top_k: must be at least 1")
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
