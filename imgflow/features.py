"""The one TFRecord feature spec, shared by the shard writer and the training parser.

A record holds the cleaned pixels as raw uint8 bytes (height x width x channels, row-major), the class
index and the record id. Raw bytes rather than PNG let the reader parse and decode a whole batch with
two vectorised ops instead of one image decode per record.
"""

from __future__ import annotations

import tensorflow as tf

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "id": tf.io.FixedLenFeature([], tf.string),
}


def make_example(record_id: str, pixels: bytes, label: int) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record_id.encode()])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Features is a protobuf map, whose order is arbitrary unless asked for: fixed order, same bytes.
    return example.SerializeToString(deterministic=True)


def parse_records(serialized: tf.Tensor, shape: tuple[int, int, int]) -> dict[str, tf.Tensor]:
    """A batch of serialized examples -> {"image": uint8 [N, H, W, C], "label": int64 [N], "id": [N]}."""
    parsed = tf.io.parse_example(serialized, FEATURES)
    images = tf.io.decode_raw(parsed["image"], tf.uint8)
    return {"image": tf.reshape(images, [-1, *shape]), "label": parsed["label"], "id": parsed["id"]}


def parse_batch(serialized: tf.Tensor, shape: tuple[int, int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of serialized examples -> (uint8 images [N, H, W, C], int64 labels [N])."""
    parsed = parse_records(serialized, shape)
    return parsed["image"], parsed["label"]


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"
