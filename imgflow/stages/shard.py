"""shard: the clean table as TFRecord files, one set per split.

Output folder::

    <split>-<index>-of-<count>.tfrecord   tf.train.Example records (spec: ``imgflow.data.tfrecord``),
                                          e.g. train-00000-of-00004.tfrecord

Shard ``index`` of every split holds that split's records among the clean table's rows
``[index * R, (index + 1) * R)``, in table order, where R is ``records_per_shard`` or as many records
as fit in ``shard_bytes`` (about 100 MB: a train shard then holds about 70 MB); a table of fewer than
``min_shards`` such ranges is cut into ``min_shards`` (8) equal ones while each still holds 10 MB, so
that the parallel writers, and later tf.data's parallel readers, have files to share (TensorFlow's
rule of thumb: many more files than readers, each over 10 MB). So a shard's content
depends only on the data and the config, and the shards are written in parallel, one worker process
per range of rows (``imgflow.runtime.parallel``), each reading only its rows: memory holds one range per
worker, not the table. Writing needs no TensorFlow (``imgflow.data.tfrecord``). With
``IMGFLOW_TASK_RUNNER=dask[:ADDRESS]`` the ranges run on the Dask cluster: on an object-store root the
workers read the clean table from the store and write their shards to the build's shared scratch
there, and this process copies them into the output (which the store then publishes).

The manifest's info names each split's files, record and per-class counts, the image shape, the
class names and whether the examples carry text (a clean table with a ``text`` column): everything a
reader needs without opening the shards. Records the audit leaves out (``[audit] action = "exclude"``:
``ShardConfig.exclude``) are in no split; ``excluded.parquet`` lists them with why, and the info counts
them by kind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from imgflow.config import ShardConfig
from imgflow.data.cleantable import SPLITS
from imgflow.data.tables import open_parquet
from imgflow.data.tfrecord import TFRecordWriter, encode_example, shard_name
from imgflow.results import CleanInfo, ShardInfo, SplitShards, StageResult
from imgflow.runtime import progress
from imgflow.runtime.parallel import cluster_pool, dask_address, ordered_map
from imgflow.store.scratch import shared_scratch
from imgflow.store.stage import Stage

_EXAMPLE_OVERHEAD = 64  # bytes of a serialized example besides its pixels (framing, names, id)
_MIN_SHARD_BYTES = 10 * 2**20
_BATCH = 1024
EXCLUDED = "excluded.parquet"  # the records [audit] action = "exclude" left out: id, reason


def records_per_shard(config: ShardConfig, image_shape: list[int], total: int) -> int:
    """How many consecutive records of a ``total``-record clean table each shard holds."""
    if config.records_per_shard is not None:
        return max(1, config.records_per_shard)
    record_bytes = math.prod(image_shape) + _EXAMPLE_OVERHEAD
    size = max(1, config.shard_bytes // record_bytes)
    count = min(config.min_shards, total * record_bytes // _MIN_SHARD_BYTES)
    return min(size, math.ceil(total / count)) if count > 1 else size


def write_shards(
    clean_path: str, start: int, end: int, index: int, count: int, out_dir: str, exclude: frozenset[str] = frozenset()
) -> dict[str, Counter[int]]:
    """Rows ``[start, end)`` of the clean table as shard ``index`` of every split, but the records whose
    id is in ``exclude``; the labels written per split. Runs in a worker process; ``clean_path`` and
    ``out_dir`` are local paths or URIs."""
    table = open_parquet(clean_path)
    names = ["id", "label", "split", "pixels"] + (["text"] if "text" in table.schema_arrow.names else [])
    writers = {split: TFRecordWriter(f"{out_dir}/{shard_name(split, index, count)}") for split in SPLITS}
    written: dict[str, Counter[int]] = {split: Counter() for split in SPLITS}
    try:
        first = 0
        for group in range(table.metadata.num_row_groups):
            rows = table.metadata.row_group(group).num_rows
            if first < end and first + rows > start:
                part = table.read_row_group(group, columns=names)
                part = part.slice(max(0, start - first), min(end, first + rows) - max(start, first))
                for batch in part.to_batches(max_chunksize=_BATCH):  # Python objects for a batch at a time
                    columns = [batch.column(name).to_pylist() for name in names]
                    texts = columns[4] if len(columns) > 4 else [None] * batch.num_rows
                    for record_id, label, split, pixels, text in zip(*columns[:4], texts, strict=True):
                        if record_id in exclude:
                            continue
                        writers[split].write(encode_example(record_id, pixels, label, text))
                        written[split][label] += 1
            first += rows
    finally:
        for writer in writers.values():
            writer.close()
    return written


def _build(out_dir: Path, config: ShardConfig, inputs: Mapping[str, StageResult]) -> ShardInfo:
    clean = inputs["clean"]
    info = clean.info
    assert isinstance(info, CleanInfo), clean.stage
    path = str(clean.file("records.parquet"))
    total = open_parquet(path).metadata.num_rows
    size = records_per_shard(config, info.image_shape, total)
    count = max(1, math.ceil(total / size))
    where = str(out_dir)
    if dask_address() is not None and clean.uri is not None:
        # Workers on other machines read the clean table from the store and write where all can reach.
        path, where = f"{clean.uri}/records.parquet", shared_scratch(out_dir)
    exclude = frozenset(record_id for record_id, _ in config.exclude)
    jobs = [(path, i * size, min(total, (i + 1) * size), i, count, where, exclude) for i in range(count)]
    labels: dict[str, Counter[int]] = {split: Counter() for split in SPLITS}
    with cluster_pool(len(jobs)) as pool:
        for done, written in enumerate(ordered_map(write_shards, jobs, pool)):
            for split, counts in written.items():
                labels[split].update(counts)
            if where != str(out_dir):
                for split in SPLITS:
                    name = shard_name(split, done, count)
                    pafs.copy_files(f"{where}/{name}", str(out_dir / name), destination_filesystem=pafs.LocalFileSystem())
            progress.report(min(total, (done + 1) * size), total, "records")
    if config.exclude:  # what the audit left out, and why, as the clean stage keeps its quarantine
        pq.write_table(pa.table({"id": [i for i, _ in config.exclude], "reason": [why for _, why in config.exclude]}), out_dir / EXCLUDED)
    return ShardInfo(
        excluded=dict(Counter(why.split(":")[0] for _, why in config.exclude)),
        image_shape=info.image_shape,
        class_names=info.class_names,
        data_fingerprint=info.data_fingerprint,
        text=info.text is not None,
        splits={
            split: SplitShards(
                files=[shard_name(split, i, count) for i in range(count)],
                records=sum(labels[split].values()),
                class_counts=[labels[split][index] for index in range(len(info.class_names))],
            )
            for split in SPLITS
        },
    )


SHARD = Stage("shard", "6", _build)
