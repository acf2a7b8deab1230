"""imgflow.training.search without training: the search space's checks, the study's resume rules, the report."""

from pathlib import Path

import pytest

from imgflow.config import TrainConfig
from imgflow.runtime.errors import ConfigError
from imgflow.training.search import Param, choose, finished, open_study, parse_space, plot_trials, prepare, report_markdown, trials_table


def test_a_space_of_ranges_and_choices_follows_the_fields_types() -> None:
    space = parse_space(
        {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "width": {"low": 8, "high": 32}, "schedule": ["cosine", "plateau"]},
        "spec [search]",
    )
    assert space == (
        Param("learning_rate", low=1e-4, high=1e-2, log=True),
        Param("width", low=8, high=32, integer=True),
        Param("schedule", choices=("cosine", "plateau")),
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "the search space is empty"),
        ({"learnig_rate": [0.1]}, "learnig_rate: not a \\[train\\] field"),
        ({"schedule": ["cosine", "triangle"]}, "schedule must be one of"),
        ({"width": {"low": 0, "high": 8}}, "width.low must be at least 1"),
        ({"dropout": {"low": 0.5, "high": 0.1}}, "low must be below high"),
        ({"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "learning_rate.low must be above 0"),
        ({"schedule": {"low": 1, "high": 2}}, "a range needs a number field"),
        ({"width": {"low": 1}}, "expected a list of choices or a table"),
        ({"width": []}, "an empty list of choices"),
    ],
)
def test_a_bad_space_is_refused_naming_the_entry(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(table, "spec [search]")


def test_trial_zero_is_the_base_and_a_trial_left_running_is_asked_again(tmp_path: Path) -> None:
    space = parse_space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "width": [8, 16]}, "s")
    base = TrainConfig(width=16)
    study = open_study(tmp_path, "s1", seed=0)
    assert prepare(study, space, base) == 0
    first = study.ask()
    assert {p.name: p.suggest(first) for p in space} == {"learning_rate": base.learning_rate, "width": 16}
    study.tell(first, 0.9)
    running = study.ask()
    params = {p.name: p.suggest(running) for p in space}
    # The process dies here; the next run of the same study:
    reopened = open_study(tmp_path, "s1", seed=0)
    assert prepare(reopened, space, base) == 1
    again = reopened.ask()
    assert {p.name: p.suggest(again) for p in space} == params
    reopened.tell(again, 0.8)
    rows = trials_table(reopened, space)
    assert [(r["number"], r["state"]) for r in rows] == [(0, "complete"), (1, "fail"), (2, "complete")]
    assert len(finished(reopened)) == 2
    report = report_markdown("s1", rows, space, rows[0])
    assert "best: trial 0, validation accuracy 0.9000, learning_rate = 0.003, width = 16" in report
    assert "| 1 | fail | - | 0 |" in report
    plot_trials(rows, space, tmp_path / "trials.png")
    assert (tmp_path / "trials.png").stat().st_size > 1000


def _row(number: int, accuracy: float | None, learning_rate: float, state: str = "complete") -> dict:
    return {"number": number, "state": state, "val_accuracy": accuracy, "epochs": 4, "learning_rate": learning_rate}


def test_the_best_trial_is_released_only_when_it_beats_the_specs_configuration_by_more_than_the_noise() -> None:
    space = parse_space({"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}}, "s")
    base = TrainConfig(learning_rate=3e-3)
    # 300 validation images, the spec's configuration at 0.99: one standard error is sqrt(.99 * .01 / 300) = 0.0057.
    rows = [_row(0, 0.99, 3e-3), _row(1, 0.9933, 1e-2), _row(2, None, 5e-2, "pruned"), _row(3, 0.98, 1e-3)]
    best, released, why = choose(rows, space, base, 300)
    assert best["number"] == 1 and released["number"] == 0  # one image better: luck as often as skill
    assert "within the noise" in why and "+0.0033" in why and "0.0057" in why
    rows[1]["val_accuracy"] = 1.0  # three images better
    best, released, why = choose(rows, space, base, 300)
    assert best["number"] == released["number"] == 1 and "the best validation accuracy, +0.0100" in why
    # The same gain on 3,000 images is more than the noise.
    rows[1]["val_accuracy"] = 0.9933
    assert choose(rows, space, base, 3000)[1]["number"] == 1
    # The spec's own configuration is found by its values (it may not be trial 0 after a kill), and
    # when it is the best, or never completed, the best is released.
    rows[0]["state"], rows[0]["val_accuracy"] = "fail", None
    assert choose([*rows, _row(4, 0.995, 3e-3)], space, base, 300)[1]["number"] == 4
    assert "did not complete" in choose(rows, space, base, 300)[2]
    with pytest.raises(ConfigError, match="no trial completed"):
        choose([_row(0, None, 3e-3, "pruned")], space, base, 300)
    report = report_markdown("s", rows, space, best, (rows[0], "why"))
    assert "- released: trial 0, why" in report
