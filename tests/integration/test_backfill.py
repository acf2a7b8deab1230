"""Backfills over date partitions of a real Parquet table: per-partition caching, Dask, concurrency,
events, and parameter validation."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgflow.data.synthetic import partitioned_parquet

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
DAYS = ["2024-05-01", "2024-05-02", "2024-05-03"]
D = dt.date.fromisoformat


def _events(prefix: str, resource: str, count: int) -> list:
    """The events named ``prefix...`` about ``resource``, once the server has stored ``count`` of them
    (or after 20 s)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)
    wanted = EventFilter(event=EventNameFilter(prefix=[prefix]), resource=EventResourceFilter(id=[resource]))
    with get_client(sync_client=True) as client:
        for _ in range(40):  # the server stores events asynchronously
            events = client.read_events(wanted, limit=50).events
            if len(events) >= count:
                break
            time.sleep(0.5)
    return events


def test_backfill_caches_each_partition_and_runs_them_on_dask(tmp_path: Path) -> None:
    """Slow by nature (about 30 s): backfills on a real local Dask cluster of two worker processes,
    then more days, each run checking what was cached."""
    from prefect_dask import DaskTaskRunner

    from flows.backfill import backfill

    lake = partitioned_parquet(tmp_path / "lake", DAYS, per_day=300)
    artifacts = str(tmp_path / "artifacts")
    params = {"dataset": f"parquet:{lake}", "artifacts": artifacts, "epochs": 2, "min_accuracy": 0.0}

    on_dask = backfill.with_options(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "processes": True}))
    first = on_dask(start=D(DAYS[0]), end=D(DAYS[1]), **params)
    assert first["partitions"] == {DAYS[0]: "ran", DAYS[1]: "ran"}
    assert first["stages"]["clean"]["records_in"] == 600 == first["stages"]["clean"]["kept"] + first["stages"]["clean"]["quarantined"]
    assert first["decision"] == "promoted" and first["version"] == "v1"

    more = backfill(start=D(DAYS[0]), end=D(DAYS[2]), **params)
    assert more["partitions"] == {DAYS[0]: "cached", DAYS[1]: "cached", DAYS[2]: "ran"}
    assert more["stages"]["clean"]["records_in"] == 900
    # The gate compared it with the champion (v1) on the new, larger test split, and decided by the numbers.
    assert more["stages"]["train"]["status"] == "ran"
    accuracy, champion = more["metrics"]["accuracy"], more["metrics"]["champion_accuracy"]
    assert champion is not None and more["metrics"]["test_records"] > first["metrics"]["test_records"]
    paired = more["metrics"]["paired"]  # the same test records, both models: McNemar's p-values and the disagreements
    assert set(paired) == {"p_worse", "p_better", "candidate_only", "champion_only"} and 0 <= paired["p_worse"] <= 1
    # The new day is of the same data: compared with the champion's, nothing drifted (no false alarm);
    # the days the champion learned from are nothing new.
    assert more["drift"]["flagged"] == []
    assert {day: entry["compared"] for day, entry in more["drift"]["checks"].items()} == {DAYS[0]: False, DAYS[1]: False, DAYS[2]: True}
    # Each day is audited: the new one through the champion's embeddings (it did not learn from that day).
    embeddings = {day: entry["embeddings"] for day, entry in more["audit"]["checks"].items()}
    assert set(embeddings) == set(DAYS) and embeddings[DAYS[2]] == "champion v1's penultimate layer", embeddings
    assert embeddings[DAYS[0]].startswith("pixels") and more["stages"]["audit"]["partitions"] == 3
    refused = any(reason.startswith(("significantly worse", "class ")) for reason in more["reasons"])
    assert more["decision"] == ("promoted" if accuracy >= champion - 0.005 and not refused else "rejected"), more["reasons"]

    again = backfill(start=D(DAYS[0]), end=D(DAYS[2]), **params)
    assert set(again["partitions"].values()) == {"cached"}
    # Nothing is built again; only the drift checks and the audit run again when the champion changed
    # (against its data, through its embeddings).
    assert {entry["status"] for stage, entry in again["stages"].items() if stage not in ("drift", "audit")} <= {"cached", "skipped"}
    assert again["stages"]["drift"]["status"] == ("ran" if more["decision"] == "promoted" else "cached")
    assert again["stages"]["audit"]["status"] == ("ran" if more["decision"] == "promoted" else "cached")

    events = _events("imgflow.model.", "imgflow.model.lake", 3)
    # One event per gate decision, carrying the run's numbers: v1's first, then the bigger backfill's (twice).
    seen = sorted((e.event, e.payload["version"], e.payload["accuracy"]) for e in events)
    later = (f"imgflow.model.{more['decision']}", more["version"], accuracy)
    assert seen == sorted([("imgflow.model.promoted", "v1", first["metrics"]["accuracy"]), later, later])


def test_a_partition_of_inverted_images_is_flagged_and_refused_with_a_report_and_an_event(tmp_path: Path) -> None:
    from flows.backfill import backfill

    lake = partitioned_parquet(tmp_path / "lake", DAYS, per_day=200, invert=[DAYS[2]])
    spec = tmp_path / "lake.toml"
    spec.write_text(f'source = "parquet:{lake}"\n[gate]\nmin_accuracy = 0.0\nmax_drift = "refuse"\nslice_by = "date"\n')
    params = {"dataset": str(spec), "artifacts": str(tmp_path / "a"), "epochs": 2}
    first = backfill(start=D(DAYS[0]), end=D(DAYS[1]), **params)
    assert first["decision"] == "promoted" and first["drift"]["flagged"] == []  # no champion: nothing compared

    more = backfill(start=D(DAYS[0]), end=D(DAYS[2]), **params)
    assert more["drift"]["flagged"] == [DAYS[2]]
    entry = more["drift"]["checks"][DAYS[2]]
    assert entry["reference"] == "v1" and "brightness" in {reason.split(":")[0] for reason in entry["reasons"]}
    assert more["decision"] == "rejected" and more["version"] is None
    assert any(reason.startswith(f"partition {DAYS[2]} drifted") and "refused" in reason for reason in more["reasons"])
    # Accuracy per date partition (slice_by), the candidate's and the champion's on the same records.
    slices = more["metrics"]["slices"]
    assert list(slices) == DAYS and sum(row["records"] for row in slices.values()) == more["metrics"]["test_records"]
    assert all(row["champion_accuracy"] is not None for row in slices.values())
    page = Path(entry["report"]).read_text()
    assert "DRIFT" in page.upper() and "data:image/png;base64," in page  # the shifted histograms, inline
    (event,) = _events("imgflow.data.drifted", f"imgflow.data.{more['model']}.{DAYS[2]}", 1)
    assert event.payload["partition"] == DAYS[2] and event.payload["max_drift"] == "refuse"


def test_a_scheduled_retrain_of_a_partitioned_source_reads_up_to_its_date(tmp_path: Path, capsys) -> None:
    from flows.cli import main
    from flows.train import train

    lake = partitioned_parquet(tmp_path / "lake", DAYS, per_day=200)
    params = {"dataset": f"parquet:{lake}", "artifacts": str(tmp_path / "a"), "epochs": 1, "min_accuracy": 0.0, "as_of": D(DAYS[1])}
    summary = train(**params)
    assert summary["partitions"] == {DAYS[0]: "ran", DAYS[1]: "ran"}
    assert summary["stages"]["merge"]["status"] == "ran"
    assert summary["stages"]["clean"]["records_in"] == 400 and summary["stages"]["clean"]["partitions"] == 2

    # The merged table is a stage output like any other: listed, and kept by the run log.
    assert main(["cache", "ls", "--artifacts", str(tmp_path / "a")]) == 0
    listing = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["merge", summary["stages"]["merge"]["key"]] in [row[:2] for row in listing]
    # --refresh clean cleans every partition again, and so merges again (same content: same keys).
    again = train(**params, refresh="clean")
    assert {s: again["stages"][s]["status"] for s in ("download", "clean", "merge", "shard")} == {
        "download": "cached", "clean": "ran", "merge": "ran", "shard": "ran"}
    assert again["stages"]["merge"]["key"] == summary["stages"]["merge"]["key"]


def test_flow_parameters_are_validated_before_anything_runs(tmp_path: Path) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.backfill import backfill
    from flows.train import train

    with pytest.raises(ParameterTypeError, match="epochs"):
        train(dataset="digits", artifacts=str(tmp_path), epochs=0)
    with pytest.raises(ParameterTypeError, match="min_accuracy"):
        train(dataset="digits", artifacts=str(tmp_path), min_accuracy=1.5)
    with pytest.raises(ParameterTypeError, match="refresh"):
        train(dataset="digits", artifacts=str(tmp_path), refresh="everything")
    with pytest.raises(ParameterTypeError, match="start"):
        backfill(dataset="parquet:x", start="May 1st", end="2024-05-02", artifacts=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_two_backfills_at_once_are_safe(tmp_path: Path) -> None:
    """Slow by nature (about 40 s): two whole backfills race, each with its own temporary server."""
    lake = partitioned_parquet(tmp_path / "lake", DAYS[:2], per_day=200)
    command = [sys.executable, "-m", "flows.cli", "backfill", "--dataset", f"parquet:{lake}", "--start", DAYS[0],
               "--end", DAYS[1], "--epochs", "1", "--min-accuracy", "0", "--artifacts", str(tmp_path / "a"), "--json"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # each starts its own temporary server
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    # Every output was built by one of the two and reused by the other: no stage output is built twice
    # (a partition may show "ran" in both when one built its download and the other its clean).
    logs = outputs[0][1] + outputs[1][1]
    for stage in ("download", "clean", "merge", "shard", "train"):
        built = re.findall(rf"{stage} ran -> (\S+)", logs)
        assert built and len(built) == len(set(built)), (stage, built)
    for stage, count in (("download", 2), ("clean", 2), ("merge", 1), ("train", 1)):
        assert len(list((tmp_path / "a" / stage).glob("*/manifest.json"))) == count, stage
    for day in DAYS[:2]:
        assert "ran" in {s["partitions"][day] for s in summaries}
    assert {s["version"] for s in summaries} == {"v1"}
    assert summaries[0]["stages"]["train"]["key"] == summaries[1]["stages"]["train"]["key"]
