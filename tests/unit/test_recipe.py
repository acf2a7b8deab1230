"""The recipe's choices (``imgflow.training.recipe.choose``) for given data statistics and probe speeds."""

from __future__ import annotations

import math

import keras
import pytest

from imgflow.config import TrainConfig, build_run_config
from imgflow.config.checks import parse_duration
from imgflow.runtime.errors import ConfigError
from imgflow.training.budget import reserve_seconds, training_seconds
from imgflow.training.models import make_model
from imgflow.training.recipe import choose
from imgflow.training.sizing import DataStats, Speeds, cnn_macs, minimum_epochs, resnet9_macs

# A fast 2-core machine and a CPU-limited one, as the probe would measure them (seconds per training
# image: a fixed part and a part per multiply).
FAST = Speeds(overhead=2e-5, per_mac=2.3e-11)
SLOW = Speeds(overhead=1e-4, per_mac=1.2e-10)
# mirror/turn: the share of classes whose mean image looks the same mirrored/turned (as measured:
# Fashion-MNIST 7 of 10, the MNIST sample 0 of 10).
FASHION = DataStats(28, 28, 1, (5600,) * 10, 3500, 10500, mirror=0.6, turn=0.1)
DIGITS = DataStats(28, 28, 1, (380,) * 10, 300, 1050, mirror=0.0, turn=0.0)
PHOTOS = DataStats(300, 300, 1, (1200, 900, 700, 100), 150, 450, mirror=1.0, turn=0.75)
WITH_FEATURES = Speeds(overhead=2e-5, per_mac=2.3e-11, features={224: 0.033, 192: 0.025, 160: 0.018, 128: 0.012})


def test_durations_parse_and_bad_ones_are_refused() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("600") == 600
    assert parse_duration("2.5m") == 150
    for bad in ("", "15 minutes", "m", "0s", "-5m", "5ms"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_bad_budget_in_a_spec_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"budget must be a duration such as \"15m\""):
        build_run_config("mnist5k", budget="fifteen minutes")
    cfg = build_run_config("mnist5k", budget="15m")
    assert cfg.train.budget == "15m"
    assert "budget" not in cfg.fixed and {"epochs", "batch_size", "learning_rate"} <= set(cfg.fixed)


def test_the_recipes_record_cannot_be_set_by_a_spec() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        build_run_config("mnist5k", overrides={"train": {"plan": ["mine"]}})


def test_training_gets_the_budget_less_the_data_stages_and_the_reserve() -> None:
    assert training_seconds(900, 60, 2.0) == pytest.approx(900 - 60 - reserve_seconds(900, 2.0))
    assert training_seconds(60, 100, 2.0) == 0.0
    # A CPU quota keeps more for validate and export: their work is CPU time.
    assert reserve_seconds(900, 0.4) > 1.5 * reserve_seconds(900, 2.0)


def _keras_macs(model: keras.Model) -> int:
    """Multiplies of one image through ``model``'s convolutions and dense layers, from Keras' own shapes."""
    counted = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, wide = layer.output.shape[1:3]
            kh, kw, cin, cout = layer.kernel.shape
            counted += height * wide * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            counted += layer.kernel.shape[0] * layer.kernel.shape[1]
    return counted


def test_multiplies_are_counted_as_keras_builds_the_cnn() -> None:
    for shape, width in (((28, 28, 1), 16), ((64, 64, 3), 32), ((96, 96, 1), 24)):
        assert cnn_macs(shape[:2], shape[2], width, 10) == _keras_macs(make_model(shape, 10, width=width))


def test_small_data_is_planned_more_passes_than_large() -> None:
    assert minimum_epochs(60_000) == 12
    assert minimum_epochs(4_000) > minimum_epochs(60_000)
    assert minimum_epochs(100) == 40


def test_a_fast_machine_buys_a_wider_cnn_than_a_slow_one() -> None:
    fast = choose(FASHION, 700, FAST, {})
    slow = choose(FASHION, 700, SLOW, {})
    assert fast.settings["model"] == slow.settings["model"] == "cnn"
    assert fast.settings["width"] > slow.settings["width"]
    for plan in (fast, slow):
        assert plan.settings["width"] % 8 == 0
        assert plan.settings["schedule"] == "linear"
        assert plan.seconds <= 700  # the plan fits the time it was given
    assert fast.seconds > 0.6 * 700  # and fills it


def test_the_time_is_filled_but_not_past_a_few_times_what_the_data_needs() -> None:
    plan = choose(DIGITS, 3600, FAST, {})
    need = minimum_epochs(DIGITS.train_records)
    assert plan.settings["width"] == 16  # the widest few images deserve: 3,800 of them, 6,000 per 32 channels
    passes = plan.settings["epochs"] * plan.settings["steps_per_epoch"] / math.ceil(DIGITS.train_records / 128)
    assert passes == pytest.approx(3 * need, rel=0.02)
    assert any("capped" in line for line in plan.reasons)
    assert plan.settings["epochs"] == 20  # in 20 longer epochs: a validation and a checkpoint each


def test_augmentation_follows_the_datas_symmetry() -> None:
    assert choose(FASHION, 700, FAST, {}).settings["flip"] == "horizontal"
    digits = choose(DIGITS, 700, FAST, {})
    assert digits.settings["flip"] == "none" and digits.settings["translate"] > 0
    inspection = choose(PHOTOS, 700, FAST, {"model": "cnn"})
    assert inspection.settings["flip"] == "both"  # but a candidate, measured against none:
    assert any(c.name.endswith("-no-flips") and c.settings["flip"] == "none" for c in inspection.candidates)


def test_class_weights_are_a_candidate_the_race_measures_not_a_rule() -> None:
    imbalanced = choose(PHOTOS, 700, FAST, {"model": "cnn"})
    assert imbalanced.settings["class_weights"] is False  # they trade the gate's accuracy for balanced accuracy
    names = [c.name for c in imbalanced.candidates]
    assert names[0].startswith("cnn-") and any(n.endswith("+class_weights") for n in names)
    weighted = next(c for c in imbalanced.candidates if c.name.endswith("+class_weights"))
    assert weighted.settings["class_weights"] is True
    assert not choose(FASHION, 700, FAST, {}).candidates  # balanced, no features, no doubt about flips: nothing to race
    assert not any("class_weights" in c.name for c in choose(PHOTOS, 700, FAST, {"model": "cnn", "class_weights": True}).candidates)


def test_large_images_shrink_inside_the_cnn() -> None:
    plan = choose(PHOTOS, 700, FAST, {"model": "cnn"})
    assert plan.settings["input_size"] in (64, 96, 128)


def test_photographs_race_imagenet_features_fine_tuning_and_a_network_from_scratch() -> None:
    plan = choose(PHOTOS, 2400, WITH_FEATURES, {})
    names = [c.name for c in plan.candidates]
    assert names[:3] == ["lite0-tuned-224px", "lite0-frozen-224px", names[2]] and names[2].startswith("cnn-")
    frozen, tuned = plan.candidates[1], plan.candidates[0]
    assert frozen.settings["freeze_epochs"] == frozen.settings["epochs"] and frozen.settings["translate"] == 0.0
    assert frozen.fixed_seconds > 0 and frozen.max_passes  # features once, then a head that learns in few passes
    assert 0 < tuned.settings["freeze_epochs"] < tuned.settings["epochs"] and tuned.settings["backbone_weights"] == "imagenet"
    assert plan.settings == {k: v for k, v in tuned.settings.items()}  # the first candidate's settings
    assert any(line.startswith("a race of") for line in plan.reasons)
    # Less time: fine-tuning at a smaller size, then none, then smaller features; much less: the CNN alone.
    assert choose(PHOTOS, 1200, WITH_FEATURES, {}).candidates[0].name == "lite0-tuned-160px"
    assert choose(PHOTOS, 700, WITH_FEATURES, {}).candidates[0].name == "lite0-frozen-224px"
    assert choose(PHOTOS, 200, WITH_FEATURES, {}).settings["backbone_size"] < 224  # and alone: no time to race
    assert choose(PHOTOS, 40, WITH_FEATURES, {}).settings["model"] == "cnn"
    # Glyphs get the features as a candidate at the smallest size, after the CNN; a machine without the weights, none.
    glyphs = [c.name for c in choose(FASHION, 3600, WITH_FEATURES, {}).candidates]
    assert glyphs[0].startswith("cnn-") and "lite0-frozen-128px" in glyphs and not any("tuned" in n for n in glyphs)
    assert not any(c.name.startswith("lite0") for c in choose(PHOTOS, 700, FAST, {}).candidates)
    # With text too: the head learns the text tower on the cached features and token ids.
    assert choose(PHOTOS, 700, WITH_FEATURES, {"text": True}).settings["model"] == "transfer"


def test_fields_the_spec_sets_win_and_the_plan_works_around_them() -> None:
    fixed = {"width": 24, "epochs": 5, "flip": "none", "batch_size": 64}
    plan = choose(FASHION, 700, FAST, fixed)
    assert not set(fixed) & set(plan.settings)  # none of them is chosen again
    assert not choose(PHOTOS, 2400, WITH_FEATURES, {"epochs": 5}).candidates  # how long to train is the spec's: no race
    assert any("epochs = 5: fixed" in line for line in plan.reasons)
    assert "width = 24" in " ".join(plan.reasons)
    assert plan.settings["learning_rate"] > 0


def test_every_setting_the_recipe_chooses_is_a_train_setting() -> None:
    fields = set(TrainConfig.model_fields)
    for stats, speeds in ((FASHION, FAST), (PHOTOS, WITH_FEATURES), (PHOTOS, SLOW)):
        plan = choose(stats, 700, speeds, {})
        assert set(plan.settings) <= fields
        assert all(set(c.settings) <= fields for c in plan.candidates)


def test_the_residual_network_is_chosen_for_large_data_when_it_fits() -> None:
    deep = Speeds(overhead=2e-5, per_mac=2.3e-11, resnet_overhead=5e-5)
    assert choose(FASHION, 700, deep, {}).settings["model"] == "resnet9"
    assert choose(DIGITS, 700, deep, {}).settings["model"] == "cnn"  # too little data for its depth
    slow = Speeds(overhead=1e-4, per_mac=1.2e-10, resnet_overhead=3e-4)
    assert choose(FASHION, 700, slow, {}).settings["model"] == "cnn"  # too slow a machine for it
    assert choose(FASHION, 700, deep, {"model": "cnn"}).settings.get("model") is None  # fixed: not chosen again


def test_multiplies_are_counted_as_keras_builds_the_residual_network() -> None:
    from imgflow.training.models import make_resnet9

    for shape, width in (((28, 28, 1), 16), ((64, 64, 3), 24)):
        model = make_resnet9(shape, 10, width=width)
        assert resnet9_macs(shape[:2], shape[2], width, 10) == _keras_macs(model)


def test_an_unreadable_probe_cache_is_measured_again_not_trusted(tmp_path, monkeypatch, capsys) -> None:
    from imgflow.training import probe

    monkeypatch.setenv("IMGFLOW_CACHE", str(tmp_path))
    stats = DataStats(8, 8, 1, (40, 40), 10, 10)
    first = probe.measure(stats)
    assert first is not None and first.overhead > 0 and first.per_mac >= 0
    assert probe.measure(stats, run=False) == first  # cached: planning needs no measurement
    (cached,) = (tmp_path / "probe").glob("*.json")
    cached.write_text('{"overhead": ')  # a truncated file
    assert probe.measure(stats, run=False) is None
    assert "cannot be read" in capsys.readouterr().out
    assert probe.measure(stats) is not None


def test_few_images_get_no_wide_network_however_long_the_budget() -> None:
    small = DataStats(64, 64, 3, (300,) * 10, 500, 1000)
    assert choose(small, 3600, FAST, {"model": "cnn"}).settings["width"] <= 16
    medium = DataStats(64, 64, 3, (900,) * 10, 500, 1000)
    assert choose(medium, 3600, FAST, {"model": "cnn"}).settings["width"] == 48


def test_a_spec_that_asks_for_a_transfer_model_races_only_backbones() -> None:
    plan = choose(PHOTOS, 2400, WITH_FEATURES, {"model": "transfer"})
    assert [c.name.split("-")[0] for c in plan.candidates] == ["lite0", "lite0"]
    assert all("model" not in c.settings for c in plan.candidates)  # fixed by the spec: never chosen again
