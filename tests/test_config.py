"""Config loading: packaged configs, overrides, and clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ich3d.config import Config, load_config, save_config
from ich3d.errors import ConfigError


@pytest.mark.parametrize("name", ["cpu_small", "rsna_256"])
def test_packaged_configs_load_and_round_trip(name: str, tmp_path: Path) -> None:
    config = load_config(name)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_overrides_are_typed_and_nested() -> None:
    config = load_config("cpu_small", ["stages.slice.epochs=7", "model.encoder.name=resnet18", "data.input=bsb25d",
                                       "stages.slice.lr=1e-4"])
    assert config.stages.slice.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    assert config.stages.slice.epochs == 7
    assert config.model.encoder.name == "resnet18"
    assert config.data.in_channels == 9


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"dta": {}}, "unknown config key(s) dta"),
        ({"data": {"imagesize": 64}}, "data.imagesize"),
        ({"data": {"image_size": "big"}}, "'data.image_size': expected a number"),
        ({"data": {"image_size": 64.5}}, "expected an integer"),
        ({"data": {"input": "rgb"}}, "data.input"),
        ({"stages": {"slice": {"lr": -1}}}, "'stages.slice.lr': must be > 0"),
        ({"stages": {"sequence": {"drop_slices": 1.5}}}, "'stages.sequence.drop_slices'"),
        ({"stages": {"sequence": {"augmented_views": 9}}}, "'stages.sequence.augmented_views': must be 0 to 8"),
        ({"stages": {"slice": {"label_smoothing": 0.5}}}, "'stages.slice.label_smoothing': must be in [0, 0.5)"),
        ({"augment": {"elastic": 0.2}}, "'augment.elastic': must be in [0, 0.1]"),
        ({"stages": {"warmup": {}}}, "unknown config key(s) stages.warmup"),
        ({"stages": {"sequence": {}}}, "the slice stage trains the encoder"),
        ({"amp": "yes"}, "'amp': expected true/false"),
    ],
)
def test_bad_values_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(data)
    assert fragment in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not a valid YAML text file"):
        load_config(bad)


def test_defaults_are_valid() -> None:
    assert Config().stages.names() == ["slice"]
    assert list(Config().to_dict()["stages"]) == ["slice"]  # absent stages are left out


@pytest.mark.parametrize(("stage", "key"), [("finetune", "positive_fraction"), ("sequence", "samples_per_epoch"),
                                            ("slice", "crop_len"), ("slice", "drop_slices")])
def test_a_key_of_another_stage_is_an_error(stage: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("rsna_256", [f"stages.{stage}.{key}=0.5"])
    assert f"unknown config key(s) stages.{stage}.{key}" in str(info.value)
    assert f"known keys under stages.{stage}:" in str(info.value)


def test_stages_run_in_their_fixed_order() -> None:
    config = load_config({"stages": {"finetune": {}, "slice": {}, "sequence": {"crop_len": 8}}})
    assert config.stages.names() == ["slice", "sequence", "finetune"]
    assert config.stages.sequence.crop_len == 8 and config.stages.finetune.drop_slices == 0


def test_a_duplicate_yaml_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\nstages:\n  slice:\n    lr: 0.001\n    epochs: 2\n    lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"key 'stages.slice.lr' is given twice \(lines 4 and 6\)"):
        load_config(path)
    path.write_text("seed: 0\nstages:\n  slice:\n    lr: 0.001\n  sequence:\n    lr: 0.1\n")  # same name, two places
    assert load_config(path).stages.slice.lr == 0.001


@pytest.mark.parametrize("size", [100_000, 1025, 15])
def test_an_absurd_image_size_is_refused_before_allocation(size: int) -> None:
    with pytest.raises(ConfigError, match="config key 'data.image_size': must be 16 to 1024 pixels"):
        load_config("cpu_small", [f"data.image_size={size}"])
