"""validate: the candidate and the champion on the same test split, and the gate's decision."""

from __future__ import annotations

from imgflow.registry import versions as registry
from imgflow.config import ExportConfig, GateConfig
from imgflow.registry.promote import versus_champion
from imgflow.results import StageResult, shard_files
from imgflow.stages.export import EXPORT
from imgflow.stages.validate import VALIDATE
from imgflow.store.artifacts import ArtifactStore
from tests.conftest import untrained_model


def test_validate_compares_with_the_champion_on_the_same_test_split(store: ArtifactStore, shards: StageResult) -> None:
    import keras

    from imgflow.training.inputs import load_arrays
    from imgflow.serving.inference import onnx_predict

    champion_model = untrained_model(store, shards, 1)
    gate = GateConfig(min_accuracy=0.0, tolerance=0.0)
    first = VALIDATE.run(store, gate, {"shards": shards, "model": champion_model})
    assert first.info.champion_accuracy is None and first.info.champion == "none" and first.info.promote
    exported = EXPORT.run(store, ExportConfig(), {"shards": shards, "model": champion_model})
    card = {"model_fingerprint": champion_model.fingerprint, "metrics": {"accuracy": first.info.accuracy},
            "lineage": {"validate": {"key": first.key}}}
    registry.register(store.folder, "digits", {"model.onnx": exported.file("model.onnx")}, card, {})
    registry.set_champion(store.folder, "digits", "v1", "test")

    candidate = untrained_model(store, shards, 2)
    check = versus_champion(store, "digits", gate, candidate, shards)
    assert check.recorded is None and check.rival is not None and check.rival.key == "v1"
    result = VALIDATE.run(store, gate, {"shards": shards, "model": candidate, "champion": check.rival})
    info = result.info
    assert info.champion == "champion v1 evaluated on the same test split"
    # Both accuracies are what the two models score on the test records, computed here independently.
    images, labels, _, _ = load_arrays(shard_files(shards, "test"), (8, 8, 1))
    assert info.champion_accuracy == float((onnx_predict(exported.file("model.onnx"), images).argmax(1) == labels).mean())
    candidate_model = keras.models.load_model(candidate.file("model.keras"))
    assert info.accuracy == float((candidate_model.predict(images.astype("float32"), verbose=0).argmax(1) == labels).mean())
    refused = any(reason.startswith(("significantly worse", "class ")) for reason in info.reasons)  # the paired test
    assert info.promote == (info.accuracy >= info.champion_accuracy and not refused)
    assert info.paired is not None and info.paired.candidate_only + info.paired.champion_only <= info.test_records
    assert info.test_records == shards.info.splits["test"].records == len(labels)
    assert result.file("confusion_matrix.png").is_file() and "Per class" in result.file("report.md").read_text()
    from tensorboard.backend.event_processing import event_accumulator

    board = event_accumulator.EventAccumulator(str(result.file("tensorboard")), size_guidance={"tensors": 0})
    board.Reload()
    assert {"confusion_matrix", "most_confident_mistakes"} <= set(board.Tags()["tensors"])
