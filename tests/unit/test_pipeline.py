"""The declared pipeline: its graph (what --refresh and --until take), and ``plan`` against a real store."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from imgflow.data.partitions import date_partitions
from imgflow.data.sources import source_fingerprint
from imgflow.data.synthetic import partitioned_parquet
from imgflow.pipeline import ORDER, PIPELINE
from imgflow.pipeline.context import Run, open_run
from imgflow.pipeline.walk import cached_run, plan
from imgflow.results import StageResult
from imgflow.runtime.errors import ConfigError


def test_the_declaration_orders_every_stage_merge_included() -> None:
    assert ORDER == ("download", "clean", "drift", "audit", "merge", "shard", "train", "validate", "export")
    assert [s.name for s in PIPELINE.run_steps(partitioned=False)] == [n for n in ORDER if n != "merge"]
    assert [s.name for s in PIPELINE.run_steps(partitioned=True)] == list(ORDER)


def test_refresh_takes_everything_downstream_and_until_everything_upstream() -> None:
    assert PIPELINE.refreshed("clean") == {"clean", "drift", "audit", "merge", "shard", "train", "validate", "export"}
    assert PIPELINE.refreshed("validate") == {"validate", "export"}  # export waits for the gate
    assert PIPELINE.refreshed(None) == frozenset()
    assert PIPELINE.until("shard") == {"download", "clean", "merge", "shard"}
    assert PIPELINE.until("clean") == {"download", "clean"}
    assert PIPELINE.until(None) == set(ORDER)
    with pytest.raises(ConfigError, match="cannot refresh unknown stage 'evaluate'"):
        PIPELINE.refreshed("evaluate")
    with pytest.raises(ConfigError, match="cannot stop at unknown stage 'evaluate'"):
        PIPELINE.until("evaluate")


def _spec(tmp_path: Path) -> str:
    spec = tmp_path / "digits.toml"
    spec.write_text('source = "sample:digits"\nlimit = 300\n[clean]\nimage_size = [8, 8]\nchannels = 1\n')
    return str(spec)


def _actions(planned: list) -> dict[str, str]:
    return {p.stage: p.action for p in planned}


def test_plan_on_a_fresh_store_runs_everything_and_knows_only_the_first_key(tmp_path: Path) -> None:
    run = open_run(_spec(tmp_path), tmp_path / "artifacts")
    cfg = run.cfg
    planned = plan(run)
    assert _actions(planned) == dict.fromkeys(("download", "clean", "drift", "audit", "shard", "train", "validate", "export"), "run")
    download = planned[0]
    from imgflow.stages.download import DOWNLOAD

    assert download.key == DOWNLOAD.key(cfg.download, {"source": source_fingerprint(cfg.download.source)})
    assert [p.key for p in planned[1:]] == [None] * 7
    assert planned[-1].note == "if the gate promotes the candidate"
    assert not (tmp_path / "artifacts").exists()  # planning writes nothing


def _data_stages(run: Run) -> tuple[StageResult, StageResult, StageResult]:
    """The run's download, clean and shard outputs, built into its store."""
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD

    cfg, store = run.cfg, run.store
    raw = DOWNLOAD.run(store, cfg.download, {"source": source_fingerprint(cfg.download.source)})
    clean = CLEAN.run(store, cfg.clean, {"raw": raw})
    return raw, clean, SHARD.run(store, cfg.shard, {"clean": clean})


def test_plan_reuses_what_the_store_holds_and_stops_where_told(tmp_path: Path) -> None:
    run = open_run(_spec(tmp_path), tmp_path / "artifacts")
    cfg = run.cfg
    raw, clean, shards = _data_stages(run)

    planned = {p.stage: p for p in plan(run)}
    assert [planned[s].key for s in ("download", "clean", "shard")] == [raw.key, clean.key, shards.key]
    assert _actions(planned.values()) == {"download": "reuse", "clean": "reuse", "drift": "run", "audit": "run", "shard": "reuse",
                                          "train": "run", "validate": "run", "export": "run"}
    assert planned["drift"].key is not None  # no champion yet: it compares with nothing, but it has its key
    assert planned["train"].key is not None and planned["validate"].key is None  # train's inputs are built

    assert _actions(plan(run, forced=PIPELINE.refreshed("clean"))) == {
        "download": "reuse", "clean": "run", "drift": "run", "audit": "run", "shard": "run", "train": "run", "validate": "run", "export": "run"}
    assert _actions(plan(run, until="clean")) == {
        "download": "reuse", "clean": "reuse", "drift": "skip", "audit": "skip", "shard": "skip", "train": "skip", "validate": "skip",
        "export": "skip"}
    # [audit] enabled = false leaves the audit out, saying why.
    off = {p.stage: p for p in plan(dataclasses.replace(run, cfg=dataclasses.replace(cfg, audit=cfg.audit.replace(enabled=False))))}
    assert (off["audit"].action, off["audit"].note) == ("skip", "[audit] enabled = false")

    # A run that would run a stage has no cached conclusion; one stopped at shard has, every output stored.
    assert cached_run(run)[1] is None
    planned_until, cached = cached_run(run, until="shard")
    assert _actions(planned_until)["train"] == "skip"
    assert cached == {"download": raw.with_status("cached"), "clean": clean.with_status("cached"),
                      "shard": shards.with_status("cached")}


def test_plan_of_a_partitioned_source_has_each_partition_and_the_merge(tmp_path: Path) -> None:
    lake = partitioned_parquet(tmp_path / "lake", ["2024-05-01", "2024-05-02"], per_day=20)
    run = open_run(f"parquet:{lake}", tmp_path / "artifacts", as_of=dt.date(2024, 5, 31))
    assert run.partitions == tuple(date_partitions(run.cfg.download.source))  # the run reads them up to as_of
    planned = plan(run)
    assert [(p.stage, p.partition) for p in planned[:8]] == [
        ("download", "2024-05-01"), ("clean", "2024-05-01"), ("drift", "2024-05-01"), ("audit", "2024-05-01"),
        ("download", "2024-05-02"), ("clean", "2024-05-02"), ("drift", "2024-05-02"), ("audit", "2024-05-02")]
    assert [p.stage for p in planned[8:]] == ["merge", "shard", "train", "validate", "export"]
    assert {p.action for p in planned} == {"run"}


# The keys of a small run as 8cca6cf (the code before the store, the stages' Stage and the run context
# moved) computed them: a store made then is reused, stage for stage. A deliberate change to a stage's
# output bumps its version, and then this table, with the reason in the commit.
KEYS_BEFORE_THE_MOVE = {
    "download": "fb69398b57e1592ee983",
    "clean": "3ddf096875405c0eff56",
    "shard": "4e1897a68e95c5a7dcdc",
    "audit": "7b8db2837ff509106d2f",
    "drift": "d525fe4b2434855ed730",
    "train": "9ffc8c29cc98ba2d6242",
}


def test_every_stage_key_is_the_one_an_older_store_holds(tmp_path: Path) -> None:
    from imgflow.stages.audit import AUDIT
    from imgflow.stages.drift import DRIFT
    from imgflow.stages.train import TRAIN

    run = open_run(_spec(tmp_path), tmp_path / "artifacts")
    cfg = run.cfg
    raw, clean, shards = _data_stages(run)
    keys = {
        "download": raw.key,
        "clean": clean.key,
        "shard": shards.key,
        "audit": AUDIT.key(cfg.audit, {"data": clean}),
        "drift": DRIFT.key(cfg.drift, {"data": clean}),
        "train": TRAIN.key(cfg.train, {"shards": shards}),
    }
    assert keys == KEYS_BEFORE_THE_MOVE
    assert {p.stage: p.key for p in plan(run) if p.stage in ("download", "clean", "shard", "train")} == {
        s: KEYS_BEFORE_THE_MOVE[s] for s in ("download", "clean", "shard", "train")
    }
