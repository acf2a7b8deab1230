"""The declared pipeline: its graph (what --refresh and --until take), and ``plan`` against a real store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imgflow.config import build_run_config
from imgflow.runtime.errors import ConfigError
from imgflow.data.partitions import date_partitions
from imgflow.pipeline import ORDER, PIPELINE
from imgflow.pipeline.walk import cached_run, plan
from imgflow.data.sources import source_fingerprint
from imgflow.store.artifacts import ArtifactStore
from tests.helpers import partitioned_parquet


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
    cfg = build_run_config(_spec(tmp_path), tmp_path / "artifacts")
    planned = plan(cfg)
    assert _actions(planned) == dict.fromkeys(("download", "clean", "drift", "audit", "shard", "train", "validate", "export"), "run")
    download = planned[0]
    from imgflow.stages.download import DOWNLOAD

    assert download.key == DOWNLOAD.key(cfg.download, {"source": source_fingerprint(cfg.download.source)})
    assert [p.key for p in planned[1:]] == [None] * 7
    assert planned[-1].note == "if the gate promotes the candidate"
    assert not (tmp_path / "artifacts").exists()  # planning writes nothing


def test_plan_reuses_what_the_store_holds_and_stops_where_told(tmp_path: Path) -> None:
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD

    cfg = build_run_config(_spec(tmp_path), tmp_path / "artifacts")
    store = ArtifactStore(cfg.artifacts)
    raw = DOWNLOAD.run(store, cfg.download, {"source": source_fingerprint(cfg.download.source)})
    clean = CLEAN.run(store, cfg.clean, {"raw": raw})
    shards = SHARD.run(store, cfg.shard, {"clean": clean})

    planned = {p.stage: p for p in plan(cfg)}
    assert [planned[s].key for s in ("download", "clean", "shard")] == [raw.key, clean.key, shards.key]
    assert _actions(planned.values()) == {"download": "reuse", "clean": "reuse", "drift": "run", "audit": "run", "shard": "reuse",
                                          "train": "run", "validate": "run", "export": "run"}
    assert planned["drift"].key is not None  # no champion yet: it compares with nothing, but it has its key
    assert planned["train"].key is not None and planned["validate"].key is None  # train's inputs are built

    assert _actions(plan(cfg, forced=PIPELINE.refreshed("clean"))) == {
        "download": "reuse", "clean": "run", "drift": "run", "audit": "run", "shard": "run", "train": "run", "validate": "run", "export": "run"}
    assert _actions(plan(cfg, until="clean")) == {
        "download": "reuse", "clean": "reuse", "drift": "skip", "audit": "skip", "shard": "skip", "train": "skip", "validate": "skip",
        "export": "skip"}
    # [audit] enabled = false leaves the audit out, saying why.
    off = {p.stage: p for p in plan(dataclasses.replace(cfg, audit=cfg.audit.replace(enabled=False)))}
    assert (off["audit"].action, off["audit"].note) == ("skip", "[audit] enabled = false")

    # A run that would run a stage has no cached conclusion; one stopped at shard has, every output stored.
    assert cached_run(cfg)[1] is None
    planned_until, cached = cached_run(cfg, until="shard")
    assert _actions(planned_until)["train"] == "skip"
    assert cached == {"download": raw.with_status("cached"), "clean": clean.with_status("cached"),
                      "shard": shards.with_status("cached")}


def test_plan_of_a_partitioned_source_has_each_partition_and_the_merge(tmp_path: Path) -> None:
    lake = partitioned_parquet(tmp_path / "lake", ["2024-05-01", "2024-05-02"], per_day=20)
    cfg = build_run_config(f"parquet:{lake}", tmp_path / "artifacts")
    planned = plan(cfg, partitions=date_partitions(cfg.download.source))
    assert [(p.stage, p.partition) for p in planned[:8]] == [
        ("download", "2024-05-01"), ("clean", "2024-05-01"), ("drift", "2024-05-01"), ("audit", "2024-05-01"),
        ("download", "2024-05-02"), ("clean", "2024-05-02"), ("drift", "2024-05-02"), ("audit", "2024-05-02")]
    assert [p.stage for p in planned[8:]] == ["merge", "shard", "train", "validate", "export"]
    assert {p.action for p in planned} == {"run"}
