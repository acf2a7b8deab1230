"""The pipeline, declared once: its stages, their named inputs, their order and their conditions.

::

    source ─▶ download ─▶ clean ─┬──────────────▶ shard ─▶ train ─▶ validate ─▶ export (if promoted)
              (per date partition)├─▶ merge ─────┘                    ▲ ▲
                                  │   (backfills)            champion ┘ │
                                  └─▶ drift (against the champion's data)

Everything that needs the graph reads it from ``PIPELINE``, and one walk (``imgflow.pipeline.walk``) goes through it
for every purpose: running under Prefect (``flows/pipeline.py``'s executor submits tasks), planning
(``plan``: the keys, what is stored, nothing run) and the all-cached path (``cached_run``). The walk
owns the partitions, fan-in, the champion check, the gate, ``before`` and ``configure``; an executor
only builds. ``--refresh`` (a stage and everything downstream of it), ``--until`` (a stage and
everything upstream of it), the run summary's stage list and ``imgflow cache ls/prune`` read the same
declaration. Like Kedro's ``pipeline([node(...)])``, it is data a tool can read.

An input names the upstream steps that can provide it, the first one a run has wins: a backfill's
shard reads the merged table, a whole-source run's the clean one. A step after the partitions that
reads a per-partition step (validate reads drift) gets every partition's result, as ``<input>:<date>``.
Three inputs come from outside the store: ``SOURCE`` (the source's content fingerprint), ``CHAMPION``
(the current champion when it is another model: ``imgflow.registry.promote.versus_champion`` decides)
and ``REFERENCE`` (the current champion, whatever the candidate: what new data is compared with).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imgflow.config import (
    AuditConfig,
    CleanConfig,
    DownloadConfig,
    DriftConfig,
    ExportConfig,
    GateConfig,
    RunConfig,
    ShardConfig,
    TrainConfig,
)
from imgflow.data.cleantable import check_splits
from imgflow.data.partitions import PART
from imgflow.pipeline.context import Run
from imgflow.results import CleanInfo, StageResult, ValidateInfo
from imgflow.runtime.errors import ConfigError
from imgflow.stages.audit import AUDIT
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD
from imgflow.stages.drift import DRIFT
from imgflow.stages.export import EXPORT
from imgflow.stages.merge import MERGE
from imgflow.stages.shard import SHARD
from imgflow.stages.train import TRAIN
from imgflow.stages.validate import VALIDATE
from imgflow.store.stage import Stage

SOURCE = "<source>"  # the source's content fingerprint
CHAMPION = "<champion>"  # the champion, when it is another model than the candidate
REFERENCE = "<reference>"  # the current champion, whatever the candidate (drift compares with its data)
EXTERNAL = (SOURCE, CHAMPION, REFERENCE)
OPTIONAL = (CHAMPION, REFERENCE)  # absent (None) when there is no such model: the input is left out


@dataclass(frozen=True)
class Step:
    """One stage in the pipeline and what it is built from."""

    stage: Stage
    config: type  # its config's type: the run's config of that type (``RunConfig.of``) is what it builds with
    inputs: Mapping[str, tuple[str, ...]]  # input name -> the steps (or SOURCE/CHAMPION) that provide it
    per_partition: bool = False  # in a partitioned run, once per date partition
    partitioned_only: bool = False  # only in a partitioned run
    fan_in: bool = False  # reads its upstream's output of every partition, as inputs "part:<date>"
    gated_by: str | None = None  # runs only when this (validate) step's result promotes the candidate
    retries: int = 0  # only where the network is: anything else would fail the same way again
    # A check of the run's settings against this step's inputs before it runs (``ConfigError`` to refuse).
    before: Callable[[RunConfig, Mapping[str, StageResult]], None] | None = None
    # The step's config from the run (its settings, its store) and the results so far (``measure``: it may
    # measure this machine; else None when it would need to), instead of the RunConfig field as it is.
    configure: Callable[[Run, Mapping[str, StageResult], bool], Any] | None = None
    # What a plan says of the step while ``configure`` cannot decide its config yet.
    undecided: str = "its settings follow from what this run builds first"
    # Why the run's settings leave this step out (None: they do not), e.g. ``[audit] enabled = false``.
    left_out: Callable[[RunConfig], str | None] | None = None

    @property
    def name(self) -> str:
        return self.stage.name

    def upstream(self) -> set[str]:
        """The steps this one reads from or waits for."""
        found = {name for names in self.inputs.values() for name in names if name not in EXTERNAL}
        return found | ({self.gated_by} if self.gated_by else set())

    def config_of(self, run: Run, results: Mapping[str, StageResult] | None = None, measure: bool = True) -> Any:
        """The step's config: the run's RunConfig field, or what ``configure`` makes of it and ``results``."""
        if self.configure is not None and results is not None:
            return self.configure(run, results, measure)
        return run.cfg.of(self.config)

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

    def step(self, name: str) -> Step:
        return self.steps[self.names.index(name)]

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

    def inputs(
        self, step: Step, results: Mapping[str, Any], external: Mapping[str, Any], parts: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        """The step's inputs from the results so far (and SOURCE/CHAMPION/REFERENCE from ``external``);
        None when an input's upstream has no result (yet). ``results`` may hold futures: they pass
        through. In a partitioned run (``parts``: date -> per-partition results), an input a
        per-partition step provides is that step's result in every partition, as ``<input>:<date>``. A
        fan-in step's inputs are each partition's result: ``part_inputs``."""
        assert not step.fan_in, step.name
        inputs: dict[str, Any] = {}
        for name, providers in step.inputs.items():
            provider = next((p for p in providers if p in results or p in external or self._partitioned(p, parts)), None)
            if provider is None:
                return None
            if provider not in results and provider not in external:
                assert parts is not None
                inputs.update({f"{name}:{day}": known.get(provider) for day, known in parts.items()})
                continue
            value = external[provider] if provider in external else results[provider]
            if value is None and provider in OPTIONAL:
                continue  # no such model: the input is absent, and so is it from the key
            inputs[name] = value
        return None if any(value is None for value in inputs.values()) else inputs

    def _partitioned(self, name: str, parts: Mapping[str, Mapping[str, Any]] | None) -> bool:
        return parts is not None and name in self.names and self.step(name).per_partition


def budgeted_training(run: Run, results: Mapping[str, StageResult], measure: bool) -> Any:
    """The train config under a time budget: the recipe's plan (``imgflow.training.probe.budgeted``)."""
    from imgflow.training.probe import budgeted

    cfg = run.cfg
    return budgeted(cfg.train, cfg.fixed, results, cfg.gate.metric, run=measure)


def evaluable_splits(cfg: RunConfig, inputs: Mapping[str, StageResult]) -> None:
    """Before shard: the clean table's splits can train a model and judge it (``check_splits``)."""
    info = inputs["clean"].info
    assert isinstance(info, CleanInfo), inputs["clean"].stage
    check_splits(info, cfg.gate.min_test_records)


def audited_shards(run: Run, results: Mapping[str, StageResult], measure: bool) -> Any:
    """The shard config with what the audit leaves out (``[audit] action = "exclude"``: the findings of
    every audit of the run, ``results``' ``audit`` or ``audit:<date>``); None while an audit is not built."""
    import pyarrow.parquet as pq

    from imgflow.data.audit import ISSUES, PAIRS, exclusions

    cfg = run.cfg
    if not (cfg.audit.enabled and cfg.audit.action == "exclude"):
        return cfg.shard
    audits = [result for name, result in results.items() if name == "audit" or name.startswith("audit:")]
    if not audits or any(result is None for result in audits):
        return None
    left: dict[str, str] = {}
    for result in audits:
        local = run.store.localize(result)
        left.update(exclusions(pq.read_table(local.file(ISSUES)), pq.read_table(local.file(PAIRS))))
    return cfg.shard.replace(exclude=tuple(sorted(left.items())))


def _audit_off(cfg: RunConfig) -> str | None:
    return None if cfg.audit.enabled else "[audit] enabled = false"


PIPELINE = Pipeline(
    [
        Step(DOWNLOAD, DownloadConfig, {"source": (SOURCE,)}, per_partition=True, retries=2),
        Step(CLEAN, CleanConfig, {"raw": ("download",)}, per_partition=True),
        Step(DRIFT, DriftConfig, {"data": ("clean",), "reference": (REFERENCE,)}, per_partition=True),
        Step(AUDIT, AuditConfig, {"data": ("clean",), "reference": (REFERENCE,)}, per_partition=True, left_out=_audit_off),
        Step(MERGE, CleanConfig, {"parts": ("clean",)}, partitioned_only=True, fan_in=True),
        Step(
            SHARD,
            ShardConfig,
            {"clean": ("merge", "clean")},
            before=evaluable_splits,
            configure=audited_shards,
            undecided="what it leaves out follows from the audit this run builds",
        ),
        Step(
            TRAIN,
            TrainConfig,
            {"shards": ("shard",)},
            configure=budgeted_training,
            undecided="the recipe plans it once the run has measured this machine",
        ),
        Step(VALIDATE, GateConfig, {"shards": ("shard",), "model": ("train",), "champion": (CHAMPION,), "drift": ("drift",)}),
        Step(EXPORT, ExportConfig, {"shards": ("shard",), "model": ("train",)}, gated_by="validate"),
    ]
)
ORDER = PIPELINE.names


def part_inputs(parts: Mapping[str, Any]) -> dict[str, Any]:
    """The merge stage's inputs: each partition's clean output as ``part:<date>``, in date order."""
    return {f"{PART}{day}": result for day, result in parts.items()}
