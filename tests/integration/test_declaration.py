"""The pipeline is declared once: a step added to the declaration (``imgflow.pipeline.PIPELINE``) is
planned, run under Prefect and reported in the summary, with nothing in flows/ or tasks/ touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imgflow.config import ShardConfig
from imgflow.pipeline import PIPELINE, Pipeline, Step
from imgflow.pipeline.context import open_run
from imgflow.pipeline.walk import plan
from imgflow.results import StageResult
from imgflow.store.stage import Stage
from imgflow.store.artifacts import MANIFEST

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _census(out_dir: Path, config: Any, inputs: dict[str, StageResult]) -> dict[str, Any]:
    """A stage that only reads what the shard stage recorded and writes a note of it."""
    test = inputs["shards"].info.splits["test"].records
    (out_dir / "census.txt").write_text(f"{test} test records\n")
    return {"test_records": test}


CENSUS = Step(Stage("census", "1", _census), ShardConfig, {"shards": ("shard",)})


@pytest.fixture
def with_census(monkeypatch: pytest.MonkeyPatch) -> None:
    """The declaration with a census step after shard: what a change to ``imgflow/pipeline.py`` would make."""
    at = PIPELINE.names.index("shard") + 1
    extended = Pipeline([*PIPELINE.steps[:at], CENSUS, *PIPELINE.steps[at:]])
    monkeypatch.setattr(PIPELINE, "steps", extended.steps)
    monkeypatch.setattr(PIPELINE, "names", extended.names)


@pytest.mark.usefixtures("with_census")
def test_a_step_added_to_the_declaration_is_planned_run_and_reported(tmp_path: Path) -> None:
    from flows.train import train

    params = {"dataset": "digits", "artifacts": str(tmp_path / "artifacts"), "epochs": 1, "min_accuracy": 0.0, "limit": 400}
    run = open_run(params["dataset"], params["artifacts"], epochs=1, min_accuracy=0.0, limit=400)
    before = {p.stage: p for p in plan(run)}
    assert before["census"].action == "run" and list(before).index("census") == list(before).index("shard") + 1

    summary = train(**params)
    assert summary["stages"]["census"]["status"] == "ran"
    outputs = list((tmp_path / "artifacts" / "census").glob(f"*/{MANIFEST}"))
    assert len(outputs) == 1 and (outputs[0].parent / "census.txt").read_text().endswith("test records\n")

    after = {p.stage: p for p in plan(run)}
    assert after["census"].action == "reuse" and after["census"].key == outputs[0].parent.name
    assert train(**params)["stages"]["census"]["status"] == "cached"
