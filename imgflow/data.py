"""tf.data input pipelines over the TFRecord shards.

Batch first, then parse and augment per batch: one ``parse_example`` and one ``decode_raw`` per batch
instead of per record is what keeps a small-image pipeline ahead of training. A training set that fits
in memory is parsed once and cached decoded, so every later epoch is as cheap as an in-memory
``from_tensor_slices`` pipeline (``benchmarks/training_speed.py`` measures the ratio).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import keras
import tensorflow as tf

from imgflow.features import parse_batch, parse_records

# Training shards smaller than this in total are cached in memory, decoded, after the first pass: small
# datasets then train at in-memory speed, and memory stays bounded whatever the dataset's size.
CACHE_LIMIT_BYTES = 256 << 20


def _parallel_calls() -> int:
    """The parallelism of the pipelines' maps (tf.data's autotuning is off: see ``shard_dataset``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_augmenter(translate: float, rotate: float, zoom: float, seed: int) -> keras.Sequential | None:
    """Random geometric augmentation applied to whole batches; None when every strength is zero."""
    layers = []
    if translate > 0:
        layers.append(keras.layers.RandomTranslation(translate, translate, fill_mode="constant", seed=seed))
    if rotate > 0:
        layers.append(keras.layers.RandomRotation(rotate, fill_mode="constant", seed=seed + 1))
    if zoom > 0:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="constant", seed=seed + 2))
    return keras.Sequential(layers, name="augment") if layers else None


def shard_dataset(
    files: Sequence[str],
    shape: tuple[int, int, int],
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    augmenter: keras.Sequential | None = None,
    cache: bool | None = None,
    deterministic: bool = True,
) -> tf.data.Dataset:
    """(float32 images 0..255 [N,H,W,C], int64 labels) batches read from ``files``.

    Training pipelines shuffle files and records, read shards in parallel and repeat forever (pass
    ``steps_per_epoch`` to ``fit``); evaluation pipelines make one pass in the files' order, so
    predictions line up with the records.

    tf.data's autotuning is off: destroying an autotuned iterator, as Keras does at the end of every
    ``fit`` and ``evaluate``, waits for the autotuner's thread (``Model::OptimizeLoop``, gdb) to wake
    from its timed sleep, whose period doubles up to 60 s: runs stalled 2.5-20 s with every core idle,
    after training and after each validation pass. The maps run on every core instead, and prefetch
    keeps its own buffer tuning (no autotuner thread).
    """
    parallel = _parallel_calls()
    if cache is None:
        # Only training makes many passes; an evaluation pass over a cache would only add a copy.
        cache = training and sum(tf.io.gfile.stat(f).length for f in files) < CACHE_LIMIT_BYTES
    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(4, len(files))),
        num_parallel_calls=tf.data.AUTOTUNE,
        # Records in the order of the (seeded) file shuffle, however the readers' threads are scheduled:
        # the record shuffle below starts from that order, so a nondeterministic interleave gave a
        # busy machine a different model. ``deterministic=False`` trades that for throughput.
        deterministic=deterministic,
    )

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return parse_batch(serialized, shape)

    if cache:
        # Parse once, a batch at a time, and cache the decoded records: later epochs cost what an
        # in-memory pipeline costs (a shuffle and a batch of ready tensors).
        dataset = dataset.batch(1024).map(parse, num_parallel_calls=parallel).unbatch().cache()
    if training:
        # Repeat so an epoch is exactly ``steps_per_epoch`` batches and no epoch ends on a short read.
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.batch(batch_size)
    if not cache:
        dataset = dataset.map(parse, num_parallel_calls=parallel)
    dataset = dataset.map(lambda images, labels: (tf.cast(images, tf.float32), labels))
    if augmenter is not None:
        dataset = dataset.map(
            lambda images, labels: (augmenter(images, training=True), labels), num_parallel_calls=parallel
        )
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_batch(shape: Sequence[int], largest: int = 512) -> int:
    """Records per evaluation batch: ``largest`` for small images, fewer for large ones, since a
    batch's activations grow with its pixels (512 images of 64x64 took 700 MB through the default CNN)."""
    return max(16, min(largest, 2**19 // (shape[0] * shape[1])))


def iter_batches(
    files: Sequence[str], shape: tuple[int, int, int], batch_size: int = 512
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """The records of ``files`` in order, a batch at a time: uint8 images, int64 labels and ids. Memory
    holds one batch, so evaluation streams over a split of any size."""
    for serialized in tf.data.TFRecordDataset(list(files)).batch(batch_size).prefetch(2):
        parsed = parse_records(serialized, shape)
        yield parsed["image"].numpy(), parsed["label"].numpy(), [i.decode() for i in parsed["id"].numpy()]


def load_arrays(
    files: Sequence[str], shape: tuple[int, int, int], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``limit`` records of ``files`` (all of them without one) as arrays: for a calibration
    or parity batch, and for tests of small shards; anything the size of a split streams instead."""
    images, labels, ids = [], [], []
    seen = 0
    for batch_images, batch_labels, batch_ids in iter_batches(files, shape, 4096 if limit is None else min(4096, limit)):
        take = len(batch_labels) if limit is None else min(len(batch_labels), limit - seen)
        images.append(batch_images[:take])
        labels.append(batch_labels[:take])
        ids.extend(batch_ids[:take])
        seen += take
        if limit is not None and seen >= limit:
            break
    if not images:
        return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int64), []
    return np.concatenate(images), np.concatenate(labels), ids
