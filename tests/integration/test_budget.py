"""A run with a time budget, on a slice of the real MNIST sample: the recipe plans training from the
data and a speed probe's record, races its candidates (a CNN from scratch against EfficientNet-Lite0's
frozen ImageNet features: on handwritten digits the features lose, measured), the run keeps its budget,
a spec's own settings win, and a rerun reuses the model the race trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUDGET = 90  # seconds
# What the speed probe measured on a quiet 2-core AMD EPYC (Zen 4) for 28x28 digits: seconds per
# training image of the CNN (a fixed part and a part per multiply) and of Lite0's features by input size.
EPYC_SPEEDS = {
    "overhead": 2.5e-4,
    "per_mac": 3.15e-11,
    "batch": 128,
    "features": {"128": 0.0056, "160": 0.0077, "192": 0.0102, "224": 0.0132},
    "seconds": 8.9,
    "resnet_overhead": None,
}


@pytest.mark.wall_clock  # make test runs it alone: beside other workers' servers and training its export took 41 s, not 2 s
def test_a_budgeted_run_keeps_its_budget_and_a_rerun_reuses_its_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow by nature (about 90 s): a budgeted run spends its budget (a race, then training until the
    budget's end), which is what it checks."""
    from flows.train import train
    from imgflow.pipeline.context import open_run
    from imgflow.pipeline.walk import plan

    monkeypatch.setenv("IMGFLOW_CACHE", str(tmp_path / "cache"))  # a machine that has never been probed
    spec = tmp_path / "digits.toml"
    spec.write_text(
        'source = "sample:mnist5k"\nlimit = 1000\n\n[clean]\nimage_size = [28, 28]\nchannels = 1\n'
        "test_fraction = 0.2\nval_fraction = 0.06\n\n[train]\nwidth = 16\n\n[gate]\nmin_accuracy = 0.0\n"
    )
    artifacts = tmp_path / "artifacts"
    run = open_run(str(spec), artifacts, budget=f"{BUDGET}s")
    train(dataset=str(spec), artifacts=str(artifacts), budget=f"{BUDGET}s", until="shard")
    before = {p.stage: p for p in plan(run)}
    assert before["train"].key is None and "recipe" in before["train"].note  # the data is built, this machine not measured
    # The speeds the recipe plans from: a quiet 2-core EPYC's, as its probe measured them. Measured here,
    # under the suite's other workers, they vary enough to change which candidates fit the 90 s (the
    # probe's own measuring is tested in tests/unit/test_recipe.py); what the race then decides is
    # measured for real.
    from imgflow.training.probe import cache_path, data_stats

    shards = run.store.lookup("shard", before["shard"].key)
    assert shards is not None
    seeded = cache_path(data_stats(shards))
    seeded.parent.mkdir(parents=True, exist_ok=True)
    seeded.write_text(json.dumps(EPYC_SPEEDS))

    first = train(dataset=str(spec), artifacts=str(artifacts), budget=f"{BUDGET}s")
    budget = first["budget"]
    assert budget["budget_seconds"] == BUDGET
    assert first["seconds"] <= 1.1 * BUDGET, first["seconds"]  # kept within 10%
    assert budget["within"] == (first["seconds"] <= BUDGET)
    assert any(line.startswith("width = 16") for line in budget["plan"])  # the spec's width wins
    assert any(line.startswith("schedule = \"linear\"") for line in budget["plan"])
    train_dir = Path(first["stages"]["train"]["path"])
    manifest = json.loads((train_dir / "manifest.json").read_text())
    chosen = manifest["config"]
    assert chosen["width"] == 16 and chosen["schedule"] == "linear" and chosen["flip"] == "none"  # digits: no mirrors
    assert manifest["info"]["plan"] == budget["plan"]
    assert manifest["info"]["deadline"] == budget["training_seconds"] > 0
    # The race: both candidates measured on the validation split, the winner the better one, and why.
    race = {entry["candidate"]: entry for entry in budget["race"]}
    assert set(race) == {"cnn-w16", "lite0-frozen-128px"}, race
    assert all(0 <= entry["val_accuracy"] <= 1 and entry["seconds"] > 0 and entry["rungs"] for entry in race.values())
    assert race["cnn-w16"]["winner"] and not race["lite0-frozen-128px"]["winner"]  # ImageNet features lose on digits
    assert race["cnn-w16"]["val_accuracy"] >= race["lite0-frozen-128px"]["rungs"][0]["val_accuracy"]
    assert budget["winner"]["candidate"] == "cnn-w16" and "best val_accuracy" in budget["winner"]["reason"]
    assert manifest["info"]["race"] == budget["race"]
    # The budget is spent unless validation stopped improving first; the summary says which.
    assert budget["stopped"] in ("its planned steps were done", "out of time", "validation stopped improving")
    assert budget["used"] == round(first["seconds"] / BUDGET, 3)
    # Not 85%: under the suite's other workers the last rung, planned from its first rung's speed
    # measured under load, ran faster and ended early (83% and 78% of the 90 s seen; 100% quiet).
    if budget["stopped"] != "validation stopped improving":
        assert first["seconds"] >= 0.7 * BUDGET, (first["seconds"], budget["stopped"])
    if first["decision"] == "promoted":
        card = json.loads((Path(first["artifacts"]["registry"]) / "card.json").read_text())
        assert card["training"]["plan"] == budget["plan"]  # the model card records the plan

    # The probe and the data's statistics are cached: planning now knows the train key, and a rerun
    # reuses every stage, training included.
    after = {p.stage: p for p in plan(run)}
    assert after["train"].action == "reuse" and after["train"].key == first["stages"]["train"]["key"]
    second = train(dataset=str(spec), artifacts=str(artifacts), budget=f"{BUDGET}s")
    assert second["stages"]["train"]["status"] == "cached"
    assert second["stages"]["train"]["key"] == first["stages"]["train"]["key"]
