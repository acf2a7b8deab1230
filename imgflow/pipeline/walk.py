"""The one walk of the declared pipeline (``imgflow.pipeline.PIPELINE``), for every purpose: an executor
decides what each step does (``Planner``: plan; ``flows/pipeline.PrefectRun``: run under Prefect)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from imgflow.config import DownloadConfig
from imgflow.data.sources import source_fingerprint
from imgflow.pipeline import CHAMPION, PIPELINE, REFERENCE, SOURCE, Step, part_inputs, promoted
from imgflow.pipeline.context import Run
from imgflow.registry.promote import versus_champion
from imgflow.registry.versions import champion_result
from imgflow.results import StageResult
from imgflow.store.artifacts import ArtifactStore


@dataclass(frozen=True)
class PlannedStage:
    """What a run would do with one stage: ``run`` it, ``reuse`` its stored output, or ``skip`` it."""

    stage: str
    action: str
    key: str | None  # None: its inputs are not built yet, so its key is not known yet
    note: str = ""
    partition: str | None = None


class Executor(Protocol):
    """What a walk of the pipeline (``walk``) does at each step: the walk decides which steps run, in
    which order, with which inputs (partitions, fan-in, the champion check, the gate, ``before`` and
    ``configure``); an executor only builds, or says what building would do.

    ``measure``: whether a step's ``configure`` may measure this machine (a plan only reads what
    is recorded).
    """

    measure: bool

    def fingerprint(self, download: Any, concurrent: bool) -> Any:
        """The content fingerprint of ``download``'s source (or a future of it, ``concurrent``)."""

    def build(self, step: Step, config: Any, inputs: Mapping[str, Any] | None, how: How) -> Any:
        """The step's result: built or reused, a future of it (``how.concurrent``), or None when it
        is not known without running (a plan: ``inputs`` None, its upstream is built in this run)."""

    def settle(self, value: Any) -> StageResult | None:
        """A result from what ``build`` returned (a future's, once it is done)."""

    def passed(self, step: Step, why: str, partition: str | None = None, result: StageResult | None = None) -> None:
        """The walk passed ``step`` by without building it: skipped (``result`` None) or its
        ``result`` reused as it stands (the candidate already is the champion)."""


@dataclass(frozen=True)
class How:
    """How a step is built in this walk: ``force`` it (``--refresh``), in which date ``partition``,
    ``concurrent``ly (the per-partition steps of a partitioned run, through the flow's task runner),
    and whether it waits on a gate whose decision is not known yet (a plan)."""

    force: bool = False
    partition: str | None = None
    concurrent: bool = False
    pending_gate: bool = False


class Walked(NamedTuple):
    """A walk's results: each step's (None: not known without running), and with date partitions
    each partition's per-partition results."""

    results: dict[str, Any]
    parts: dict[str, dict[str, Any]] | None


def walk(
    run: Run,
    executor: Executor,
    *,
    forced: frozenset[str] = frozenset(),
    until: str | None = None,
    fingerprint: str | None = None,
    given: Mapping[str, StageResult] | None = None,
) -> Walked:
    """The one walk of the pipeline, for planning and for running alike (``executor`` decides which):
    the per-partition steps once per date partition (or once over the whole source), then the rest
    in declared order, fan-in over the partitions, the champion check before a step that reads the
    champion, a gated step only when its gate promotes, ``before`` on a step's inputs before it is
    built, and ``configure`` for its config. ``given``: results this run has already (tuning's data
    stages), taken as they are."""
    cfg, store, partitions = run.cfg, run.store, run.partitions
    store.pull_models(cfg.dataset.name)  # where versus_champion reads it
    reference = champion_result(store.folder, cfg.dataset.name)  # what new data is compared with
    wanted = PIPELINE.until(until)
    concurrent = partitions is not None
    submitted: dict[str, dict[str, Any]] = {}
    for partition in partitions if partitions is not None else [None]:
        day = partition.date.isoformat() if partition is not None else None
        download = cfg.download if partition is None else cfg.download.replace(source=partition.source)
        known: dict[str, Any] = {}
        for step in (s for s in PIPELINE.steps if s.per_partition):
            if given and step.name in given:
                known[step.name] = given[step.name]
                continue
            if step.name not in wanted:
                executor.passed(step, f"after --until {until}", day)
                continue
            if step.left_out is not None and step.left_out(cfg):
                executor.passed(step, step.left_out(cfg) or "", day)
                continue
            external: dict[str, Any] = {REFERENCE: reference}
            if any(SOURCE in providers for providers in step.inputs.values()):
                taken = fingerprint if partition is None else None  # the caller's, of the whole source
                external[SOURCE] = taken or executor.fingerprint(download, concurrent)
            config = download if step.config is DownloadConfig else step.config_of(run)  # a partition's own source
            inputs = PIPELINE.inputs(step, known, external)
            known[step.name] = executor.build(step, config, inputs, How(step.name in forced, day, concurrent))
        submitted[day or ""] = known
    parts = {day: {name: executor.settle(value) for name, value in known.items()} for day, known in submitted.items()}
    results: dict[str, Any] = dict(parts[""]) if partitions is None else {}
    for step in PIPELINE.run_steps(partitioned=concurrent):
        if step.per_partition:
            continue
        if given and step.name in given:
            results[step.name] = given[step.name]
            continue
        if step.name not in wanted:
            executor.passed(step, f"after --until {until}")
            continue
        if step.left_out is not None and step.left_out(cfg):
            executor.passed(step, step.left_out(cfg) or "")
            continue
        gate = results.get(step.gated_by) if step.gated_by else None
        if gate is not None and not promoted(gate):
            executor.passed(step, "the gate rejects the candidate")
            continue
        external = {CHAMPION: None, REFERENCE: reference}
        if step.against_champion and results.get("train") is not None and results.get("shard") is not None:
            check = versus_champion(store, cfg.dataset.name, step.config_of(run), results["train"], results["shard"])
            if check.recorded is not None and step.name not in forced:
                results[step.name] = check.recorded  # the candidate already is the champion, gated as it is now
                executor.passed(step, "the candidate is the champion", result=check.recorded)
                continue
            external[CHAMPION] = check.rival
        if step.fan_in:
            provider = _fan_in_provider(step)
            ready = all(known.get(provider) is not None for known in parts.values())
            inputs = part_inputs({day: known[provider] for day, known in parts.items()}) if ready else None
        else:
            inputs = PIPELINE.inputs(step, results, external, parts if concurrent else None)
        config = step.config_of(run)
        if inputs is not None:
            if step.before is not None:
                step.before(cfg, inputs)
            # ``configure`` sees the per-partition results too, as "<step>:<date>" (the audits of a backfill)
            known = (
                {**results, **{f"{name}:{day}": value for day, part in parts.items() for name, value in part.items()}}
                if concurrent
                else results
            )
            config = step.config_of(run, known, executor.measure)
        how = How(step.name in forced, pending_gate=bool(step.gated_by) and gate is None)
        results[step.name] = executor.settle(executor.build(step, config, inputs, how))
    return Walked(results, parts if concurrent else None)


def _fan_in_provider(step: Step) -> str:
    """The one per-partition step whose output of every partition a fan-in step reads."""
    (provider,) = {name for names in step.inputs.values() for name in names}
    return provider


class Planner:
    """The executor of a plan: computes each step's key as the run would, looks it up in the store
    and records what the run would do (``planned``); builds nothing, starts nothing, imports no
    TensorFlow. A stored output stands for the step's result; a step to run has none (None)."""

    measure = False

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.planned: list[PlannedStage] = []

    def fingerprint(self, download: Any, concurrent: bool) -> str:
        return source_fingerprint(download.source, download.options)

    def build(self, step: Step, config: Any, inputs: Mapping[str, Any] | None, how: How) -> StageResult | None:
        key, existing = None, None
        if inputs is None:
            note = "its inputs are built in this run"
        elif config is None:
            note = step.undecided
        else:
            key = step.stage.key(config, inputs)
            existing = None if how.force else self.store.lookup(step.name, key, fetch=False)
            note = "--refresh" if how.force else "" if existing is not None else "not in the store"
            race = getattr(config, "race", None)  # a budget's candidates (imgflow.training.race)
            if existing is None and race:
                note += f"; races {', '.join(candidate['name'] for candidate in race)}"
        if existing is None and how.pending_gate:
            note = "if the gate promotes the candidate"
        self.planned.append(PlannedStage(step.name, "run" if existing is None else "reuse", key, note, how.partition))
        return existing

    def settle(self, value: Any) -> StageResult | None:
        return value

    def passed(self, step: Step, why: str, partition: str | None = None, result: StageResult | None = None) -> None:
        action, key = ("skip", None) if result is None else ("reuse", result.key)
        self.planned.append(PlannedStage(step.name, action, key, why, partition))


def plan(run: Run, *, forced: frozenset[str] = frozenset(), until: str | None = None, fingerprint: str | None = None) -> list[PlannedStage]:
    """Every stage of a run and whether it would run or reuse a stored output, without running
    anything (nor importing TensorFlow): the walk a run makes (``walk``), with a ``Planner``. The keys
    are computed as the run would compute them, from the source's fingerprint (``fingerprint`` when the
    caller took it already) and each stored upstream output's. A stage whose input is not built yet
    runs, and so does everything after it."""
    planner = Planner(run.store)
    walk(run, planner, forced=forced, until=until, fingerprint=fingerprint)
    return planner.planned


def cached_run(
    run: Run, *, forced: frozenset[str] = frozenset(), until: str | None = None, fingerprint: str | None = None
) -> tuple[list[PlannedStage], dict[str, StageResult] | None]:
    """The plan of a whole-source run, and when it runs no stage, the stored output of every stage it
    reuses (status ``cached``): all a run with nothing to run reports."""
    planner = Planner(run.store)
    walked = walk(run, planner, forced=forced, until=until, fingerprint=fingerprint)
    if any(p.action == "run" for p in planner.planned):
        return planner.planned, None
    return planner.planned, {stage: result.with_status("cached") for stage, result in walked.results.items() if result is not None}
