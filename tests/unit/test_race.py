"""The race's rules (``imgflow.training.race``), with a trainer whose candidates learn at known rates: who
goes on, who wins, how the time is shared, and what the summary gets."""

from __future__ import annotations

from imgflow.training.race import RUNG_SHARE, Candidate, Rung, entered, run, rungs_before_last


class Trainer:
    """Each candidate scores ``ceiling * (1 - 1 / (1 + passes))`` after all its passes so far, and
    takes exactly the seconds it is given (on a clock the race reads)."""

    def __init__(self, ceilings: dict[str, float]) -> None:
        self.ceilings, self.spent, self.calls = ceilings, 0.0, []

    def __call__(self, candidate: Candidate, rung: int, seconds: float, passes: float, start: Rung | None, final: bool) -> Rung:
        self.calls.append((candidate.name, rung, round(seconds, 3), start.model if start else None, final))
        self.spent += seconds
        total = passes + (start.passes if start else 0.0)
        score = self.ceilings[candidate.name] * (1 - 1 / (1 + total))
        return Rung(candidate.name, rung, score, seconds, max(1, int(passes)), total, True, "planned steps", f"{candidate.name}-{rung}")


def candidates(*names: str) -> list[Candidate]:
    return [Candidate(name, {"model": "cnn"}, pass_seconds=1.0) for name in names]


def test_the_better_half_goes_on_and_the_winner_gets_the_rest_of_the_time() -> None:
    trainer = Trainer({"a": 0.80, "b": 0.95, "c": 0.90, "d": 0.70})
    race = run(candidates("a", "b", "c", "d"), 1000.0, trainer, "accuracy", clock=lambda: trainer.spent, say=lambda line: None)
    assert race.winner == "b"
    first = [call for call in trainer.calls if call[1] == 0]
    second = [call for call in trainer.calls if call[1] == 1]
    assert [c[0] for c in first] == ["a", "b", "c", "d"] and all(c[2] == RUNG_SHARE * 1000 / 4 for c in first)
    assert [c[0] for c in second] == ["b", "c"] and all(c[2] == RUNG_SHARE * 1000 / 2 for c in second)
    assert all(c[3] == f"{c[0]}-0" for c in second)  # continuing from their own first rung
    last = trainer.calls[-1]
    assert last[:2] == ("b", 2) and last[4] is True and last[3] == "b-1"
    assert abs(trainer.spent - 1000.0) < 1e-6  # the whole time, and no more
    entries = {entry["candidate"]: entry for entry in race.entries()}
    assert entries["b"]["winner"] and not entries["a"]["winner"]
    assert len(entries["a"]["rungs"]) == 1 and len(entries["b"]["rungs"]) == 3
    assert entries["b"]["val_accuracy"] > entries["c"]["val_accuracy"] and "best val_accuracy" in race.reason


def test_a_tie_goes_to_the_candidate_the_recipe_listed_first_and_one_candidate_does_not_race() -> None:
    trainer = Trainer({"x": 0.9, "y": 0.9})
    assert run(candidates("x", "y"), 100.0, trainer, "macro_f1", clock=lambda: trainer.spent, say=lambda line: None).winner == "x"
    alone = Trainer({"x": 0.9})
    race = run(candidates("x"), 100.0, alone, "accuracy", clock=lambda: alone.spent, say=lambda line: None)
    assert alone.calls == [("x", 0, 100.0, None, True)] and "only candidate" in race.reason


def test_what_the_candidates_pay_once_and_the_rungs_leave_the_winner_most_of_the_time() -> None:
    assert [rungs_before_last(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]
    cheap = candidates("a", "b", "c", "d")
    assert entered(cheap, 1000.0) == cheap  # two rungs: 40% of the time
    costly = [Candidate("features", {}, 1.0, fixed_seconds=300.0), *cheap]
    kept = entered(costly, 1000.0)
    assert kept[0].name == "features" and len(kept) < len(costly)  # the last listed are left out first
    assert entered(costly, 100.0) == costly[:1]


def test_time_the_winner_leaves_goes_to_the_runner_up_and_the_best_after_its_last_rung_wins() -> None:
    """A head on frozen features wins the first rung and has learned what it can: it stops with most of
    the time left. The runner-up (fine-tuning, slower to start) trains on in it from its own weights,
    overtakes, and wins; the reason says so."""

    class Saturating(Trainer):
        def __call__(self, candidate, rung, seconds, passes, start, final):  # noqa: ANN001, ANN204
            done = super().__call__(candidate, rung, seconds, passes, start, final)
            if candidate.name == "frozen":  # learns fast, then nothing: stops early in its last rung
                self.spent -= seconds * 0.9 if final else 0.0
                return Rung("frozen", rung, 0.80, seconds * (0.1 if final else 1.0), 5, 5.0, False, "validation stopped improving", "f")
            return Rung(done.candidate, rung, 0.75 if rung == 0 else 0.86, done.seconds, done.epochs, done.passes, True, "", f"t-{rung}")

    trainer = Saturating({"frozen": 1.0, "tuned": 1.0})
    race = run(candidates("tuned", "frozen"), 1000.0, trainer, "accuracy", clock=lambda: trainer.spent, say=lambda line: None)
    assert [(c[0], c[1], c[4]) for c in trainer.calls] == [("tuned", 0, False), ("frozen", 0, False), ("frozen", 1, True), ("tuned", 1, True)]
    assert trainer.calls[-1][3] == "t-0"  # the runner-up continued from its own first rung
    assert race.winner == "tuned" and "after training on in the time frozen left" in race.reason
    assert abs(trainer.spent - 1000.0) < 1e-6  # and the whole time was spent
