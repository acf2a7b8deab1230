import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgflow.config import CleanConfig, DownloadConfig, ShardConfig
from imgflow.stages.clean import CLEAN
from imgflow.data.sources import source_fingerprint
from imgflow.stages.download import DOWNLOAD
from imgflow.results import shard_files
from imgflow.stages.shard import SHARD
from imgflow.store.artifacts import ArtifactStore, StageResult


@pytest.fixture
def clean(store: ArtifactStore) -> StageResult:
    config = DownloadConfig(source="sample:digits", limit=300)
    raw = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source)})
    return CLEAN.run(store, CleanConfig(image_size=(8, 8), channels=1), {"raw": raw})


def test_shards_round_trip_every_record(store: ArtifactStore, clean: StageResult) -> None:
    from imgflow.training.inputs import load_arrays

    shards = SHARD.run(store, ShardConfig(records_per_shard=64), {"clean": clean})
    table = pq.read_table(clean.file("records.parquet")).to_pylist()
    assert shards.info.image_shape == [8, 8, 1]
    for split in ("train", "val", "test"):
        expected = [r for r in table if r["split"] == split]
        files = shard_files(shards, split)
        assert shards.info.splits[split].records == len(expected)
        assert [f.rsplit("/", 1)[1] for f in files] == [
            f"{split}-{i:05d}-of-{len(files):05d}.tfrecord" for i in range(len(files))
        ]
        images, labels, ids, _ = load_arrays(files, (8, 8, 1))
        assert ids == [r["id"] for r in expected]
        assert labels.tolist() == [r["label"] for r in expected]
        assert all(
            np.array_equal(image.ravel(), np.frombuffer(r["pixels"], np.uint8)) for image, r in zip(images, expected, strict=True)
        )


def test_training_pipeline_batches_and_augments(store: ArtifactStore, clean: StageResult) -> None:
    from imgflow.training.inputs import make_augmenter, shard_dataset

    shards = SHARD.run(store, ShardConfig(), {"clean": clean})
    dataset = shard_dataset(
        shard_files(shards, "train"), (8, 8, 1), 32, training=True, augmenter=make_augmenter(0.1, 0.05, 0.1, 0)
    )
    images, labels = next(iter(dataset))
    assert images.shape == (32, 8, 8, 1) and images.dtype.name == "float32" and labels.shape == (32,)
    assert 0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 255
    assert make_augmenter(0, 0, 0, 0) is None


def test_sharding_is_byte_for_byte_reproducible(tmp_path, clean: StageResult) -> None:
    first = SHARD.run(ArtifactStore(tmp_path / "a"), ShardConfig(), {"clean": clean})
    second = SHARD.run(ArtifactStore(tmp_path / "b"), ShardConfig(), {"clean": clean})
    assert first.fingerprint == second.fingerprint


@pytest.mark.parametrize(
    ("shape", "total", "shards", "records"),
    [
        ([28, 28, 1], 5_000, 1, 5_000),  # 4 MB: one shard
        ([28, 28, 1], 70_000, 5, 14_000),  # 59 MB: five shards of about 12 MB, none under 10 MB
        ([64, 64, 3], 25_000, 8, 3_125),  # 309 MB: min_shards (8) shards, not three and a sliver
        ([64, 64, 3], 200_000, 24, 8_489),  # 2.5 GB: 100 MB shards
    ],
)
def test_shards_are_100_mb_but_at_least_min_shards_of_10_mb(shape: list[int], total: int, shards: int, records: int) -> None:
    from imgflow.stages.shard import records_per_shard

    size = records_per_shard(ShardConfig(), shape, total)
    assert (math.ceil(total / size), min(size, total)) == (shards, records)
    assert records_per_shard(ShardConfig(records_per_shard=64), shape, total) == 64


@pytest.mark.parametrize("deterministic", [True, False])
def test_training_reads_shards_in_a_fixed_order_unless_told_not_to(store: ArtifactStore, clean: StageResult, deterministic: bool) -> None:
    """The record shuffle starts from the interleave's order: an interleave free to emit whichever
    shard's records are ready first gave a busy machine a different model from the same inputs."""
    import tensorflow as tf

    from imgflow.training.inputs import shard_dataset

    shards = SHARD.run(store, ShardConfig(records_per_shard=64), {"clean": clean})
    dataset = shard_dataset(shard_files(shards, "train"), (8, 8, 1), 32, training=True, deterministic=deterministic)
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    interleaves = [node for node in graph.node if node.op.startswith("ParallelInterleaveDataset")]
    assert [node.attr["deterministic"].s for node in interleaves] == [b"true" if deterministic else b"false"]


def test_an_example_with_text_is_what_tensorflow_serializes() -> None:
    import tensorflow as tf

    from imgflow.data.tfrecord import encode_example

    def feature(value: bytes | int) -> tf.train.Feature:
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    for text in ("a caption, caf\u00e9", ""):
        values = {"id": b"r1", "image": bytes(range(16)), "label": 3, "text": text.encode()}
        expected = tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in values.items()}))
        assert encode_example("r1", bytes(range(16)), 3, text) == expected.SerializeToString(deterministic=True)


def test_text_travels_from_the_clean_table_into_the_training_input(tmp_path, store: ArtifactStore) -> None:
    from imgflow.training.inputs import load_arrays, shard_dataset, with_tokens
    from imgflow.data.text import TextEncoder
    from imgflow.data.synthetic import captioned_folder

    captioned_folder(tmp_path / "data", per_class=20, side=8)
    config = DownloadConfig(source=f"folder:{tmp_path / 'data'}", options={"text_sidecar": ".txt"})
    raw = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source, config.options)})
    clean = CLEAN.run(store, CleanConfig(), {"raw": raw})
    shards = SHARD.run(store, ShardConfig(), {"clean": clean})
    assert shards.info.text and clean.info.text is not None and clean.info.text.empty == 0
    records = load_arrays(shard_files(shards, "train"), (8, 8, 1), text=True)
    table = {r["id"]: r["text"] for r in pq.read_table(clean.file("records.parquet")).to_pylist()}
    assert records.texts == [table[i] for i in records.ids] and all(records.texts)

    dataset = shard_dataset(shard_files(shards, "train"), (8, 8, 1), 16, training=True, text=True)
    features, labels = next(iter(dataset))
    assert set(features) == {"pixels", "text"} and features["text"].dtype.name == "string"
    encoder = TextEncoder(["sun", "snow", "beach"], 6)
    # Modality dropout blanks one modality of about that share of the records, never both.
    features, labels = next(iter(with_tokens(dataset.unbatch().batch(2000).take(1), encoder, modality_dropout=0.5, seed=1)))
    no_text = ~features["tokens"].numpy().any(axis=1)
    no_image = ~features["pixels"].numpy().reshape(len(labels), -1).any(axis=1)
    assert features["tokens"].shape[1] == 6 and not (no_text & no_image).any()
    assert 0.3 < (no_text | no_image).mean() < 0.7 and no_text.any() and no_image.any()
