"""export: SavedModel and ONNX from a real (tiny, untrained) Keras model over real shards."""


import numpy as np
import pytest

from imgflow.config import ExportConfig
from imgflow.runtime.errors import ExportMismatchError
from imgflow.results import StageResult, shard_files
from imgflow.stages.export import EXPORT
from imgflow.store.artifacts import ArtifactStore
from tests.conftest import untrained_model


def test_export_gives_matching_savedmodel_and_onnx(store: ArtifactStore, shards: StageResult) -> None:
    import onnxruntime as ort
    import tensorflow as tf

    from imgflow.training.inputs import load_arrays

    # Any int8 accuracy kept: an untrained model's is noise, and its int8 model is checked below.
    result = EXPORT.run(store, ExportConfig(int8_max_drop=1.0), {"shards": shards, "model": untrained_model(store, shards, 0)})
    assert result.info.parity.max_abs_diff <= 1e-5 and result.info.parity.same_top1
    images, _, _, _ = load_arrays(shard_files(shards, "test"), (8, 8, 1))

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

    # Its view of the held-out records (what drift checks compare with): the val split, then the test split.
    from imgflow.serving.views import read_view

    view = read_view(result.file("reference.npz"))
    val_images, val_labels, _, _ = load_arrays(shard_files(shards, "val"), (8, 8, 1))
    assert len(view) == shards.info.splits["val"].records + shards.info.splits["test"].records
    assert view.embeddings.shape[0] == len(view) and view.embeddings.shape[1] > 1 and view.class_names == shards.info.class_names
    assert np.array_equal(view.labels[: len(val_labels)], val_labels)
    assert np.array_equal(view.predicted[: len(val_labels)], session.run(None, {"pixels": val_images.astype(np.float32)})[0].argmax(1))


def test_savedmodel_takes_encoded_image_bytes_for_tf_serving(store: ArtifactStore, shards: StageResult) -> None:
    import tensorflow as tf

    from imgflow.training.inputs import load_arrays
    from tests.conftest import encode

    result = EXPORT.run(store, ExportConfig(int8=False), {"shards": shards, "model": untrained_model(store, shards, 0)})
    assert result.info.int8 is None and not result.file("model.int8.onnx").exists()
    images, _, _, _ = load_arrays(shard_files(shards, "test"), (8, 8, 1))
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
    from imgflow.serving.inference import onnx_session

    model = untrained_model(store, shards, 0)
    kept = EXPORT.run(store, ExportConfig(int8_max_drop=1.0), {"shards": shards, "model": model})
    int8 = kept.info.int8
    assert int8.exported and kept.file("model.int8.onnx").is_file() and int8.bytes > 0
    ops = {node.op_type for node in __import__("onnx").load(str(kept.file("model.int8.onnx"))).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert onnx_session(kept.file("model.int8.onnx")).get_inputs()[0].name == "pixels"
    # A drop no quantized model can meet (negative, which no spec may set): not exported.
    refused = EXPORT.run(store, ExportConfig.model_construct(int8_max_drop=-1.0), {"shards": shards, "model": model})
    assert refused.info.int8.exported is False and not refused.file("model.int8.onnx").exists()
    assert refused.info.int8.accuracy == int8.accuracy


def test_export_refuses_exports_that_disagree(store: ArtifactStore, shards: StageResult) -> None:
    model = untrained_model(store, shards, 0)
    with pytest.raises(ExportMismatchError, match="SavedModel and ONNX outputs differ"):
        EXPORT.run(store, ExportConfig.model_construct(parity_tolerance=-1.0), {"shards": shards, "model": model})
    assert store.lookup("export", EXPORT.key(ExportConfig.model_construct(parity_tolerance=-1.0), {"shards": shards, "model": model})) is None


def test_the_int8_models_weights_fit_in_7_bits_so_no_cpu_without_vnni_saturates(store: ArtifactStore, shards: StageResult) -> None:
    """Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with ``vpmaddubsw``, whose
    16-bit sum of two products saturates beyond 32,767: 2 x 255 x 127 can, 2 x 255 x 64 cannot. Every
    quantized weight of the exported int8 model lies in [-64, 64], whatever CPU exported it, and the
    info says which instructions its accuracy check ran on."""
    import onnx
    from onnx import numpy_helper

    from imgflow.serving.inference import int8_instructions

    result = EXPORT.run(store, ExportConfig(int8_max_drop=1.0), {"shards": shards, "model": untrained_model(store, shards, 1)})
    int8 = result.info.int8
    assert int8 is not None and int8.exported and int8.reduce_range and int8.checked_on == int8_instructions()
    graph = onnx.load(str(result.file("model.int8.onnx"))).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    weights = [initializers[node.input[0]] for node in graph.node
               if node.op_type == "DequantizeLinear" and initializers.get(node.input[0], np.zeros(0, np.float32)).dtype == np.int8]
    assert len(weights) >= 3  # the convolutions' and the dense layer's
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_the_int8_instructions_are_read_from_the_cpus_flags(tmp_path) -> None:
    from imgflow.serving.inference import int8_instructions

    cpuinfo = tmp_path / "cpuinfo"
    for flags, words in (("fpu avx2 avx512f avx512_vnni amx_int8", "AMX"), ("avx2 avx512f avx512_vnni", "AVX-512 VNNI"),
                         ("sse4_2 avx2 fma", "AVX2, no VNNI"), ("sse4_2", "SSE, no AVX2")):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert int8_instructions(cpuinfo) == f"x86-64, {words}"
    assert int8_instructions(tmp_path / "missing").endswith(", unknown")
