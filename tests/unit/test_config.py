from pathlib import Path

import pytest

from imgflow.config import build_run_config, resolve_dataset
from imgflow.runtime.errors import ConfigError


def test_named_dataset_reads_its_toml() -> None:
    spec = resolve_dataset("mnist5k")
    assert spec.name == "mnist5k" and spec.source == "sample:mnist5k"
    clean = build_run_config("mnist5k").clean
    assert clean.image_size == (28, 28) and clean.channels == 1
    assert clean.test_fraction >= 0.21  # >= 1,000 of the 5,000 digits held out


def test_source_spec_gets_defaults_and_a_name() -> None:
    assert resolve_dataset("tfds:mnist:3.0.1").name == "mnist"
    assert resolve_dataset("sample:digits").name == "digits"


def test_toml_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('source = "sample:digits"\n[clean]\nchannels = 1\n[train]\nepochs = 3\n')
    cfg = build_run_config(str(path), tmp_path)
    assert cfg.dataset.name == "mine" and cfg.train.epochs == 3 and cfg.clean.channels == 1


def test_every_stage_section_is_read(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    path.write_text(
        'source = "sample:digits"\n[clean]\nimage_size = [8, 8]\n[shard]\nrecords_per_shard = 50\n'
        "[train]\nwidth = 8\n[gate]\ntolerance = 0.1\n[export]\nopset = 16\n"
    )
    cfg = build_run_config(str(path), tmp_path)
    assert cfg.clean.image_size == (8, 8) and cfg.shard.records_per_shard == 50 and cfg.train.width == 8
    assert cfg.gate.tolerance == 0.1 and cfg.export.opset == 16


def test_cli_values_override_dataset_defaults(tmp_path: Path) -> None:
    cfg = build_run_config("digits", tmp_path, epochs=2, min_accuracy=0.5, limit=100)
    assert cfg.train.epochs == 2 and cfg.gate.min_accuracy == 0.5 and cfg.download.limit == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"min_accuracy": 1.5}, r"\[gate\] min_accuracy must be between 0 and 1, got the number 1.5"),
        ({"limit": 0}, "limit must be at least 1, got the integer 0"),
        ({"overrides": {"train": {"model": "vit"}}}, "model must be one of 'cnn', 'resnet9', 'transfer', got the string 'vit'"),
        ({"overrides": {"shard": {"size": 1}}}, r"\[shard\]: unknown setting.*size"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_run_config("digits", tmp_path, **kwargs)


def test_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'.*mnist5k"):
        resolve_dataset("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source = \n", "not valid TOML"),
        ("name = 'x'\n", "has no 'source'"),
        ("source = 'sample:digits'\ncolour = 1\n", "unknown key.*colour"),
        ("source = 'sample:digits'\n[clean]\nsize = 3\n", "unknown setting.*size"),
        # A value of the wrong type showed a TypeError traceback; now the setting and its type are named.
        ("source = 'sample:digits'\n[train]\nepochs = '5'\n", r"\[train\] epochs must be an integer, got the string '5'"),
        ("source = 'sample:digits'\n[train]\nlearning_rate = nan\n", "learning_rate must be a finite number, got the number nan"),
        ("source = 'sample:digits'\n[train]\nclass_weights = 1\n", "class_weights must be true or false, got the integer 1"),
        ("source = 'sample:digits'\n[clean]\nimage_size = [28]\n", "image_size must be a list of 2 integers, got the list \\[28\\]"),
        ("source = 'sample:digits'\n[clean]\nclass_names = ['a', 1]\n", "class_names must be a list of strings"),
        ("source = 'sample:digits'\n[clean]\ntest_fraction = 0.5\nval_fraction = 0.5\n", "test_fraction \\+ val_fraction must be below 1"),
        ("source = 'sample:digits'\n[train]\njit_compile = 'yes'\n", "jit_compile must be one of 'auto', true, false"),
        ("source = 'sample:digits'\ntrain = 3\n", r"\[train\] must be a table of settings, got the integer 3"),
        ("source = 5\n", "source must be a string, got the integer 5"),
        ("source = 'mnist'\n", "source must be a source spec"),
        ("source = 'sample:digits'\nname = '../models'\n", "name must be letters, digits"),
        ("source = 'sample:digits'\nlimit = 2.5\n", "limit must be an integer, got the number 2.5"),
        ("source = 'sample:digits'\noptions = 'x'\n", "options must be a table, got the string 'x'"),
        # Found by tests/fuzz: a TOML date in [options] broke the spec's JSON key with a TypeError.
        ("source = 'sample:digits'\n[options]\nwhen = 2024-05-01\n", "options.when must be a string, a number, true or false"),
    ],
)
def test_bad_toml_is_refused_with_the_file_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_dataset(str(path))
    assert str(path) in str(info.value)


def test_every_default_passes_its_own_rules() -> None:
    from imgflow.config import SECTIONS, parse_section

    for section, cls in SECTIONS.items():
        defaults = {name: getattr(cls(), name) for name in cls.settings()}
        assert parse_section(cls, defaults, section) == cls()


def test_a_name_from_a_path_is_a_safe_folder_name() -> None:
    assert resolve_dataset("parquet:/data/my photos (2024).parquet").name == "my-photos--2024-"


def test_download_timeout_is_read_checked_and_keys_nothing(tmp_path: Path) -> None:
    from imgflow.stages.download import DOWNLOAD

    path = tmp_path / "net.toml"
    path.write_text('source = "sample:digits"\n[download]\ntimeout = 5\n')
    cfg = build_run_config(str(path), tmp_path)
    assert cfg.download.timeout == 5
    default = build_run_config("sample:digits", tmp_path).download
    assert default.timeout == 60 and DOWNLOAD.key(cfg.download, {}) == DOWNLOAD.key(default, {})
    path.write_text('source = "sample:digits"\n[download]\ntimeout = "soon"\n')
    with pytest.raises(ConfigError, match=r"\[download\] timeout must be a finite number, got the string 'soon'"):
        build_run_config(str(path), tmp_path)


def test_configs_are_frozen_strict_pydantic_models_checked_however_they_are_made() -> None:
    from pydantic import ValidationError

    from imgflow.config import CleanConfig, TrainConfig

    for bad in ({"epochs": 0}, {"epochs": 5.0}, {"class_weights": 1}, {"colour": 1}, {"learning_rate": float("nan")}):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)
    config = TrainConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.epochs = 3  # type: ignore[misc]
    assert config.replace(epochs=3).epochs == 3 and config.epochs == 15
    with pytest.raises(ValidationError, match="dropout"):
        config.replace(dropout=1.5)
    with pytest.raises(ValidationError, match=r"test_fraction \+ val_fraction must be below 1"):
        CleanConfig(test_fraction=0.5, val_fraction=0.5)
