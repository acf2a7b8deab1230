"""tf.data input pipelines over the TFRecord shards.

Batch first, then parse and augment per batch: one ``parse_example`` and one ``decode_raw`` per batch
instead of per record is what keeps a small-image pipeline ahead of training. A training set that fits
in memory is parsed once and cached decoded, so every later epoch is as cheap as an in-memory
``from_tensor_slices`` pipeline (``benchmarks/training_speed.py`` measures the ratio).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from imgflow.data.tfrecord import parse_batch, parse_records, parse_texts
from imgflow.runtime import cpus

# Training shards smaller than this in total are cached in memory, decoded, after the first pass: small
# datasets then train at in-memory speed, and memory stays bounded whatever the dataset's size.
CACHE_LIMIT_BYTES = 256 << 20


def _parallel_calls() -> int:
    """The parallelism of the pipelines' maps (tf.data's autotuning is off: see ``shard_dataset``): the
    CPU time the process has (``imgflow.runtime.cpus``), not the cores it sees."""
    return cpus.threads()


def make_augmenter(translate: float, rotate: float, zoom: float, seed: int, flip: str = "none") -> keras.Sequential | None:
    """Random geometric augmentation applied to whole batches; None when every strength is zero and
    ``flip`` is ``"none"`` (``"horizontal"``: left-right mirrors; ``"both"``: on both axes)."""
    layers = []
    if flip != "none":
        layers.append(keras.layers.RandomFlip("horizontal" if flip == "horizontal" else "horizontal_and_vertical", seed=seed + 3))
    if translate > 0:
        layers.append(keras.layers.RandomTranslation(translate, translate, fill_mode="constant", seed=seed))
    if rotate > 0:
        layers.append(keras.layers.RandomRotation(rotate, fill_mode="constant", seed=seed + 1))
    if zoom > 0:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="constant", seed=seed + 2))
    return keras.Sequential(layers, name="augment") if layers else None


def shard_dataset(
    files: Sequence[str],
    shape: tuple[int, ...],
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    augmenter: keras.Sequential | None = None,
    cache: bool | None = None,
    deterministic: bool = True,
    text: bool = False,
) -> tf.data.Dataset:
    """(float32 images 0..255 [N,H,W,C], int64 labels) batches read from ``files``; with ``text`` (shards
    of data that carries text), ({"pixels": images, "text": strings [N]}, labels) batches.

    Training pipelines shuffle files and records, read shards in parallel and repeat forever (pass
    ``steps_per_epoch`` to ``fit``); evaluation pipelines make one pass in the files' order, so
    predictions line up with the records.

    tf.data's autotuning is off: destroying an autotuned iterator, as Keras does at the end of every
    ``fit`` and ``evaluate``, waits for the autotuner's thread (``Model::OptimizeLoop``) to wake
    from its timed sleep, whose period doubles up to 60 s: runs stalled with every core idle,
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

    def parse(serialized: tf.Tensor) -> tuple[Any, tf.Tensor]:
        return parse_batch(serialized, shape, text)

    def pixels(function: Any) -> Any:
        """``function`` applied to the images of a batch, whatever else the batch holds."""
        if text:
            return lambda features, labels: ({**features, "pixels": function(features["pixels"])}, labels)
        return lambda images, labels: (function(images), labels)

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
    dataset = dataset.map(pixels(lambda images: tf.cast(images, tf.float32)))
    if augmenter is not None:
        dataset = dataset.map(pixels(lambda images: augmenter(images, training=True)), num_parallel_calls=parallel)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def eval_batch(shape: Sequence[int], largest: int = 512) -> int:
    """Records per evaluation batch: ``largest`` for small images, fewer for large ones, since a
    batch's activations grow with its pixels (512 images of 64x64 took 700 MB through the default CNN)."""
    return max(16, min(largest, 2**19 // (shape[0] * shape[1])))


class Records(NamedTuple):
    """Records read back from shards: uint8 images [N, H, W, C], int64 labels [N], ids, and the texts
    (None: the data carries no text)."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    texts: list[str] | None = None


def iter_batches(files: Sequence[str], shape: tuple[int, ...], batch_size: int = 512, text: bool = False) -> Iterator[Records]:
    """The records of ``files`` in order, a batch at a time (with their texts when ``text``). Memory
    holds one batch, so evaluation streams over a split of any size."""
    for serialized in tf.data.TFRecordDataset(list(files)).batch(batch_size).prefetch(2):
        parsed = parse_records(serialized, shape, text)
        yield Records(
            parsed["image"].numpy(),
            parsed["label"].numpy(),
            [i.decode() for i in parsed["id"].numpy()],
            [t.decode() for t in parsed["text"].numpy()] if text else None,
        )


def load_arrays(files: Sequence[str], shape: tuple[int, ...], limit: int | None = None, text: bool = False) -> Records:
    """The first ``limit`` records of ``files`` (all of them without one) as arrays: for a calibration
    or parity batch, and for tests of small shards; anything the size of a split streams instead."""
    batches: list[Records] = []
    seen = 0
    for batch in iter_batches(files, shape, 4096 if limit is None else min(4096, limit), text):
        take = len(batch.labels) if limit is None else min(len(batch.labels), limit - seen)
        batches.append(
            Records(batch.images[:take], batch.labels[:take], batch.ids[:take], batch.texts[:take] if batch.texts is not None else None)
        )
        seen += take
        if limit is not None and seen >= limit:
            break
    if not batches:
        return Records(np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int64), [], [] if text else None)
    return Records(
        np.concatenate([b.images for b in batches]),
        np.concatenate([b.labels for b in batches]),
        [i for b in batches for i in b.ids],
        [t for b in batches for t in b.texts] if text else None,  # type: ignore[union-attr]
    )


def iter_texts(files: Sequence[str], batch_size: int = 4096) -> Iterator[tf.Tensor]:
    """The texts of ``files``' records, a batch (string tensor) at a time: for learning a vocabulary."""
    for serialized in tf.data.TFRecordDataset(list(files)).batch(batch_size).prefetch(2):
        yield parse_texts(serialized)


def with_tokens(dataset: tf.data.Dataset, encoder: Any, modality_dropout: float = 0.0, seed: int = 0) -> tf.data.Dataset:
    """({"pixels", "text"}, labels) batches -> ({"pixels", "tokens"}, labels): the text through the
    model's encoder (``imgflow.data.text.TextEncoder``). With ``modality_dropout`` (training), that share of
    the records loses one modality, half of them the text (no tokens), half the image (black pixels),
    so the model learns to answer from either alone, as validation's single-modality accuracies ask."""

    def encode(features: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        pixels, tokens = drop_modalities(features["pixels"], encoder(features["text"]), modality_dropout, seed, blank=0.0)
        return {"pixels": pixels, "tokens": tokens}, labels

    return dataset.map(encode).prefetch(2)


def drop_modalities(images: tf.Tensor, tokens: tf.Tensor, rate: float, seed: int, blank: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch's images [N, ...] and token ids [N, L] with ``rate`` of the records losing one modality:
    half of them their text (no tokens), half their image (``blank``: black pixels, or a frozen
    backbone's features of a black image), never both. ``rate`` 0 changes nothing."""
    if rate <= 0:
        return images, tokens
    draw = tf.random.uniform(tf.shape(tokens)[:1], seed=seed)
    no_text = draw < rate / 2
    no_image = (draw >= rate / 2) & (draw < rate)
    tokens = tf.where(no_text[:, None], tf.zeros_like(tokens), tokens)
    per_record = tf.reshape(no_image, tf.concat([tf.shape(no_image), tf.ones([tf.rank(images) - 1], tf.int32)], 0))
    images = tf.where(per_record, tf.cast(blank, images.dtype), images)
    return images, tokens
