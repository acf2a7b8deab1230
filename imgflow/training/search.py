"""Hyperparameter search over ``[train]`` fields: the search space, the study, the trials' report.

The space is a dataset spec's ``[search]`` section (or a TOML file of the same shape), one entry per
``[train]`` field searched::

    [search]
    learning_rate = {low = 1e-4, high = 1e-2, log = true}   # a range: float or integer as the field is
    width = [16, 24, 32]                                     # a list: one of these values
    schedule = ["cosine", "one_cycle"]

Every bound and choice is checked against the field's type and rule before anything runs.

The study is Optuna's (TPE sampler, median pruner), kept in a journal file under
``<artifacts>/tune/<study>/``, named by what it searches: the dataset's settings, the shards it trains
on, the space and the seed. So a rerun of the same search (after a kill, or with more trials) carries on
the same study: finished trials stay finished, and a trial that was running when its process died is
asked again with the same parameters, which is the same train key, so its training resumes from its
last checkpoint. Trial 0 is the spec's own configuration: the search can only come out at least as
good on the validation split as the default. And ``choose`` keeps the spec's configuration unless a
trial beats it by more than the validation split can tell apart (one standard error): on a few hundred
validation images a gain of one image is luck as often as skill, and a tuner that trades a known
configuration for luck releases a worse model about half the time.

A trial is the train stage with the trial's fields over the spec's, scored on the validation split
(its last epoch's ``val_accuracy``, the best epoch's with early stopping); the pruner sees every
epoch's validation accuracy and may stop a trial early. The test split is never looked at.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imgflow.config import DatasetSpec, TrainConfig
from imgflow.config.checks import check_value
from imgflow.results import StageResult, TrainInfo
from imgflow.runtime.errors import ConfigError
from imgflow.store.fingerprint import stable_hash

_FIELDS = TrainConfig.settings()
_HINTS = typing.get_type_hints(TrainConfig)
DIRECTION: Literal["maximize"] = "maximize"  # validation accuracy


@dataclass(frozen=True)
class Param:
    """One searched ``[train]`` field: a range (``low``..``high``, ``log``-uniform or not) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]


def parse_space(table: Mapping[str, Any], where: str) -> tuple[Param, ...]:
    """The search space of a ``[search]`` table; a ``ConfigError`` naming the entry for anything wrong."""
    if not table:
        raise ConfigError(
            f"{where}: the search space is empty: name [train] fields to search, e.g. learning_rate = {{low = 1e-4, high = 1e-2, log = true}}"
        )
    space = []
    for name, entry in table.items():
        setting = f"{where} {name}"
        if name not in _FIELDS:
            raise ConfigError(f"{setting}: not a [train] field; known: {', '.join(sorted(_FIELDS))}")
        hint, rule = _HINTS[name], TrainConfig.rule(name)
        if isinstance(entry, list):
            if not entry:
                raise ConfigError(f"{setting}: an empty list of choices")
            for value in entry:
                check_value(setting, value, hint, rule)
            space.append(Param(name, choices=tuple(entry)))
            continue
        if not isinstance(entry, dict) or not {"low", "high"} <= set(entry) or not set(entry) <= {"low", "high", "log"}:
            raise ConfigError(
                f"{setting}: expected a list of choices or a table {{low = ..., high = ..., log = true|false}}, got {entry!r}"
            )
        integer = hint is int
        if hint not in (int, float):
            raise ConfigError(
                f"{setting}: a range needs a number field ({name} is {getattr(hint, '__name__', hint)}): give a list of choices"
            )
        for bound in ("low", "high"):
            check_value(f"{setting}.{bound}", entry[bound], hint, rule)
        log = entry.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{setting}.log must be true or false, got {log!r}")
        if not entry["low"] < entry["high"] or (log and entry["low"] <= 0):
            raise ConfigError(f"{setting}: low must be below high" + (" and above 0 on a log scale" if log else ""))
        space.append(Param(name, low=entry["low"], high=entry["high"], log=log, integer=integer))
    return tuple(space)


def read_space(path: Path) -> dict[str, Any]:
    """A search-space file: a TOML table (with or without a ``[search]`` header)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"search space file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"search space file {path} is not valid TOML: {exc}") from None
    return data.get("search", data)


def resolve_space(dataset: DatasetSpec, space: str | None) -> tuple[Param, ...]:
    """The space a tune run searches: the file ``space`` names, else the dataset spec's ``[search]``."""
    if space is not None:
        return parse_space(read_space(Path(space)), f"search space {space}")
    if not dataset.search:
        raise ConfigError(f"dataset {dataset.name} has no [search] section: add one, or name a search-space file with --space")
    return parse_space(dataset.search, f"dataset {dataset.name} [search]")


def study_name(dataset: str, base: TrainConfig, shards: StageResult, space: Sequence[Param], seed: int) -> str:
    """The study's name: what it searches (the settings, the training data, the space, the seed)."""
    return f"{dataset}-{stable_hash([base.model_dump(), shards.fingerprint, [dataclasses.asdict(p) for p in space], seed])[:12]}"


def study_dir(root: Path, name: str) -> Path:
    return root / "tune" / name


def open_study(folder: Path, name: str, seed: int, epochs: int = 2) -> Any:
    """The study in ``folder`` (created on first use): TPE sampler, journal storage, and a median pruner
    that judges a trial only in the second half of its ``epochs``, after three trials have finished
    (the first epochs' validation accuracy says little: batch-norm statistics and warm-up are still
    settling, and an early pruner stopped every trial after its first epoch)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction=DIRECTION,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 2)),
    )


def prepare(study: Any, space: Sequence[Param], base: TrainConfig) -> int:
    """Before asking for trials: trial 0 is the base configuration (a new study), and every trial left
    running by a killed process is failed and asked again with its parameters (so its training resumes).
    Returns how many were requeued."""
    import optuna

    if not study.trials:
        study.enqueue_trial({p.name: getattr(base, p.name) for p in space})
    stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
    return len(stale)


def finished(study: Any) -> list[Any]:
    """Trials that count toward the budget: completed or pruned."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.trials if t.state in states]


def trial_config(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    return base.replace(**params)


def score(result: StageResult) -> float:
    """A trained model's validation accuracy: its last epoch's, or its best epoch's with early stopping."""
    history = json.loads(Path(result.path, "history.json").read_text())
    info = result.info
    assert isinstance(info, TrainInfo), result.stage
    if "val_accuracy" not in history:
        raise ConfigError(f"tuning scores trials on the validation split, and {result.path} has no validation: raise [clean] val_fraction")
    return float(history["val_accuracy"][(info.best_epoch or len(history["val_accuracy"])) - 1])


def report_history(trial: Any, result: StageResult) -> None:
    """Give the trial the per-epoch validation accuracy of a training it did not watch (reused from the
    store), so the pruner compares later trials with its whole curve."""
    history = json.loads(Path(result.path, "history.json").read_text())
    for epoch, value in enumerate(history.get("val_accuracy", []), 1):
        trial.report(value, epoch)


class Pruned(Exception):
    """The pruner stopped this trial (raised from the epoch listener; the training ends)."""


def pruning_listener(trial: Any) -> Any:
    """An ``imgflow.runtime.progress`` epoch listener: reports each epoch's validation accuracy to the trial
    and raises ``Pruned`` when the pruner says so."""

    def listen(epoch: int, metrics: Mapping[str, float]) -> None:
        if "val_accuracy" not in metrics:
            return
        trial.report(metrics["val_accuracy"], epoch)
        if trial.should_prune():
            raise Pruned(f"trial {trial.number} pruned after epoch {epoch} (val_accuracy {metrics['val_accuracy']:.4f})")

    return listen


def trials_table(study: Any, space: Sequence[Param]) -> list[dict[str, Any]]:
    """Every trial: number, state, validation accuracy (None unless complete), epochs seen, parameters."""
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "val_accuracy": t.value if t.state.name == "COMPLETE" else None,
            "epochs": len(t.intermediate_values),
            **{p.name: t.params.get(p.name) for p in space},
        }
        for t in study.trials
    ]


def choose(
    rows: Sequence[Mapping[str, Any]], space: Sequence[Param], base: TrainConfig, val_records: int
) -> tuple[Mapping[str, Any], Mapping[str, Any], str]:
    """``(best, released, why)``: the best complete trial, the trial whose configuration is released, and
    why that one. The best trial is released only when it beats the spec's own configuration (the first
    complete trial with the base's values) by more than one standard error of an accuracy on
    ``val_records`` images, sqrt(p(1-p)/n), at least one image's worth; otherwise the spec's configuration
    is (see the module's docstring). Rows are ``trials_table``'s."""
    done = [r for r in rows if r["val_accuracy"] is not None]
    if not done:
        raise ConfigError("no trial completed: every trial was pruned or failed, so there is no configuration to release")
    best = max(done, key=lambda r: r["val_accuracy"])  # ties: the earliest
    own = next((r for r in done if all(_same(r[p.name], getattr(base, p.name)) for p in space)), None)
    if own is None:
        return best, best, "the best validation accuracy (the spec's own configuration did not complete)"
    if own is best:
        return best, best, "the best validation accuracy, and it is the spec's own configuration"
    p = own["val_accuracy"]
    error = math.sqrt(max(p * (1 - p), 1 / val_records) / val_records)
    gain = best["val_accuracy"] - p
    margin = f"{gain:+.4f} over the spec's configuration (trial {own['number']}, {p:.4f}); one standard error on {val_records} validation images is {error:.4f}"
    if gain > error:
        return best, best, f"the best validation accuracy, {margin}"
    return best, own, f"the spec's own configuration: the best trial's gain is within the noise ({margin})"


def _same(value: Any, base: Any) -> bool:
    if isinstance(value, float) or isinstance(base, float):
        return math.isclose(value, base, rel_tol=1e-9)
    return value == base


def report_markdown(
    name: str,
    rows: Sequence[Mapping[str, Any]],
    space: Sequence[Param],
    best: Mapping[str, Any] | None,
    released: tuple[Mapping[str, Any], str] | None = None,
) -> str:
    names = [p.name for p in space]
    lines = [
        f"# Tuning: {name}",
        "",
        (
            f"- trials: {len(rows)} ({sum(r['state'] == 'complete' for r in rows)} complete, "
            f"{sum(r['state'] == 'pruned' for r in rows)} pruned, {sum(r['state'] == 'fail' for r in rows)} failed or interrupted)"
        ),
    ]
    if best is not None:
        lines.append(
            f"- best: trial {best['number']}, validation accuracy {best['val_accuracy']:.4f}, "
            + ", ".join(f"{n} = {best[n]}" for n in names)
        )
    if released is not None:
        lines.append(f"- released: trial {released[0]['number']}, {released[1]}")
    lines += ["", "| trial | state | val accuracy | epochs | " + " | ".join(names) + " |", "|---" * (4 + len(names)) + "|"]
    for row in rows:
        value = f"{row['val_accuracy']:.4f}" if row["val_accuracy"] is not None else "-"
        lines.append(f"| {row['number']} | {row['state']} | {value} | {row['epochs']} | " + " | ".join(_show(row[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def plot_trials(rows: Sequence[Mapping[str, Any]], space: Sequence[Param], path: Path) -> None:
    """Validation accuracy against each searched parameter, one panel each (complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["val_accuracy"] is not None]
    columns = min(3, len(space))
    lines = math.ceil(len(space) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    for axis, param in zip(axes.flat, space, strict=False):
        values = [r[param.name] for r in done]
        x = [str(v) for v in values] if param.choices else values
        axis.scatter(x, [r["val_accuracy"] for r in done], color="#3b6fb6")
        if param.log:
            axis.set_xscale("log")
        axis.set_xlabel(param.name)
        axis.set_ylabel("validation accuracy")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(space) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=96)
    plt.close(figure)
