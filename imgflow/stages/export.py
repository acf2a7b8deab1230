"""export: the trained model as a SavedModel and an ONNX model, checked to give the same answers.

Output folder::

    savedmodel/     TensorFlow SavedModel; signatures ``serving_default`` (float32 pixels) and
                    ``serving_uint8`` (uint8 pixels), both (N, H, W, C) in 0..255, returning
                    {"probabilities": float32 (N, classes)}
    model.onnx      the same model for ONNX Runtime: input "pixels" float32 (N, H, W, C) in 0..255
                    (dynamic batch), output "probabilities"
    parity.json     the largest absolute difference between the two on a batch of test images

Both exports run on the same test batch; a difference above the tolerance fails the stage, so a model
whose exports disagree is never promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.config import ExportConfig
from imgflow.errors import ExportMismatchError
from imgflow.stages.shard import split_files
from imgflow.stages.validate import onnx_predict
from imgflow.store import Stage, StageResult, write_json_atomic


def _build(out_dir: Path, config: ExportConfig, inputs: Mapping[str, StageResult]) -> dict[str, Any]:
    import keras
    import tensorflow as tf
    import tf2onnx

    from imgflow.data import load_arrays

    shards = inputs["shards"]
    shape = tuple(shards.info["image_shape"])
    model = keras.models.load_model(inputs["model"].file("model.keras"))

    float_spec = tf.TensorSpec([None, *shape], tf.float32, name="pixels")

    @tf.function(input_signature=[float_spec])
    def serve(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": model(pixels, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.uint8, name="pixels")])
    def serve_uint8(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return serve(tf.cast(pixels, tf.float32))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint("serving_uint8", serve_uint8)
    archive.write_out(str(out_dir / "savedmodel"), verbose=False)

    onnx_path = out_dir / "model.onnx"
    tf2onnx.convert.from_function(serve, input_signature=[float_spec], opset=config.opset, output_path=str(onnx_path))

    images, _, _ = load_arrays(split_files(shards, "test"), shape)
    batch = images[: config.parity_batch].astype(np.float32)
    loaded = tf.saved_model.load(str(out_dir / "savedmodel"))
    from_savedmodel = loaded.signatures["serving_default"](pixels=tf.constant(batch))["probabilities"].numpy()
    from_onnx = onnx_predict(onnx_path, batch)
    max_diff = float(np.abs(from_savedmodel - from_onnx).max())
    parity = {
        "max_abs_diff": max_diff,
        "tolerance": config.parity_tolerance,
        "batch": int(len(batch)),
        "same_top1": bool((from_savedmodel.argmax(1) == from_onnx.argmax(1)).all()),
    }
    write_json_atomic(out_dir / "parity.json", parity)
    if not max_diff <= config.parity_tolerance:
        raise ExportMismatchError(
            f"SavedModel and ONNX outputs differ by {max_diff:.3g} (> {config.parity_tolerance:g}) "
            f"on {len(batch)} test images: refusing to promote {inputs['model'].path}"
        )
    return {"opset": config.opset, "parity": parity}


EXPORT = Stage("export", "1", _build)
