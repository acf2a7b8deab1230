"""Training speed, three measurements side by side in one run:

1. input: the tf.data pipeline reading the TFRecord shards (parallel reads, batch then parse, cached)
   against an in-memory ``from_tensor_slices`` pipeline of the same images with the same per-batch
   augmentation: images/s of each and their ratio (goal: at least 0.8), with and without augmentation;
2. resnet9: training throughput (images/s) of the residual CNN on CIFAR-shaped data (32x32x3, 10
   classes), float32 against mixed_bfloat16 and mixed_bfloat16 + XLA;
3. mnist: wall time to 0.98 test accuracy on sample:mnist5k with the default train config.

    python benchmarks/training_speed.py [--part input,resnet9,mnist] [--batch 256] [--steps 20] [--width 64]

On a CPU, bf16 is expected to be slower than float32 (no bf16 matrix units are used by default); the
GPU numbers are the point of (2), and the device name is printed with them.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def _shards(root: Path):  # noqa: ANN202 - StageResult
    from imgflow.data.sources import source_fingerprint
    from imgflow.pipeline.context import open_run
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD

    run = open_run("mnist5k", root)
    cfg, store = run.cfg, run.store
    raw = DOWNLOAD.run(store, cfg.download, {"source": source_fingerprint(cfg.download.source)})
    clean = CLEAN.run(store, cfg.clean, {"raw": raw})
    return cfg, SHARD.run(store, cfg.shard, {"clean": clean})


def _rate(dataset, batches: int, batch: int) -> float:  # noqa: ANN001 - tf.data.Dataset
    iterator = iter(dataset)
    for _ in range(5):  # warm-up: fills caches and autotuned buffers
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - started)


def input_pipeline(root: Path, batch: int, batches: int) -> None:
    import tensorflow as tf

    from imgflow.results import shard_files
    from imgflow.training.inputs import load_arrays, make_augmenter, shard_dataset

    cfg, shards = _shards(root)
    shape = tuple(shards.info.image_shape)
    files = shard_files(shards, "train")
    images, labels, _, _ = load_arrays(files, shape)
    print(f"\n(1) input pipeline, {len(images)} train images {shape}, batch {batch}, {batches} batches")
    for label, augmenter in (("with augmentation", make_augmenter(cfg.train.translate, cfg.train.rotate, cfg.train.zoom, 0)),
                             ("without augmentation", None)):
        from_shards = shard_dataset(files, shape, batch, training=True, augmenter=augmenter)
        memory = tf.data.Dataset.from_tensor_slices((images, labels)).cache().shuffle(10_000, seed=0).repeat().batch(batch)
        memory = memory.map(lambda x, y: (tf.cast(x, tf.float32), y))
        if augmenter is not None:
            memory = memory.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        memory = memory.prefetch(tf.data.AUTOTUNE)
        shard_rate, memory_rate = _rate(from_shards, batches, batch), _rate(memory, batches, batch)
        print(f"  {label:<21} shards {shard_rate:9.0f} img/s   in memory {memory_rate:9.0f} img/s   "
              f"ratio {shard_rate / memory_rate:.2f}")


def resnet9(batch: int, steps: int, width: int) -> None:
    import keras
    import tensorflow as tf

    from imgflow.training.models import compile_for_training, make_resnet9

    gpus = tf.config.list_physical_devices("GPU")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    images = np.random.default_rng(0).integers(0, 256, (batch * 8, 32, 32, 3)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 10, batch * 8)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).cache().repeat().batch(batch, drop_remainder=True).prefetch(8)
    print(f"\n(2) resnet9 width {width} on 32x32x3, batch {batch}, {steps} timed steps, device {device}")
    rates = {}
    for label, policy, jit in (("float32", "float32", False), ("bf16", "mixed_bfloat16", False), ("bf16 + XLA", "mixed_bfloat16", True)):
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = compile_for_training(make_resnet9((32, 32, 3), 10, width=width), 1e-3, 10 * steps, jit_compile=jit)
            model.fit(data, epochs=1, steps_per_epoch=3, shuffle=False, verbose=0)  # warm-up: tracing, XLA compilation
            started = time.perf_counter()
            model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
            rates[label] = steps * batch / (time.perf_counter() - started)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        print(f"  {label:<11} {rates[label]:9.0f} img/s   ({rates[label] / rates['float32']:.2f}x float32)", flush=True)


def mnist(root: Path) -> None:
    import keras

    from imgflow.results import shard_files
    from imgflow.training.accel import current_plan
    from imgflow.training.inputs import load_arrays, make_augmenter, shard_dataset
    from imgflow.training.models import build_model, compile_for_training

    cfg, shards = _shards(root)
    t = cfg.train
    shape = tuple(shards.info.image_shape)
    # In the precision the pipeline's plan picks here (bfloat16 on a CPU with AMX tiles), as it trains.
    keras.mixed_precision.set_global_policy(current_plan(t.precision, t.jit_compile, t.augment_on).precision)
    keras.utils.set_random_seed(t.seed)
    train = shard_dataset(shard_files(shards, "train"), shape, t.batch_size, training=True, seed=t.seed,
                          augmenter=make_augmenter(t.translate, t.rotate, t.zoom, t.seed))
    test_images, test_labels, _, _ = load_arrays(shard_files(shards, "test"), shape)
    steps = math.ceil(shards.info.splits["train"].records / t.batch_size)
    model = compile_for_training(build_model(shape, 10, t), t.learning_rate, steps * t.epochs)
    print(f"\n(3) time to 0.98 test accuracy on sample:mnist5k ({len(test_labels)} test images), default config, "
          f"{keras.mixed_precision.global_policy().name}")
    training = 0.0
    for epoch in range(t.epochs):
        started = time.perf_counter()
        model.fit(train, epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps, shuffle=False, verbose=0)
        training += time.perf_counter() - started
        accuracy = float((model.predict(test_images.astype(np.float32), batch_size=512, verbose=0).argmax(1) == test_labels).mean())
        print(f"  epoch {epoch + 1:>2}: test accuracy {accuracy:.4f} after {training:6.1f} s of training", flush=True)
        if accuracy >= 0.98:
            print(f"  reached 0.98 after {epoch + 1} epochs, {training:.1f} s of training")
            return
    print(f"  did not reach 0.98 in {t.epochs} epochs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="input,resnet9,mnist")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=60, help="batches timed per input pipeline")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per resnet9 mode")
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    parts = set(args.part.split(","))
    with tempfile.TemporaryDirectory(prefix="imgflow-speed-") as tmp:
        if "input" in parts:
            input_pipeline(Path(tmp), args.batch, args.batches)
        if "resnet9" in parts:
            resnet9(args.batch, args.steps, args.width)
        if "mnist" in parts:
            mnist(Path(tmp))


if __name__ == "__main__":
    main()
