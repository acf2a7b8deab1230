"""The race a budgeted run trains: successive halving over the recipe's candidates.

The recipe (``imgflow.training.recipe``) cannot know which of several models learns this data best in
the time: ImageNet features win on photographs and lose on Fashion-MNIST, and fine-tuning wins where
frozen features underfit. So it names candidates, and the race measures them (successive halving:
Jamieson and Talwalkar 2016; the rungs of Hyperband and ASHA):

- every candidate trains for the first rung (an equal share of ``RUNG_SHARE`` of the training time);
- each is scored on the validation split by the gate's metric (its best epoch);
- the better half goes on to the next rung, continuing from its own weights, until one is left;
- that one trains for the rest of the time, continuing again, until the time is spent or its
  validation figure stops improving (``patience``: a third of its epochs, at least ``PATIENCE``,
  without a better one; its last epochs, at the lowest rates, are often its best);
- time it leaves (``LEFTOVER`` of it or more: a head on frozen features learns what it can in a few
  dozen passes) goes to the runners-up, best first, each continuing from its own weights, and the best
  validation figure after its last rung wins.

The first rung is also each candidate's speed measurement here: its later rungs are planned from the
seconds a pass over the data took in it, not from the speed probe's estimate. ``run`` decides who
trains, for how long, and who wins, through a ``Trainer`` (tested without TensorFlow);
``train_race`` is the train stage's race, each rung a ``imgflow.training.loop.fit_model`` of its own.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imgflow.config import TrainConfig
from imgflow.results import ShardInfo, StageResult, TrainInfo

RUNG_SHARE = 0.2  # of the training time, each rung before the last (split among its candidates)
HALVING = 2  # each rung keeps the better 1/HALVING of its candidates
PATIENCE = 3  # the last rung stops after at least this many epochs without a better validation figure
MIN_SHARE = 0.4  # the least share of the time left for the winner: fewer candidates race when rungs would take more
LEFTOVER = 0.1  # a share of the time the winner left unused that the runners-up train on in


@dataclass(frozen=True)
class Candidate:
    """A model the race may train: its ``[train]`` settings, the estimated seconds of one pass over the
    train split (``pass_seconds``), what it pays once before its first pass (``fixed_seconds``: a
    frozen backbone's features), at most how many passes are worth training (``max_passes``: a head on
    frozen features learns what it can in a few dozen), and why the recipe entered it."""

    name: str
    settings: Mapping[str, Any]
    pass_seconds: float
    fixed_seconds: float = 0.0
    max_passes: float | None = None
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": dict(self.settings),
            "pass_seconds": self.pass_seconds,
            "fixed_seconds": self.fixed_seconds,
            "max_passes": self.max_passes,
            "why": self.why,
        }

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Candidate:
        return cls(**record)


@dataclass(frozen=True)
class Rung:
    """One candidate's rung: its validation ``score`` (best epoch), the wall seconds it took, the
    epochs and passes over the data it trained, whether its score was still improving at its end, why it
    stopped, and where its model is (the next rung starts from it)."""

    candidate: str
    rung: int
    score: float
    seconds: float
    epochs: int
    passes: float
    improving: bool
    stopped: str
    model: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Trainer(Protocol):
    def __call__(self, candidate: Candidate, rung: int, seconds: float, passes: float, start: Rung | None, final: bool) -> Rung:
        """Train ``candidate`` for its ``rung``: ``passes`` over the data within ``seconds``, from
        ``start``'s model (None: from its first weights); ``final``: the winner's last rung, which
        stops early once validation stops improving."""
        ...


@dataclass
class Race:
    """The race's record: every rung in the order run, the candidates, and the winner."""

    candidates: list[Candidate]
    metric: str
    rungs: list[Rung] = field(default_factory=list)
    winner: str | None = None
    reason: str = ""

    def last(self, name: str) -> Rung | None:
        return next((rung for rung in reversed(self.rungs) if rung.candidate == name), None)

    def rungs_of(self, name: str) -> list[Rung]:
        return [rung for rung in self.rungs if rung.candidate == name]

    def entries(self) -> list[dict[str, Any]]:
        """One entry per candidate: its best validation figure as ``val_<metric>``, its seconds and epochs in
        all, its rungs, and whether it won (the summary's ``budget.race``)."""
        out = []
        for candidate in self.candidates:
            own = self.rungs_of(candidate.name)
            out.append(
                {
                    "candidate": candidate.name,
                    "why": candidate.why,
                    f"val_{self.metric}": round(max((rung.score for rung in own), default=float("nan")), 4),
                    "seconds": round(sum(rung.seconds for rung in own), 1),
                    "epochs": sum(rung.epochs for rung in own),
                    "rungs": [
                        {"rung": r.rung, f"val_{self.metric}": round(r.score, 4), "seconds": round(r.seconds, 1), "epochs": r.epochs}
                        for r in own
                    ],
                    "winner": candidate.name == self.winner,
                }
            )
        return out


def entered(candidates: list[Candidate], seconds: float) -> list[Candidate]:
    """The candidates that race in ``seconds``: the first ones (the recipe lists its preferred first)
    while the rungs before the last, and what the candidates pay once (their ``fixed_seconds``), leave
    the winner ``MIN_SHARE`` of the time."""
    kept = list(candidates)
    while len(kept) > 1 and 1 - RUNG_SHARE * rungs_before_last(len(kept)) - sum(c.fixed_seconds for c in kept) / seconds < MIN_SHARE:
        kept.pop()
    return kept


def rungs_before_last(candidates: int) -> int:
    """How many rungs halving ``candidates`` takes down to one."""
    return 0 if candidates <= 1 else math.ceil(math.log(candidates, HALVING) - 1e-9)


def run(
    candidates: list[Candidate],
    seconds: float,
    train: Trainer,
    metric: str,
    clock: Callable[[], float],
    say: Callable[[str], None] = print,
) -> Race:
    """Race ``candidates`` in ``seconds`` of training; ``clock`` reads the seconds spent so far (of
    training, not of the run); the winner's last rung gets what is left. Ties go to the candidate the
    recipe listed first."""
    race = Race(list(candidates), metric)
    survivors = list(candidates)
    rung = 0
    measured: dict[str, float] = {}  # seconds a pass, from the candidate's first rung
    while len(survivors) > 1:
        share = RUNG_SHARE * seconds / len(survivors)
        for candidate in survivors:
            start = race.last(candidate.name)
            fixed = candidate.fixed_seconds if start is None else 0.0  # paid on top of its share (``entered`` counted it)
            passes = _passes(candidate, share, measured.get(candidate.name))
            say(
                f"race: rung {rung + 1}, {candidate.name}: {passes:.1f} passes in about {share + fixed:.0f} s "
                f"({max(seconds - clock(), 0):.0f} s of training left)"
            )
            done = train(candidate, rung, share + fixed, passes, start, final=False)
            race.rungs.append(done)
            if start is None and done.passes > 0:
                measured[candidate.name] = max(done.seconds - candidate.fixed_seconds, 1e-3) / done.passes
            say(f"race: rung {rung + 1}, {candidate.name}: val_{metric} {done.score:.4f} in {done.seconds:.0f} s ({done.epochs} epochs)")
        order = sorted(survivors, key=lambda c: (-_score(race.last(c.name)), candidates.index(c)))
        keep = math.ceil(len(survivors) / HALVING)
        say(
            f"race: after rung {rung + 1}: "
            + ", ".join(f"{c.name} {_score(race.last(c.name)):.4f}" for c in order)
            + f"; {', '.join(c.name for c in order[:keep])} go{'es' * (keep == 1)} on"
        )
        survivors = order[:keep]
        rung += 1
    winner = survivors[0]
    race.winner = winner.name
    previous = race.last(winner.name)
    left = max(seconds - clock(), 0.0)
    race.reason = (
        f"{winner.name} had the best val_{metric} ({_score(previous):.4f}) of {len(candidates)} candidates"
        if previous is not None
        else f"{winner.name} was the only candidate that fits the time"
    )
    fixed = winner.fixed_seconds if previous is None else 0.0
    passes = _passes(winner, max(left - fixed, 0.0), measured.get(winner.name))
    say(f"race: {race.reason}; it trains on for {left:.0f} s ({passes:.1f} passes)")
    race.rungs.append(train(winner, rung, left, passes, previous, final=True))
    # Time the winner could not use (its validation figure stopped improving, or a head on frozen
    # features learned what it could): the runners-up, best first, train on in it from their own
    # weights, and the best validation figure after its last rung wins.
    runners = sorted((c for c in candidates if c is not winner), key=lambda c: (-_score(race.last(c.name)), candidates.index(c)))
    finished = [winner]
    for runner in runners:
        left = seconds - clock()
        if left < LEFTOVER * seconds:
            break
        start = race.last(runner.name)
        assert start is not None, runner.name  # every candidate ran the first rung
        passes = _passes(runner, left, measured.get(runner.name))
        say(f"race: {winner.name} stopped with {left:.0f} s left: {runner.name} trains on in them ({passes:.1f} passes)")
        race.rungs.append(train(runner, start.rung + 1, left, passes, start, final=True))
        finished.append(runner)
    best = min(finished, key=lambda c: (-_score(race.last(c.name)), finished.index(c)))
    if best is not winner:
        race.winner = best.name
        race.reason = (
            f"{best.name} had the best val_{metric} ({_score(race.last(best.name)):.4f}) after training on in the time "
            f"{winner.name} left (which reached {_score(race.last(winner.name)):.4f})"
        )
    return race


def patience(epochs: int) -> int:
    """Epochs without a better validation figure that end the winner's last rung of ``epochs``: a third
    of them, at least ``PATIENCE`` (a linear schedule's last epochs, at its lowest rates, often gain
    the most, and a validation split's noise can hide a gain for an epoch or two)."""
    return max(PATIENCE, math.ceil(epochs / 3))


def _passes(candidate: Candidate, seconds: float, measured: float | None) -> float:
    """Passes over the data that ``seconds`` buy ``candidate`` (at least a tenth of one)."""
    passes = seconds / (measured or candidate.pass_seconds)
    if candidate.max_passes is not None:
        passes = min(passes, candidate.max_passes)
    return max(passes, 0.1)


def _score(rung: Rung | None) -> float:
    return -1.0 if rung is None or math.isnan(rung.score) else rung.score


def train_race(out_dir: Path, config: TrainConfig, shards: StageResult, chosen: Any, strategy: Any) -> tuple[Any, TrainInfo]:
    """The recipe's candidates raced (``imgflow.training.race``), each rung a training of its own in this
    build's scratch (``race/<candidate>-r<rung>/``: its checkpoints, its model, and ``rung.json`` once
    done, so a killed race resumes at the rung it was in); the winner's last rung's model, history,
    curves and TensorBoard events become this output."""
    import keras

    from imgflow.store.files import write_json_atomic
    from imgflow.store.scratch import scratch_dir
    from imgflow.training.loop import fit_model, private_keras_seeds
    from imgflow.training.models import load_model

    assert isinstance(shards.info, ShardInfo), shards.stage
    assert config.deadline is not None, "a race runs under a budget"
    records = shards.info.splits["train"].records
    work = scratch_dir(out_dir) / "race"
    started = time.monotonic()
    for line in config.plan:  # the budget's plan and the candidates, in the log before the race starts
        print(line, flush=True)

    def train_rung(candidate: Candidate, rung: int, seconds: float, passes: float, start: Rung | None, final: bool) -> Rung:
        folder = work / f"{candidate.name}-r{rung}"  # its checkpoints, model and outputs
        record = folder / "rung.json"
        if not final and record.is_file():
            done = Rung(**json.loads(record.read_text()))
            print(f"race: reusing {candidate.name}'s finished rung {rung + 1} from {folder}", flush=True)
            return done
        rung_config = _rung_config(config, candidate, records, seconds, passes, start is not None, final)
        began = time.monotonic()
        keras.utils.clear_session()
        written = folder / "out"
        written.mkdir(parents=True, exist_ok=True)
        with private_keras_seeds(config.seed):
            model, info = fit_model(
                written,
                rung_config,
                shards,
                chosen,
                strategy,
                checkpoints=folder,
                start=Path(start.model) if start else None,
                stage_root=out_dir.parent,
            )
        model.save(folder / "model.keras")
        scores = json.loads((written / "history.json").read_text()).get(f"val_{config.select_by}") or [float("nan")]
        kept = (info.best_epoch or len(scores)) - 1
        steps = rung_config.steps_per_epoch
        # The passes it trained at its rate: a fine-tuned candidate's head epochs on frozen features
        # cost next to nothing and would make its passes look cheap.
        head = rung_config.freeze_epochs or 0 if steps else 0
        done = Rung(
            candidate.name,
            rung,
            float(scores[kept]),
            round(time.monotonic() - began, 1),
            info.epochs,
            round(max(info.epochs - head, 0) * steps * rung_config.batch_size / records, 2) if steps else float(info.epochs),
            kept == len(scores) - 1,
            info.stopped or "",
            str(folder / "model.keras"),
        )
        if final:
            finals[candidate.name] = (info, rung_config, written)
        else:
            write_json_atomic(record, done.as_dict())
        return done

    finals: dict[str, tuple[TrainInfo, TrainConfig, Path]] = {}
    result = run(
        [Candidate.of(c) for c in config.race], config.deadline, train_rung, config.select_by, clock=lambda: time.monotonic() - started
    )
    assert result.winner is not None
    info, final_config, written = finals[result.winner]
    shutil.copytree(written, out_dir, dirs_exist_ok=True)  # the winner's history, curves, TensorBoard (and vocabulary)
    model = load_model(result.rungs_of(result.winner)[-1].model)
    (out_dir / "race.json").write_text(
        json.dumps({"winner": result.winner, "reason": result.reason, "candidates": result.entries()}, indent=2) + "\n"
    )
    winner = {"candidate": result.winner, "reason": result.reason, "settings": final_config.model_dump(include=race_settings(config))}
    return model, info.model_copy(
        update={"race": result.entries(), "winner": winner, "plan": list(config.plan) or None, "deadline": config.deadline}
    )


def race_settings(config: TrainConfig) -> set[str]:
    """The ``[train]`` settings the race's candidates differ in."""
    return {name for candidate in config.race for name in candidate["settings"]}


def _rung_config(
    config: TrainConfig, candidate: Any, records: int, seconds: float, passes: float, continuing: bool, final: bool
) -> TrainConfig:
    """A candidate's rung as a ``TrainConfig``: its settings, ``passes`` over the ``records`` training
    images within ``seconds``, with the rate decaying to zero at the last step.

    A head on frozen features trains a pass an epoch; other models' passes are cut into at most
    ``MAX_CHUNKS`` epochs (each validates and checkpoints), after a fine-tuned candidate's head epochs on
    its first rung. A continuing rung restarts from its own weights at ``RESTART`` of the rate (a
    fine-tuned one at its fine-tuning rate, its backbone unfrozen). The last rung stops once validation
    has not improved for ``patience(epochs)`` epochs."""
    from imgflow.training.sizing import MAX_CHUNKS

    settings = dict(candidate.settings)
    model = settings.get("model", config.model)
    rate = settings.get("learning_rate", config.learning_rate) * (RESTART if continuing else 1.0)
    if model == "transfer" and settings.get("freeze_epochs") == settings.get("epochs"):
        epochs = max(1, round(passes))
        settings.update(epochs=epochs, freeze_epochs=epochs, steps_per_epoch=None)
    else:
        batch = settings.get("batch_size", config.batch_size)
        chunks = max(1, min(MAX_CHUNKS, math.floor(passes)))
        head = 0 if continuing else settings.get("freeze_epochs", 0)
        steps = max(1, math.ceil(passes * records / batch / chunks))
        settings.update(epochs=head + chunks, freeze_epochs=head, steps_per_epoch=steps)
        if continuing and model == "transfer":
            rate *= settings.get("fine_tune_factor", config.fine_tune_factor)
    settings["learning_rate"] = rate
    return config.replace(
        **settings,
        race=(),
        plan=(),
        deadline=round(seconds, 1),
        early_stopping=patience(settings["epochs"]) if final else config.early_stopping,
    )


RESTART = 0.5  # a continuing rung's peak rate, of the candidate's
