"""A transfer model's frozen phase on features computed once.

While the backbone is frozen, it computes the same features for an image every epoch; on a CPU that
forward pass is nearly all of the phase's time (EfficientNet-Lite0's depthwise convolutions are slow in
TensorFlow's CPU kernels). So the train stage runs the backbone once over the train and validation
splits (unaugmented), writes the features to disk in batches (``extract``: memory does not grow with the
number of records) where every train build of the same root finds them (``cache_dir``: tuning trials
and budget probes that share the backbone reuse them), and trains the head (``head_of``: the model's own
layers after the backbone, a text model's text tower and fusion included, so the weights it learns are
the model's) on them for the frozen epochs, with the records' token ids beside the features for a text
model (``encode_texts``). Fine-tuning then runs on images as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from imgflow.runtime import stopping
from imgflow.store.integrity import SEAL, SEALED_CACHE, seal, seal_damage

if TYPE_CHECKING:
    from imgflow.config import TrainConfig
    from imgflow.results import StageResult

HEAD_DROPOUT = "head_dropout"  # the transfer model's dropout before its classifier
PIXELS, TOKENS = "pixels", "tokens"  # the model's image input, and a text model's token input


class Features(NamedTuple):
    """Features on disk: ``<stem>.features.npy`` [N, D] float32 and ``<stem>.labels.npy`` [N] int64."""

    features: Path
    labels: Path

    @classmethod
    def at(cls, stem: Path) -> Features:
        return cls(stem.with_name(stem.name + ".features.npy"), stem.with_name(stem.name + ".labels.npy"))

    @property
    def record(self) -> Path:
        """Both files' sha256 and sizes (``imgflow.store.integrity.seal``), written last by ``extract``:
        reuse, and ``imgflow verify``, check the files against it."""
        return self.features.with_name(self.features.name.removesuffix(".features.npy") + SEAL)

    def holds(self, records: int) -> bool:
        """Whether a completed ``extract`` of ``records`` records is here, byte for byte as written: a
        damaged file (a flipped byte, a truncation) is named and computed again, never trained on."""
        if not (self.features.is_file() and self.labels.is_file() and self.record.is_file()):
            return False
        problems = seal_damage(self.record)
        if problems:
            print(
                f"the cached features in {self.record.parent} are not as written ({'; '.join(problems)}): computing them again", flush=True
            )
            return False
        return np.load(self.labels, mmap_mode="r").shape[0] == records


def cache_dir(train_root: Path, shards_fingerprint: str, config: Any, shape: tuple[int, ...], precision: str) -> Path:
    """Where the features of these shards through this backbone live: ``<train stage>/.features/<key>``,
    keyed by what decides them (the shards' content, the backbone, its input size, its weights'
    content, the precision), never by the rest of the training config."""
    from imgflow.store.fingerprint import stable_hash
    from imgflow.training.weights import weights_identity

    key = stable_hash(
        [
            shards_fingerprint,
            config.backbone,
            config.backbone_size,
            weights_identity(config.backbone, config.backbone_weights),
            list(shape),
            precision,
        ]
    )[:16]
    folder = train_root / SEALED_CACHE / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def extractor(model: keras.Model) -> keras.Model:
    """The transfer ``model`` up to its features: resizing, colour, the backbone and its pooling."""
    return keras.Model(model.get_layer(PIXELS).output, model.get_layer(HEAD_DROPOUT).input, name="features")


def head_of(model: keras.Model) -> keras.Model:
    """A model over features that shares every layer of the transfer ``model`` after its backbone: the
    dropout and classifier, and with a text tower (``imgflow.training.models.add_text``) the tower and fusion
    too, taking [features, token ids]. (Fresh inputs, the layers called again: a model cut out of the
    whole one at its tensors made the whole one unsavable, in Keras 3.15, once it had a text input.)"""
    from imgflow.training.models import text_tail

    features = keras.Input(shape=model.get_layer(HEAD_DROPOUT).input.shape[1:], name="features")
    image_features = model.get_layer(HEAD_DROPOUT)(features)
    if TOKENS not in {layer.name for layer in model.layers}:
        return keras.Model(features, model.get_layer("probabilities")(image_features), name="head")
    tokens, outputs = text_tail(model, image_features)
    return keras.Model([features, tokens], outputs, name="head")


def extract(network: keras.Model, batches: tf.data.Dataset, records: int, stem: Path) -> Features:
    """Run ``network`` over ``batches`` ((images, labels), one pass, ``records`` in all) and write what
    it computes to ``stem``'s two files, batch by batch. Written under temporary names and renamed at
    the end: a killed run leaves no half file that a resume would trust."""
    width = int(network.output.shape[-1])
    found = Features.at(stem)
    partial = [path.with_name(f".partial-{os.getpid()}-{path.name}") for path in found]
    features = np.lib.format.open_memmap(partial[0], mode="w+", dtype=np.float32, shape=(records, width))
    labels = np.lib.format.open_memmap(partial[1], mode="w+", dtype=np.int64, shape=(records,))
    done = 0
    for images, batch_labels in batches:
        stopping.check()
        count = int(batch_labels.shape[0])
        features[done : done + count] = np.asarray(network(images, training=False), dtype=np.float32)
        labels[done : done + count] = batch_labels.numpy()
        done += count
    if done != records:
        raise ValueError(f"the shards held {done} records where their manifest counts {records}")
    features.flush()
    labels.flush()
    del features, labels
    for source, target in zip(partial, found, strict=True):
        source.replace(target)
    seal(found.record, list(found))
    return found


class Text(NamedTuple):
    """The text side of a head with a text tower: the records' token ids on disk ([N, L] int32, in the
    features' order), the features of a black image (what modality dropout puts in place of an image),
    and the modality dropout rate (training only)."""

    tokens: Path
    blank: np.ndarray
    modality_dropout: float = 0.0


def encode_texts(batches: tf.data.Dataset, encoder: Any, found: Features, target: Path) -> Path:
    """The token ids (``encoder``: ``imgflow.data.text.TextEncoder``) of every record's text in ``batches``
    (({"pixels", "text"}, labels), the order ``extract`` saw) written to ``target`` batch by batch;
    their labels must match ``found``'s, record for record, or the two files would not line up."""
    labels = np.load(found.labels, mmap_mode="r")
    partial = target.with_name(f".partial-{os.getpid()}-{target.name}")
    tokens = np.lib.format.open_memmap(partial, mode="w+", dtype=np.int32, shape=(labels.shape[0], encoder.length))
    done = 0
    for inputs, batch_labels in batches:
        stopping.check()
        count = int(batch_labels.shape[0])
        if done + count > labels.shape[0] or not np.array_equal(labels[done : done + count], batch_labels.numpy()):
            raise ValueError(f"the shards' records are not in the order of the features in {found.labels}: delete that folder")
        tokens[done : done + count] = np.asarray(encoder(inputs["text"]), dtype=np.int32)
        done += count
    if done != labels.shape[0]:
        raise ValueError(f"the shards held {done} records where the features in {found.labels} hold {labels.shape[0]}")
    tokens.flush()
    del tokens
    partial.replace(target)
    return target


def dataset(found: Features, batch_size: int, *, training: bool, seed: int = 0, text: Text | None = None) -> tf.data.Dataset:
    """(features, labels) batches read from ``found``'s files as they are needed; training shuffles
    (by index: the features stay on disk) and repeats. With ``text``, ([features, token ids], labels),
    training with its modality dropout."""
    from imgflow.training.inputs import drop_modalities

    features = np.load(found.features, mmap_mode="r")
    labels = np.load(found.labels, mmap_mode="r")
    tokens = np.load(text.tokens, mmap_mode="r") if text is not None else np.zeros((len(labels), 0), np.int32)
    count, width = features.shape

    def take(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ordered = np.sort(indices)  # a memory map reads sequential rows fastest
        return np.asarray(features[ordered]), np.asarray(tokens[ordered]), np.asarray(labels[ordered])

    batches = tf.data.Dataset.range(count)
    if training:
        batches = batches.shuffle(count, seed=seed, reshuffle_each_iteration=True).repeat()
    batches = batches.batch(batch_size)

    def load(indices: Any) -> tuple[Any, Any]:
        x, t, y = tf.numpy_function(take, [indices], [tf.float32, tf.int32, tf.int64], stateful=False)
        x.set_shape((None, width))
        t.set_shape((None, tokens.shape[1]))
        y.set_shape((None,))
        if text is None:
            return x, y
        if training:
            x, t = drop_modalities(x, t, text.modality_dropout, seed, blank=text.blank)
        return (x, t), y

    return batches.map(load).prefetch(2)


def fit_head(
    fit: Any,
    model: Any,
    shards: StageResult,
    shape: tuple[int, ...],
    config: TrainConfig,
    chosen: Any,
    recipe: Any,
    steps_per_epoch: int,
    checkpoints: Path,
    stage_root: Path,
    resumed_from: int,
    frozen: int,
    savers: list[Any],
    encoder: Any,
) -> None:
    """The frozen epochs on the backbone's features: computed once over the train and validation
    splits into ``stage_root`` (``imgflow.training.frozen.cache_dir``: any train build of these shards with
    this backbone reuses them, a race's rungs included), then the head fitted on them, with the records' token ids beside them for a text model
    (``encoder``; written once into this build's ``checkpoints``: they depend on its vocabulary);
    ``savers`` (the checkpoint and validation callbacks) save the whole ``model``, whose layers the head shares."""
    from imgflow.results import ShardInfo, shard_files
    from imgflow.training.inputs import eval_batch, shard_dataset
    from imgflow.training.models import compile_for_training

    assert isinstance(shards.info, ShardInfo), shards.stage
    network = extractor(model)
    folder = cache_dir(stage_root, shards.fingerprint, config, shape, chosen.precision)
    # Batches sized by what the backbone sees (its input size), not the stored images' size.
    side = config.backbone_size
    assert side is not None, "a transfer model's backbone_size is set once its config is validated"
    batch = eval_batch((side, side), largest=128)
    found: dict[str, Features | None] = {}
    texts: dict[str, Text | None] = {"train": None, "val": None}
    # what modality dropout puts in place of an image: the features of a black one
    blank = np.asarray(network(np.zeros((1, *shape), np.float32), training=False), dtype=np.float32)[0] if encoder else None
    for split in ("train", "val"):
        records = shards.info.splits[split].records
        cached = Features.at(folder / split)
        if records and cached.holds(records):
            print(f"reusing the frozen backbone's features of the {records} {split} records from {folder}", flush=True)
        elif records:
            print(f"computing the frozen backbone's features of the {records} {split} records once, into {folder}", flush=True)
            extract(network, shard_dataset(shard_files(shards, split), shape, batch, training=False), records, folder / split)
        found[split] = cached if records else None
        if records and encoder is not None:
            tokens = checkpoints / f".{split}.tokens.npy"  # not mirrored: cheap to recompute
            if not tokens.is_file():
                text_batches = shard_dataset(shard_files(shards, split), shape, batch, training=False, text=True)
                encode_texts(text_batches, encoder, cached, tokens)
            assert blank is not None
            texts[split] = Text(tokens, blank, config.modality_dropout if split == "train" else 0.0)
    head = head_of(model)
    compile_for_training(head, config.learning_rate, steps_per_epoch * frozen, chosen.jit_compile, recipe)
    for saver in savers:
        saver.whole = model
    try:
        assert found["train"] is not None  # training needs records: checked before
        train = dataset(found["train"], config.batch_size, training=True, seed=config.seed, text=texts["train"])
        # the batch of the image pipeline's validation, whose step count fit is given
        validation = dataset(found["val"], eval_batch(shape, largest=256), training=False, text=texts["val"]) if found["val"] else None
        fit(frozen, resumed_from, head, train, validation)
        # The whole model's optimizer gets its variables, as if it had trained: a checkpoint or model saved
        # now loads without Keras skipping an optimizer state it finds missing.
        model.optimizer.build(model.trainable_variables)
    finally:
        for saver in savers:
            saver.whole = None
