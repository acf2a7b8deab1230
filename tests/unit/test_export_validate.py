"""Export and validate on a real (tiny, untrained) Keras model over real shards."""

from pathlib import Path

import numpy as np
import pytest

from imgflow import registry
from imgflow.config import ExportConfig, GateConfig
from imgflow.errors import ExportMismatchError
from imgflow.promote import ChampionCheck, versus_champion
from imgflow.results import Hardware, StageResult, TrainInfo, shard_files
from imgflow.stages.export import EXPORT
from imgflow.stages.validate import VALIDATE
from imgflow.store import ArtifactStore, Stage


def _model(store: ArtifactStore, shards: StageResult, seed: int) -> StageResult:
    """A stand-in for the train stage: an untrained model with a fixed seed."""

    def build(out_dir: Path, config: dict, inputs: dict) -> TrainInfo:
        import keras

        from imgflow.models import make_model

        keras.utils.set_random_seed(seed)
        model = make_model((8, 8, 1), len(shards.info.class_names), width=4)
        model.save(out_dir / "model.keras")
        hardware = Hardware(strategy="default", precision="float32", jit_compile=False, replicas=1, workers=1, augment_on_device=False)
        return TrainInfo(epochs=0, resumed_from_epoch=0, train_records=0, parameters=model.count_params(), final={}, hardware=hardware)

    return Stage("train", "test", build).run(store, {"seed": seed}, {"shards": shards})


def test_export_gives_matching_savedmodel_and_onnx(store: ArtifactStore, shards: StageResult) -> None:
    import onnxruntime as ort
    import tensorflow as tf

    from imgflow.data import load_arrays

    result = EXPORT.run(store, ExportConfig(), {"shards": shards, "model": _model(store, shards, 0)})
    assert result.info.parity.max_abs_diff <= 1e-5 and result.info.parity.same_top1
    images, _, _ = load_arrays(shard_files(shards, "test"), (8, 8, 1))

    loaded = tf.saved_model.load(str(result.file("savedmodel")))
    as_float = loaded.signatures["serving_default"](pixels=tf.constant(images, tf.float32))["probabilities"].numpy()
    as_uint8 = loaded.signatures["serving_uint8"](pixels=tf.constant(images))["probabilities"].numpy()
    assert as_float.shape == (len(images), 10) and np.allclose(as_float.sum(1), 1, atol=1e-5)
    assert np.array_equal(as_float, as_uint8)

    session = ort.InferenceSession(str(result.file("model.onnx")))
    (onnx_input,) = session.get_inputs()
    assert onnx_input.name == "pixels" and onnx_input.shape[1:] == [8, 8, 1]
    assert session.get_outputs()[0].name == "probabilities"
    for batch in (1, 7):  # dynamic batch size
        out = session.run(None, {"pixels": images[:batch].astype(np.float32)})[0]
        assert np.abs(out - as_float[:batch]).max() <= 1e-5


def test_savedmodel_takes_encoded_image_bytes_for_tf_serving(store: ArtifactStore, shards: StageResult) -> None:
    import tensorflow as tf

    from imgflow.data import load_arrays
    from tests.conftest import encode

    result = EXPORT.run(store, ExportConfig(int8=False), {"shards": shards, "model": _model(store, shards, 0)})
    assert result.info.int8 is None and not result.file("model.int8.onnx").exists()
    images, _, _ = load_arrays(shard_files(shards, "test"), (8, 8, 1))
    signatures = tf.saved_model.load(str(result.file("savedmodel"))).signatures
    expected = signatures["serving_default"](pixels=tf.constant(images[:5], tf.float32))["probabilities"].numpy()
    png = [encode(image[..., 0]) for image in images[:5]]
    from_png = signatures["serving_bytes"](images=tf.constant(png))["probabilities"].numpy()
    assert np.abs(from_png - expected).max() <= 1e-6
    # JPEG, RGB and another size: decoded, converted to one channel and resized inside the graph.
    rgb_big = [encode(np.repeat(np.kron(image, np.ones((2, 2, 1), np.uint8)), 3, axis=2), "JPEG") for image in images[:5]]
    from_jpeg = signatures["serving_bytes"](images=tf.constant(rgb_big))["probabilities"].numpy()
    assert from_jpeg.shape == (5, 10) and np.allclose(from_jpeg.sum(1), 1, atol=1e-5)


def test_int8_variant_is_kept_only_within_the_allowed_accuracy_drop(store: ArtifactStore, shards: StageResult) -> None:
    from imgflow.inference import onnx_session

    model = _model(store, shards, 0)
    kept = EXPORT.run(store, ExportConfig(int8_max_drop=1.0), {"shards": shards, "model": model})
    int8 = kept.info.int8
    assert int8.exported and kept.file("model.int8.onnx").is_file() and int8.bytes > 0
    ops = {node.op_type for node in __import__("onnx").load(str(kept.file("model.int8.onnx"))).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert onnx_session(kept.file("model.int8.onnx")).get_inputs()[0].name == "pixels"
    # A drop no quantized model can meet (negative: it would have to be better): not exported.
    refused = EXPORT.run(store, ExportConfig(int8_max_drop=-1.0), {"shards": shards, "model": model})
    assert refused.info.int8.exported is False and not refused.file("model.int8.onnx").exists()
    assert refused.info.int8.accuracy == int8.accuracy


def test_export_refuses_exports_that_disagree(store: ArtifactStore, shards: StageResult) -> None:
    model = _model(store, shards, 0)
    with pytest.raises(ExportMismatchError, match="SavedModel and ONNX outputs differ"):
        EXPORT.run(store, ExportConfig(parity_tolerance=-1.0), {"shards": shards, "model": model})
    assert store.lookup("export", EXPORT.key(ExportConfig(parity_tolerance=-1.0), {"shards": shards, "model": model})) is None


def test_validate_compares_with_the_champion_on_the_same_test_split(store: ArtifactStore, shards: StageResult) -> None:
    import keras

    from imgflow.data import load_arrays
    from imgflow.inference import onnx_predict

    champion_model = _model(store, shards, 1)
    gate = GateConfig(min_accuracy=0.0, tolerance=0.0)
    first = VALIDATE.run(store, gate, {"shards": shards, "model": champion_model})
    assert first.info.champion_accuracy is None and first.info.champion == "none" and first.info.promote
    exported = EXPORT.run(store, ExportConfig(), {"shards": shards, "model": champion_model})
    card = {"model_fingerprint": champion_model.fingerprint, "metrics": {"accuracy": first.info.accuracy},
            "lineage": {"validate": {"key": first.key}}}
    registry.register(store.root, "digits", {"model.onnx": exported.file("model.onnx")}, card, {})
    registry.set_champion(store.root, "digits", "v1", "test")

    candidate = _model(store, shards, 2)
    check = versus_champion(store, "digits", gate, candidate, shards)
    assert check.recorded is None and check.rival is not None and check.rival.key == "v1"
    result = VALIDATE.run(store, gate, {"shards": shards, "model": candidate, "champion": check.rival})
    info = result.info
    assert info.champion == "champion v1 evaluated on the same test split"
    # Both accuracies are what the two models score on the test records, computed here independently.
    images, labels, _ = load_arrays(shard_files(shards, "test"), (8, 8, 1))
    assert info.champion_accuracy == float((onnx_predict(exported.file("model.onnx"), images).argmax(1) == labels).mean())
    candidate_model = keras.models.load_model(candidate.file("model.keras"))
    assert info.accuracy == float((candidate_model.predict(images.astype("float32"), verbose=0).argmax(1) == labels).mean())
    assert info.promote == (info.accuracy >= info.champion_accuracy)
    assert info.test_records == shards.info.splits["test"].records == len(labels)
    assert result.file("confusion_matrix.png").is_file() and "Per class" in result.file("report.md").read_text()


def test_versus_champion_reuses_the_champions_own_validation_while_it_stands(store: ArtifactStore, shards: StageResult) -> None:
    model = _model(store, shards, 1)
    gate = GateConfig(min_accuracy=0.0)
    assert versus_champion(store, "digits", gate, model, shards) == ChampionCheck()  # no champion yet
    validated = VALIDATE.run(store, gate, {"shards": shards, "model": model})
    card = {"model_fingerprint": model.fingerprint, "metrics": {"accuracy": 0.5}, "lineage": {"validate": {"key": validated.key}}}
    onnx = store.root / "model.onnx"
    onnx.write_text("not needed: the champion is not evaluated")
    registry.register(store.root, "digits", {"model.onnx": onnx}, card, {})
    registry.set_champion(store.root, "digits", "v1", "test")

    same = versus_champion(store, "digits", gate, model, shards)
    assert same.rival is None and same.recorded is not None and same.recorded.key == validated.key
    # Another gate config, or other shards: the old validation no longer stands, and there is no rival.
    assert versus_champion(store, "digits", GateConfig(min_accuracy=0.5), model, shards) == ChampionCheck()
    other_shards = shards.model_copy(update={"fingerprint": "other"})
    assert versus_champion(store, "digits", gate, model, other_shards) == ChampionCheck()
