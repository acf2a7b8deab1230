"""export: the trained model as a SavedModel and an ONNX model, checked to give the same answers.

Output folder::

    savedmodel/       TensorFlow SavedModel; signatures ``serving_default`` (float32 pixels) and
                      ``serving_uint8`` (uint8 pixels), both (N, H, W, C) in 0..255, and
                      ``serving_bytes`` (a batch of encoded PNG/JPEG/GIF/BMP files, decoded, converted
                      and resized inside the graph: ready for TF Serving), all returning
                      {"probabilities": float32 (N, classes)}
    model.onnx        the same model for ONNX Runtime: input "pixels" float32 (N, H, W, C) in 0..255
                      (dynamic batch), output "probabilities"; opset in the info
    model.int8.onnx   the int8-quantized ONNX model (static QDQ quantization calibrated on the
                      validation split, weights in 7 bits: see ``_quantize``), only when its test
                      accuracy is within ``int8_max_drop`` of the float model's; the info says both
                      accuracies and the CPU instructions the check ran on, either way
    parity.json       the largest absolute difference between SavedModel and ONNX on a batch of test
                      images
    reference.npz     the model's view of up to 1,000 held-out records (val, then test): its penultimate
                      layer's embeddings, predictions and labels (``imgflow.serving.views``), what
                      drift checks compare new data with once it is the champion
    vocabulary.txt    a model with text: its vocabulary (``imgflow.data.text``), which the ONNX model's
                      token ids index

A model with text takes text too: every SavedModel signature has a second input, ``text`` (a batch of
raw strings, tokenized inside the graph by the training encoder: ``serving_default(pixels, text)``,
``serving_bytes(images, text)``), and the ONNX model a second input ``tokens`` (int32 (N, length)
token ids: ONNX Runtime gets them from ``imgflow.serving.inference.OnnxModel``, which runs that same encoder on
the vocabulary file, so training and prediction share one tokenizer).

Both exports run on the same test batch (with its texts); a difference above the tolerance fails the
stage, so a model whose exports disagree is never promoted.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.config import ExportConfig
from imgflow.data.text import VOCABULARY_FILE, TextEncoder, read_vocabulary
from imgflow.results import ExportInfo, Int8, Parity, ShardInfo, StageResult, shard_files
from imgflow.runtime.errors import ExportMismatchError
from imgflow.serving.inference import OnnxModel, int8_instructions, quantize_int8
from imgflow.serving.views import HELD_OUT, REFERENCE_FILE, REFERENCE_RECORDS, model_view
from imgflow.store.files import write_json_atomic
from imgflow.store.stage import Stage


def _build(out_dir: Path, config: ExportConfig, inputs: Mapping[str, StageResult]) -> ExportInfo:
    import keras
    import tensorflow as tf

    from imgflow.training.inputs import load_arrays
    from imgflow.training.models import load_model

    shards = inputs["shards"]
    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    model = load_model(inputs["model"].file("model.keras"), compile=False)
    encoder = None
    if isinstance(model.input, dict):
        shutil.copy2(inputs["model"].file(VOCABULARY_FILE), out_dir / VOCABULARY_FILE)
        encoder = TextEncoder(read_vocabulary(out_dir / VOCABULARY_FILE), int(model.input["tokens"].shape[1]))

    float_spec = tf.TensorSpec([None, *shape], tf.float32, name="pixels")
    text_spec = [tf.TensorSpec([None], tf.string, name="text")] if encoder is not None else []

    def probabilities(pixels: tf.Tensor, *text: tf.Tensor) -> dict[str, tf.Tensor]:
        if encoder is None:
            return {"probabilities": model(pixels, training=False)}
        return {"probabilities": model({"pixels": pixels, "tokens": encoder(text[0])}, training=False)}

    def decode_all(images: tf.Tensor) -> tf.Tensor:
        def decode(data: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(data, channels=shape[2], expand_animations=False)
            return tf.image.resize(image, shape[:2])

        return tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec(shape, tf.float32))

    # The other signatures call ``serve``: the model is traced once, not once per signature.
    serve = tf.function(probabilities, input_signature=[float_spec, *text_spec])
    serve_uint8 = tf.function(
        lambda pixels, *text: serve(tf.cast(pixels, tf.float32), *text),
        input_signature=[tf.TensorSpec([None, *shape], tf.uint8, name="pixels"), *text_spec],
    )
    serve_bytes = tf.function(
        lambda images, *text: serve(decode_all(images), *text),
        input_signature=[tf.TensorSpec([None], tf.string, name="images"), *text_spec],
    )
    onnx_path = out_dir / "model.onnx"
    _to_onnx(model, serve, float_spec, onnx_path, config.opset)
    parity_records = load_arrays(shard_files(shards, "test"), shape, limit=config.parity_batch, text=encoder is not None)
    batch, texts = parity_records.images.astype(np.float32), parity_records.texts
    step = _check_batch(shape)

    # The ONNX side (its half of the parity check, then the int8 model) runs on a thread while this one
    # writes and reloads the SavedModel: ONNX Runtime computes without the GIL. A parity mismatch fails the stage all the same, and
    # a failed stage's folder, int8 model included, is never published.
    def onnx_side() -> tuple[np.ndarray, Int8 | None]:
        from_onnx = OnnxModel(onnx_path, keep_memory=False)(batch, texts, batch_size=step)
        _reference(onnx_path, shards, encoder is not None, out_dir / REFERENCE_FILE)
        return from_onnx, (_quantize(onnx_path, out_dir / "model.int8.onnx", shards, config) if config.int8 else None)

    with ThreadPoolExecutor(1, thread_name_prefix="export-onnx") as pool:
        onnx_future = pool.submit(onnx_side)
        archive = keras.export.ExportArchive()
        archive.track(model)
        if encoder is not None:
            encoder([""])  # builds the lookup layer, which an export takes only built
            archive.track(encoder.lookup)  # the vocabulary travels inside the SavedModel
        archive.add_endpoint("serving_default", serve)
        archive.add_endpoint("serving_uint8", serve_uint8)
        archive.add_endpoint("serving_bytes", serve_bytes)
        archive.write_out(str(out_dir / "savedmodel"), verbose=False)
        loaded = tf.saved_model.load(str(out_dir / "savedmodel")).signatures["serving_default"]
        from_savedmodel = np.concatenate(
            [
                loaded(
                    pixels=tf.constant(batch[i : i + step]), **({"text": tf.constant(texts[i : i + step])} if texts is not None else {})
                )["probabilities"].numpy()
                for i in range(0, len(batch), step)
            ]
        )
        from_onnx, int8 = onnx_future.result()
    max_diff = float(np.abs(from_savedmodel - from_onnx).max())
    parity = Parity(
        max_abs_diff=max_diff,
        tolerance=config.parity_tolerance,
        batch=len(batch),
        same_top1=bool((from_savedmodel.argmax(1) == from_onnx.argmax(1)).all()),
    )
    write_json_atomic(out_dir / "parity.json", parity)
    if not max_diff <= config.parity_tolerance:
        raise ExportMismatchError(
            f"SavedModel and ONNX outputs differ by {max_diff:.3g} (> {config.parity_tolerance:g}) "
            f"on {len(batch)} test images: refusing to promote {inputs['model'].path}"
        )
    return ExportInfo(opset=config.opset, parity=parity, int8=int8)


def _reference(onnx_path: Path, shards: StageResult, text: bool, path: Path) -> None:
    """The model's view of held-out records (``imgflow.serving.views``), written to ``path``."""
    from imgflow.training.inputs import iter_batches

    assert isinstance(shards.info, ShardInfo), shards.stage
    names, shape = shards.info.class_names, tuple(shards.info.image_shape)
    files = [file for split in HELD_OUT for file in shard_files(shards, split)]
    batches = (
        (images, [names[i] for i in labels], texts) for images, labels, _, texts in iter_batches(files, shape, _check_batch(shape), text)
    )
    model_view(OnnxModel(onnx_path, keep_memory=False, embeddings=True), names, batches, REFERENCE_RECORDS).write(path)


def _to_onnx(model: Any, serve: Any, float_spec: Any, path: Path, opset: int) -> None:
    """The Keras model as ONNX: input "pixels" and, for a model with text, "tokens" (int32 token ids:
    the string ops of tokenization stay out of the ONNX graph). An image model's graph is the
    SavedModel's ``serve`` (traced once for both)."""
    import tensorflow as tf
    import tf2onnx

    if not isinstance(model.input, dict):
        tf2onnx.convert.from_function(serve, input_signature=[float_spec], opset=opset, output_path=str(path))
        return
    tokens_spec = tf.TensorSpec([None, int(model.input["tokens"].shape[1])], tf.int32, name="tokens")

    @tf.function(input_signature=[float_spec, tokens_spec])
    def serve_tokens(pixels: tf.Tensor, tokens: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model({"pixels": pixels, "tokens": tokens}, training=False)}

    tf2onnx.convert.from_function(serve_tokens, input_signature=[float_spec, tokens_spec], opset=opset, output_path=str(path))


def _check_batch(shape: tuple[int, ...]) -> int:
    """Images per batch in export's checks: a quarter of an evaluation batch. Export runs after
    training in the same process, on top of what TensorFlow kept; a batch's activations are most of
    what the checks add (128 images of 64x64 took 140 MB through ONNX Runtime), and on a few hundred
    images, or one pass over the test split, smaller batches cost no time worth measuring."""
    from imgflow.training.inputs import eval_batch

    return max(16, eval_batch(shape) // 4)


def _quantize(float_path: Path, int8_path: Path, shards: StageResult, config: ExportConfig) -> Int8:
    """Quantize the ONNX model to int8 (``imgflow.serving.inference.quantize_int8``) with the validation
    split as calibration data; keep it only if it loses at most ``int8_max_drop`` accuracy on the test
    split.

    Weights use 7 of their 8 bits (``reduce_range``): on an x86 CPU without VNNI (AMD Zen 3, older
    Xeons) ONNX Runtime multiplies uint8 activations by int8 weights with ``vpmaddubsw``, whose 16-bit
    sum of two products saturates at full range (2 x 255 x 127 > 32,767); at 7 bits it cannot, so the
    accuracy checked here, on whatever CPU, holds on the CPU that serves the model. ONNX Runtime's own
    advice for such CPUs; the figures are in benchmarks/RESULTS.md."""
    from imgflow.training.inputs import iter_batches, load_arrays

    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    float_model = OnnxModel(float_path, keep_memory=False)
    text = float_model.takes_text
    calibration = load_arrays(shard_files(shards, "val"), shape, limit=config.calibration_images, text=text)
    if len(calibration.labels) == 0:
        calibration = load_arrays(shard_files(shards, "train"), shape, limit=config.calibration_images, text=text)
    count = len(calibration.labels)
    # Min-max calibration keeps the smallest and largest value of every tensor over all batches, so the
    # batch size changes nothing in the model (checked: identical bytes with 8 and 32) but the memory the
    # calibration session takes: 8 images cost 40 MB where 32 cost 170 MB.
    feeds = (
        float_model.feeds(calibration.images[rows], [calibration.texts[i] for i in rows] if calibration.texts is not None else None)
        for rows in np.array_split(np.arange(count), max(1, count // 8))
    )
    quantize_int8(float_path, int8_path, feeds)
    # Both models over the test split, a batch at a time.
    models = [float_model, OnnxModel(int8_path, keep_memory=False)]
    correct, seen = [0, 0], 0
    for images, labels, _, texts in iter_batches(shard_files(shards, "test"), shape, _check_batch(shape), text):
        for which, model in enumerate(models):
            correct[which] += int((model(images, texts).argmax(1) == labels).sum())
        seen += len(labels)
    float_accuracy, int8_accuracy = (c / seen for c in correct)
    kept = float_accuracy - int8_accuracy <= config.int8_max_drop
    if not kept:
        int8_path.unlink()
    return Int8(
        exported=kept,
        accuracy=int8_accuracy,
        float_accuracy=float_accuracy,
        max_drop=config.int8_max_drop,
        calibration_images=int(count),
        bytes=int8_path.stat().st_size if kept else None,
        float_bytes=float_path.stat().st_size,
        reduce_range=True,
        checked_on=int8_instructions(),
    )


EXPORT = Stage("export", "5", _build, tensorflow=True)
