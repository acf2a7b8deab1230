"""The baseline for the orchestration-overhead benchmark: a plain Keras script, no pipeline.

It trains the same model (``imgflow.training.models``) in the same precision with the same optimizer, augmentation, batch size and
epochs on the same records as ``imgflow run`` would (the mnist5k sample, split by the same content
hash), but straight from in-memory arrays with ``from_tensor_slices``: no Prefect, no Parquet, no
TFRecords, no export. Prints one JSON line: seconds (after imports) and test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time

import numpy as np

from imgflow.config import build_run_config
from imgflow.data.cleantable import assign_split
from imgflow.data.images import decode
from imgflow.data.sources import open_source


def main(epochs: int | None) -> None:
    import keras
    import tensorflow as tf

    from imgflow.training.accel import current_plan
    from imgflow.training.inputs import make_augmenter
    from imgflow.training.models import build_model, compile_for_training

    started = time.time()
    cfg = build_run_config("mnist5k", "/tmp/unused", epochs=epochs)
    records = list(open_source(cfg.download.source).records())
    images = np.stack([decode(r.image, (28, 28), 1) for r in records])
    labels = np.array([int(r.label) for r in records])
    splits = np.array([
        assign_split(hashlib.sha256(image.tobytes()).hexdigest(), cfg.clean.test_fraction, cfg.clean.val_fraction)
        for image in images
    ])
    train, test = splits == "train", splits == "test"

    t = cfg.train
    # The precision the pipeline's plan picks on this machine (bfloat16 on a CPU with AMX tiles).
    keras.mixed_precision.set_global_policy(current_plan(t.precision, t.jit_compile, t.augment_on).precision)
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:  # as the pipeline does, so both sides do the same work
        tf.config.experimental.enable_op_determinism()
    augmenter = make_augmenter(t.translate, t.rotate, t.zoom, t.seed)
    data = (
        tf.data.Dataset.from_tensor_slices((images[train].astype(np.float32), labels[train]))
        .shuffle(10_000, seed=t.seed)
        .repeat()
        .batch(t.batch_size)
        .map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    # As the pipeline's (imgflow.training.inputs.shard_dataset): no autotuner thread, whose timed sleep delays the
    # end of fit by up to tens of seconds at random; this side would otherwise be the noisier one.
    options = tf.data.Options()
    options.autotune.enabled = False
    data = data.with_options(options)
    steps = math.ceil(int(train.sum()) / t.batch_size)
    model = compile_for_training(build_model((28, 28, 1), 10, t), t.learning_rate, steps * t.epochs)
    model.fit(data, epochs=t.epochs, steps_per_epoch=steps, verbose=2)
    accuracy = float((model.predict(images[test].astype(np.float32), verbose=0).argmax(1) == labels[test]).mean())
    print(json.dumps({"seconds": time.time() - started, "accuracy": accuracy, "test_records": int(test.sum())}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else None)
