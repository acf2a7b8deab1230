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
                      validation split), only when its test accuracy is within ``int8_max_drop`` of
                      the float model's; the info says both accuracies either way
    parity.json       the largest absolute difference between SavedModel and ONNX on a batch of test
                      images

Both exports run on the same test batch; a difference above the tolerance fails the stage, so a model
whose exports disagree is never promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imgflow.config import ExportConfig
from imgflow.errors import ExportMismatchError
from imgflow.inference import onnx_predict, onnx_session
from imgflow.results import ExportInfo, Int8, Parity, ShardInfo, StageResult, shard_files
from imgflow.store import Stage, write_json_atomic


def _build(out_dir: Path, config: ExportConfig, inputs: Mapping[str, StageResult]) -> ExportInfo:
    import keras
    import tensorflow as tf
    import tf2onnx

    from imgflow.data import load_arrays

    shards = inputs["shards"]
    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    model = keras.models.load_model(inputs["model"].file("model.keras"))

    float_spec = tf.TensorSpec([None, *shape], tf.float32, name="pixels")

    @tf.function(input_signature=[float_spec])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(pixels, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.uint8, name="pixels")])
    def serve_uint8(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return serve(tf.cast(pixels, tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_bytes(images: tf.Tensor) -> dict[str, tf.Tensor]:
        def decode(data: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(data, channels=shape[2], expand_animations=False)
            return tf.image.resize(image, shape[:2])

        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec(shape, tf.float32))
        return serve(pixels)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint("serving_uint8", serve_uint8)
    archive.add_endpoint("serving_bytes", serve_bytes)
    archive.write_out(str(out_dir / "savedmodel"), verbose=False)

    onnx_path = out_dir / "model.onnx"
    tf2onnx.convert.from_function(serve, input_signature=[float_spec], opset=config.opset, output_path=str(onnx_path))

    batch = load_arrays(shard_files(shards, "test"), shape, limit=config.parity_batch)[0].astype(np.float32)
    loaded = tf.saved_model.load(str(out_dir / "savedmodel")).signatures["serving_default"]
    step = _check_batch(shape)
    from_savedmodel = np.concatenate(
        [loaded(pixels=tf.constant(batch[i : i + step]))["probabilities"].numpy() for i in range(0, len(batch), step)]
    )
    from_onnx = onnx_predict(onnx_path, batch, batch_size=step)
    max_diff = float(np.abs(from_savedmodel - from_onnx).max())
    parity = Parity(
        max_abs_diff=max_diff,
        tolerance=config.parity_tolerance,
        batch=int(len(batch)),
        same_top1=bool((from_savedmodel.argmax(1) == from_onnx.argmax(1)).all()),
    )
    write_json_atomic(out_dir / "parity.json", parity)
    if not max_diff <= config.parity_tolerance:
        raise ExportMismatchError(
            f"SavedModel and ONNX outputs differ by {max_diff:.3g} (> {config.parity_tolerance:g}) "
            f"on {len(batch)} test images: refusing to promote {inputs['model'].path}"
        )
    int8 = _quantize(onnx_path, out_dir / "model.int8.onnx", shards, config) if config.int8 else None
    return ExportInfo(opset=config.opset, parity=parity, int8=int8)


def _check_batch(shape: tuple[int, ...]) -> int:
    """Images per batch in export's checks: a quarter of an evaluation batch. Export runs after
    training in the same process, on top of what TensorFlow kept; a batch's activations are most of
    what the checks add (128 images of 64x64 took 140 MB through ONNX Runtime), and on a few hundred
    images, or one pass over the test split, smaller batches cost no time worth measuring."""
    from imgflow.data import eval_batch

    return max(16, eval_batch(shape) // 4)


def _quantize(float_path: Path, int8_path: Path, shards: StageResult, config: ExportConfig) -> Int8:
    """Quantize the ONNX model to int8 (static, QDQ, per channel) with the validation split as
    calibration data; keep it only if it loses at most ``int8_max_drop`` accuracy on the test split."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imgflow.data import iter_batches, load_arrays

    assert isinstance(shards.info, ShardInfo), shards.stage
    shape = tuple(shards.info.image_shape)
    calibration = load_arrays(shard_files(shards, "val"), shape, limit=config.calibration_images)[0]
    if len(calibration) == 0:
        calibration = load_arrays(shard_files(shards, "train"), shape, limit=config.calibration_images)[0]
    calibration = calibration.astype(np.float32)

    class Batches(CalibrationDataReader):
        # Min-max calibration keeps the smallest and largest value of every tensor over all batches, so
        # the batch size changes nothing in the model (checked: identical bytes with 8 and 32) but the
        # memory the calibration session takes: 8 images cost 40 MB where 32 cost 170 MB.
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 8)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    scratch = int8_path.with_name("model.pre-quant.onnx")
    quant_pre_process(str(float_path), str(scratch), skip_symbolic_shape=True)  # onnx shape inference suffices
    quantize_static(str(scratch), str(int8_path), Batches(), quant_format=QuantFormat.QDQ, per_channel=True)
    scratch.unlink()
    # Both models over the test split, a batch at a time.
    sessions = [onnx_session(float_path, keep_memory=False), onnx_session(int8_path, keep_memory=False)]
    correct, seen = [0, 0], 0
    for images, labels, _ in iter_batches(shard_files(shards, "test"), shape, _check_batch(shape)):
        for which, session in enumerate(sessions):
            correct[which] += int((onnx_predict(session, images).argmax(1) == labels).sum())
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
        calibration_images=int(len(calibration)),
        bytes=int8_path.stat().st_size if kept else None,
        float_bytes=float_path.stat().st_size,
    )


EXPORT = Stage("export", "3", _build)
