"""Promotion's decision of champion against candidate (``versus_champion``); registering and moving
the pointer are in test_registry."""

from __future__ import annotations

from imgflow.registry import versions as registry
from imgflow.config import GateConfig
from imgflow.registry.promote import ChampionCheck, versus_champion
from imgflow.results import StageResult
from imgflow.stages.validate import VALIDATE
from imgflow.store.artifacts import ArtifactStore
from tests.conftest import untrained_model


def test_versus_champion_reuses_the_champions_own_validation_while_it_stands(store: ArtifactStore, shards: StageResult) -> None:
    model = untrained_model(store, shards, 1)
    gate = GateConfig(min_accuracy=0.0)
    assert versus_champion(store, "digits", gate, model, shards) == ChampionCheck()  # no champion yet
    validated = VALIDATE.run(store, gate, {"shards": shards, "model": model})
    card = {"model_fingerprint": model.fingerprint, "metrics": {"accuracy": 0.5}, "lineage": {"validate": {"key": validated.key}}}
    onnx = store.folder / "model.onnx"
    onnx.write_text("not needed: the champion is not evaluated")
    registry.register(store.folder, "digits", {"model.onnx": onnx}, card, {})
    registry.set_champion(store.folder, "digits", "v1", "test")

    same = versus_champion(store, "digits", gate, model, shards)
    assert same.rival is None and same.recorded is not None and same.recorded.key == validated.key
    # Another gate config, or other shards: the old validation no longer stands, and there is no rival.
    assert versus_champion(store, "digits", GateConfig(min_accuracy=0.5), model, shards) == ChampionCheck()
    other_shards = shards.model_copy(update={"fingerprint": "other"})
    assert versus_champion(store, "digits", gate, model, other_shards) == ChampionCheck()
