"""shard: the clean table as TFRecord files, one set per split.

Output folder::

    <split>-<index>-of-<count>.tfrecord   tf.train.Example records (spec: ``imgflow.features``),
                                          e.g. train-00000-of-00004.tfrecord

The manifest's info names each split's files, record and per-class counts, the image shape and the class names:
everything a reader needs without opening the shards. Records keep the clean table's order, so a
shard's content depends only on the data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgflow import progress
from imgflow.cleantable import SPLITS
from imgflow.config import ShardConfig
from imgflow.results import CleanInfo, ShardInfo, SplitShards, StageResult
from imgflow.store import Stage


def _build(out_dir: Path, config: ShardConfig, inputs: Mapping[str, StageResult]) -> ShardInfo:
    import tensorflow as tf

    from imgflow.features import make_example, shard_name

    clean = inputs["clean"]
    info = clean.info
    assert isinstance(info, CleanInfo), clean.stage
    table = pq.read_table(clean.file("records.parquet"))
    splits: dict[str, SplitShards] = {}
    written = 0
    for split in SPLITS:
        part = table.filter(pc.equal(table["split"], split))
        count = max(1, math.ceil(part.num_rows / config.records_per_shard))
        files = []
        for index in range(count):
            rows = part.slice(index * config.records_per_shard, config.records_per_shard)
            name = shard_name(split, index, count)
            with tf.io.TFRecordWriter(str(out_dir / name)) as writer:
                for record_id, pixels, label in zip(
                    rows["id"].to_pylist(), rows["pixels"].to_pylist(), rows["label"].to_pylist(), strict=True
                ):
                    writer.write(make_example(record_id, pixels, label))
            files.append(name)
            written += rows.num_rows
            progress.report(written, table.num_rows, "records")
        labels = Counter(part["label"].to_pylist())
        class_counts = [labels[index] for index in range(len(info.class_names))]
        splits[split] = SplitShards(files=files, records=part.num_rows, class_counts=class_counts)
    return ShardInfo(
        image_shape=info.image_shape, class_names=info.class_names, data_fingerprint=info.data_fingerprint, splits=splits
    )


SHARD = Stage("shard", "3", _build)
