"""The pipeline, declared once: its stages, their named inputs, their order and their conditions.

::

    source ─▶ download ─▶ clean ─┬──────────────▶ shard ─▶ train ─▶ validate ─▶ export (if promoted)
              (per date partition)└─▶ merge ─────┘                    ▲
                                      (backfills)            champion ┘

Everything that needs the graph reads it from ``PIPELINE``: the flows' wiring (``flows/_pipeline.py``
walks it), ``--refresh`` (a stage and everything downstream of it), ``--until`` (a stage and
everything upstream of it), the run summary's stage list, ``imgflow cache ls/prune`` and
``imgflow plan`` (``plan`` below). Like Kedro's ``pipeline([node(...)])``, it is data a tool can read.

An input names the upstream steps that can provide it, the first one a run has wins: a backfill's
shard reads the merged table, a whole-source run's the clean one. Two inputs come from outside the
store: ``SOURCE`` (the source's content fingerprint) and ``CHAMPION`` (the current champion when it is
another model: ``imgflow.registry.promote.versus_champion`` decides).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imgflow.config import RunConfig
from imgflow.data.cleantable import check_splits
from imgflow.data.partitions import Partition
from imgflow.data.sources import source_fingerprint
from imgflow.registry.promote import versus_champion
from imgflow.results import CleanInfo, StageResult, ValidateInfo
from imgflow.runtime.errors import ConfigError
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD
from imgflow.stages.export import EXPORT
from imgflow.stages.merge import MERGE, PART
from imgflow.stages.shard import SHARD
from imgflow.stages.train import TRAIN
from imgflow.stages.validate import VALIDATE
from imgflow.store.artifacts import ArtifactStore, Stage

SOURCE = "<source>"  # the source's content fingerprint
CHAMPION = "<champion>"  # the champion, when it is another model than the candidate


@dataclass(frozen=True)
class Step:
    """One stage in the pipeline and what it is built from."""

    stage: Stage
    config: str  # the RunConfig field that holds its config
    inputs: Mapping[str, tuple[str, ...]]  # input name -> the steps (or SOURCE/CHAMPION) that provide it
    per_partition: bool = False  # in a partitioned run, once per date partition
    partitioned_only: bool = False  # only in a partitioned run
    fan_in: bool = False  # reads its upstream's output of every partition, as inputs "part:<date>"
    gated_by: str | None = None  # runs only when this (validate) step's result promotes the candidate
    retries: int = 0  # only where the network is: anything else would fail the same way again
    # A check of the run's settings against this step's inputs before it runs (``ConfigError`` to refuse).
    before: Callable[[RunConfig, Mapping[str, StageResult]], None] | None = None
    # The step's config from the run's settings and the results so far (``measure``: it may measure
    # this machine; else None when it would need to), instead of the RunConfig field as it is.
    configure: Callable[[RunConfig, Mapping[str, StageResult], bool], Any] | None = None

    @property
    def name(self) -> str:
        return self.stage.name

    def upstream(self) -> set[str]:
        """The steps this one reads from or waits for."""
        found = {name for names in self.inputs.values() for name in names if name not in (SOURCE, CHAMPION)}
        return found | ({self.gated_by} if self.gated_by else set())

    def config_of(self, cfg: RunConfig, results: Mapping[str, StageResult] | None = None, measure: bool = True) -> Any:
        """The step's config: the RunConfig field, or what ``configure`` makes of it and ``results``."""
        if self.configure is not None and results is not None:
            return self.configure(cfg, results, measure)
        return getattr(cfg, self.config)

    @property
    def against_champion(self) -> bool:
        """Whether it reads the champion: then ``versus_champion`` decides its inputs, or reuses the
        champion's own validation."""
        return any(CHAMPION in providers for providers in self.inputs.values())


def promoted(result: StageResult) -> bool:
    """Whether a validate result promotes its candidate (what a gated step waits for)."""
    assert isinstance(result.info, ValidateInfo), result.stage
    return result.info.promote


class Pipeline:
    """Steps in a valid order (each after every step it reads from)."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)
        seen: set[str] = set()
        for step in self.steps:
            missing = step.upstream() - seen
            if missing:
                raise ValueError(f"step {step.name} reads {sorted(missing)} before they are declared")
            seen.add(step.name)
        self.names = tuple(step.name for step in self.steps)

    def check(self, name: str, what: str) -> str:
        if name not in self.names:
            raise ConfigError(f"cannot {what} unknown stage {name!r}; stages: {', '.join(self.names)}")
        return name

    def downstream(self, name: str) -> frozenset[str]:
        """``name`` and every step that reads from it, directly or not."""
        found = {name}
        for step in self.steps:
            if step.upstream() & found:
                found.add(step.name)
        return frozenset(found)

    def upstream(self, name: str) -> frozenset[str]:
        """``name`` and every step it reads from, directly or not."""
        found = {name}
        for step in reversed(self.steps):
            if step.name in found:
                found |= step.upstream()
        return frozenset(found)

    def refreshed(self, name: str | None) -> frozenset[str]:
        """The stages ``--refresh STAGE`` forces to run again: that one and everything downstream."""
        return frozenset() if name is None else self.downstream(self.check(name, "refresh"))

    def until(self, name: str | None) -> frozenset[str]:
        """The stages ``--until STAGE`` runs: that one and everything it needs."""
        return frozenset(self.names) if name is None else self.upstream(self.check(name, "stop at"))

    def run_steps(self, partitioned: bool) -> tuple[Step, ...]:
        """The steps a run has: merge only when it reads date partitions."""
        return tuple(step for step in self.steps if partitioned or not step.partitioned_only)

    def inputs(self, step: Step, results: Mapping[str, Any], external: Mapping[str, Any]) -> dict[str, Any] | None:
        """The step's inputs from the results so far (and SOURCE/CHAMPION from ``external``); None when
        an input's upstream has no result (yet). ``results`` may hold futures: they pass through. A
        fan-in step's inputs are each partition's result: ``part_inputs``."""
        assert not step.fan_in, step.name
        inputs: dict[str, Any] = {}
        for name, providers in step.inputs.items():
            provider = next((p for p in providers if p in results or p in external), None)
            if provider is None:
                return None
            value = external[provider] if provider in external else results[provider]
            if value is None and provider == CHAMPION:
                continue  # no rival: the input is absent, and so is it from the key
            if value is None:
                return None
            inputs[name] = value
        return inputs


def budgeted_training(cfg: RunConfig, results: Mapping[str, StageResult], measure: bool) -> Any:
    """The train config under a time budget: the recipe's plan (``imgflow.training.probe.budgeted``)."""
    from imgflow.training.probe import budgeted

    return budgeted(cfg.train, cfg.fixed, results, run=measure)


def evaluable_splits(cfg: RunConfig, inputs: Mapping[str, StageResult]) -> None:
    """Before shard: the clean table's splits can train a model and judge it (``check_splits``)."""
    info = inputs["clean"].info
    assert isinstance(info, CleanInfo), inputs["clean"].stage
    check_splits(info, cfg.gate.min_test_records)


PIPELINE = Pipeline(
    [
        Step(DOWNLOAD, "download", {"source": (SOURCE,)}, per_partition=True, retries=2),
        Step(CLEAN, "clean", {"raw": ("download",)}, per_partition=True),
        Step(MERGE, "clean", {"parts": ("clean",)}, partitioned_only=True, fan_in=True),
        Step(SHARD, "shard", {"clean": ("merge", "clean")}, before=evaluable_splits),
        Step(TRAIN, "train", {"shards": ("shard",)}, configure=budgeted_training),
        Step(VALIDATE, "gate", {"shards": ("shard",), "model": ("train",), "champion": (CHAMPION,)}),
        Step(EXPORT, "export", {"shards": ("shard",), "model": ("train",)}, gated_by="validate"),
    ]
)
ORDER = PIPELINE.names


def part_inputs(parts: Mapping[str, Any]) -> dict[str, Any]:
    """The merge stage's inputs: each partition's clean output as ``part:<date>``, in date order."""
    return {f"{PART}{day}": result for day, result in parts.items()}


@dataclass(frozen=True)
class PlannedStage:
    """What a run would do with one stage: ``run`` it, ``reuse`` its stored output, or ``skip`` it."""

    stage: str
    action: str
    key: str | None  # None: its inputs are not built yet, so its key is not known yet
    note: str = ""
    partition: str | None = None


def plan(
    cfg: RunConfig,
    *,
    forced: frozenset[str] = frozenset(),
    until: str | None = None,
    partitions: Sequence[Partition] | None = None,
    fingerprint: str | None = None,
) -> list[PlannedStage]:
    """Every stage of a run and whether it would run or reuse a stored output, without running
    anything (nor importing TensorFlow): the keys are computed as the run would compute them, from
    the source's fingerprint (``fingerprint`` when the caller took it already) and each stored upstream
    output's. A stage whose input is not built yet runs, and so does everything after it."""
    return _survey(cfg, forced, until, partitions, fingerprint)[0]


def cached_run(
    cfg: RunConfig, *, forced: frozenset[str] = frozenset(), until: str | None = None, fingerprint: str | None = None
) -> tuple[list[PlannedStage], dict[str, StageResult] | None]:
    """The plan of a whole-source run, and when it runs no stage, the stored output of every stage it
    reuses (status ``cached``): all a run with nothing to run reports."""
    planned, results = _survey(cfg, forced, until, None, fingerprint)
    if any(p.action == "run" for p in planned):
        return planned, None
    return planned, {stage: result.with_status("cached") for stage, result in results.items()}


def _survey(
    cfg: RunConfig,
    forced: frozenset[str],
    until: str | None,
    partitions: Sequence[Partition] | None,
    fingerprint: str | None,
) -> tuple[list[PlannedStage], dict[str, Any]]:
    """``plan``, and the stored output of each step it reuses (None for one it runs)."""
    store = ArtifactStore(cfg.artifacts)
    store.pull_models(cfg.dataset.name)
    wanted = PIPELINE.until(until)
    planned: list[PlannedStage] = []

    def visit(step: Step, config: Any, inputs: dict[str, Any] | None, known: dict[str, Any], partition: str | None = None) -> None:
        if step.name not in wanted:
            planned.append(PlannedStage(step.name, "skip", None, f"after --until {until}", partition))
            return
        if inputs is None:
            known[step.name] = None
            planned.append(PlannedStage(step.name, "run", None, "its inputs are built in this run", partition))
            return
        key = step.stage.key(config, inputs)
        existing = store.lookup(step.name, key, fetch=False)
        forced_here = step.name in forced
        known[step.name] = existing if not forced_here else None
        action = "reuse" if existing is not None and not forced_here else "run"
        note = "--refresh" if forced_here else "" if existing is not None else "not in the store"
        planned.append(PlannedStage(step.name, action, key, note, partition))

    per_partition = [s for s in PIPELINE.steps if s.per_partition]
    parts: dict[str, Any] = {}
    for partition in partitions if partitions is not None else [None]:
        download = cfg.download if partition is None else dataclasses.replace(cfg.download, source=partition.source)
        known: dict[str, Any] = {}
        day = partition.date.isoformat() if partition is not None else None
        for step in per_partition:
            config = download if step.config == "download" else step.config_of(cfg)
            if step.name == "download":
                given = fingerprint if partition is None else None
                source = given or source_fingerprint(download.source, download.options)
            visit(step, config, PIPELINE.inputs(step, known, {SOURCE: source if step.name == "download" else None}), known, day)
        parts[day or ""] = known.get("clean")

    results: dict[str, Any] = dict(known) if partitions is None else {}
    for step in PIPELINE.run_steps(partitioned=partitions is not None):
        if step.per_partition:
            continue
        config = step.config_of(cfg)
        if step.fan_in:
            ready = all(v is not None for v in parts.values())
            visit(step, config, part_inputs(parts) if ready else None, results)
            continue
        external: dict[str, Any] = {CHAMPION: None}
        if step.against_champion and results.get("train") and results.get("shard"):
            check = versus_champion(store, cfg.dataset.name, config, results["train"], results["shard"])
            if check.recorded is not None and step.name not in forced and step.name in wanted:
                results[step.name] = check.recorded
                planned.append(PlannedStage(step.name, "reuse", check.recorded.key, "the candidate is the champion"))
                continue
            external[CHAMPION] = check.rival
        gate = results.get(step.gated_by) if step.gated_by else None
        if gate is not None and step.name in wanted and not promoted(gate):
            planned.append(PlannedStage(step.name, "skip", None, "the gate rejects the candidate"))
            continue
        inputs = PIPELINE.inputs(step, results, external)
        if step.configure is not None and inputs is not None and step.name in wanted:
            config = step.config_of(cfg, results, measure=False)
            if config is None:
                results[step.name] = None
                planned.append(PlannedStage(step.name, "run", None, "the recipe plans it once the run has measured this machine"))
                continue
        visit(step, config, inputs, results)
        if step.gated_by and gate is None and planned[-1].action == "run":
            planned[-1] = dataclasses.replace(planned[-1], note="if the gate promotes the candidate")
    return planned, {stage: result for stage, result in results.items() if result is not None}
