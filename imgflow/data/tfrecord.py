"""The one TFRecord feature spec, shared by the shard writer and the training parser.

A record holds the cleaned pixels as raw uint8 bytes (height x width x channels, row-major), the class
index and the record id, and, when the data carries text, the cleaned text (UTF-8; empty for none). Raw bytes rather than PNG let the reader parse and decode a whole batch with
two vectorised ops instead of one image decode per record.

Writing needs no TensorFlow: ``encode_example`` builds the ``tf.train.Example`` bytes for this fixed
spec directly (the same bytes ``Example.SerializeToString(deterministic=True)`` gives: a test holds
them equal), and ``TFRecordWriter`` frames them as TFRecord does (length, data, masked CRC-32C of
each). So the shard stage's worker processes stay small and start fast; only reading (``parse_*``)
imports TensorFlow.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO, Self

import google_crc32c

from imgflow.data.tables import open_output

# feature name -> its kind; the parser's tf.io spec and the writer's encoding both follow this.
SPEC = {"id": "bytes", "image": "bytes", "label": "int64"}
TEXT_SPEC = {**SPEC, "text": "bytes"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(record_id: str, pixels: bytes, label: int, text: str | None = None) -> bytes:
    """The serialized ``tf.train.Example`` of one record (map entries in key order, as deterministic
    serialization writes them); ``text`` None: the data carries no text (no ``text`` feature)."""
    if label < 0:
        raise ValueError(f"label must be a class index, got {label}")
    values: dict[str, Any] = {"id": record_id.encode(), "image": pixels, "label": label}
    spec = SPEC
    if text is not None:
        values["text"], spec = text.encode(), TEXT_SPEC
    entries = b""
    for name in sorted(spec):
        # Feature.bytes_list = BytesList(value=[...]), or Feature.int64_list, packed
        feature = _field(1, _field(1, values[name])) if spec[name] == "bytes" else _field(3, _field(1, _varint(values[name])))
        entries += _field(1, _field(1, name.encode()) + _field(2, feature))  # Features.feature map entry
    return _field(1, entries)  # Example.features


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordWriter:
    """Writes TFRecord files without TensorFlow: ``tf.data.TFRecordDataset`` reads them."""

    def __init__(self, path: str) -> None:
        """``path``: a local path, or a URI that pyarrow's filesystems write (a cluster's shared store)."""
        self._file: BinaryIO = open_output(path) if "://" in path else open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._file.write(length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record)))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _tf_spec(text: bool) -> dict[str, Any]:
    import tensorflow as tf

    kinds = {"bytes": tf.string, "int64": tf.int64}
    return {name: tf.io.FixedLenFeature([], kinds[kind]) for name, kind in (TEXT_SPEC if text else SPEC).items()}


def parse_records(serialized: Any, shape: tuple[int, ...], text: bool = False) -> dict[str, Any]:
    """A batch of serialized examples -> {"image": uint8 [N, H, W, C], "label": int64 [N], "id": [N]},
    and "text" [N] (strings) with ``text``."""
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, _tf_spec(text))
    images = tf.io.decode_raw(parsed["image"], tf.uint8)
    return {"image": tf.reshape(images, [-1, *shape]), **{name: parsed[name] for name in ("label", "id", "text") if name in parsed}}


def parse_texts(serialized: Any) -> Any:
    """A batch of serialized examples with text -> their texts (strings [N]), nothing else decoded."""
    import tensorflow as tf

    return tf.io.parse_example(serialized, {"text": tf.io.FixedLenFeature([], tf.string)})["text"]


def parse_batch(serialized: Any, shape: tuple[int, ...], text: bool = False) -> tuple[Any, Any]:
    """A batch of serialized examples -> (uint8 images [N, H, W, C], int64 labels [N]); with ``text``,
    ({"pixels": images, "text": strings [N]}, labels)."""
    parsed = parse_records(serialized, shape, text)
    if text:
        return {"pixels": parsed["image"], "text": parsed["text"]}, parsed["label"]
    return parsed["image"], parsed["label"]
