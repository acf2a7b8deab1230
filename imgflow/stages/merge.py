"""merge: the union of several cleaned partitions, as one clean table (same layout as ``clean``).

Output folder: the clean-table layout of ``imgflow.data.cleantable``.

Inputs are clean outputs named ``part:<name>`` (e.g. ``part:2024-05-01``), in order. Labels are
re-indexed against one class list (the spec's ``class_names``, else every label found, sorted), an
image seen in two partitions is a ``duplicate`` (same label: the earliest partition keeps it) or a
``label_conflict`` (every copy), and the accounting adds up across partitions: ``records_in`` is the sum
of theirs and every record is kept or quarantined once. Splits come from the pixels alone, so a record
has the same split in the union as in its partition. Partitions must clean to one image shape: set
``[clean] image_size`` and ``channels`` in the spec when they would differ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgflow.config import CleanConfig
from imgflow.data.cleantable import QUARANTINE_SCHEMA, CleanTableWriter, natural_key
from imgflow.data.images import encode_png
from imgflow.data.partitions import PART
from imgflow.data.recordkeys import RecordKeys, content_conflicts
from imgflow.data.tables import open_parquet
from imgflow.results import CleanInfo, StageResult
from imgflow.runtime import progress
from imgflow.runtime.errors import ConfigError
from imgflow.store.stage import Stage

_BATCH = 4096


def _build(out_dir: Path, config: CleanConfig, inputs: Mapping[str, StageResult]) -> CleanInfo:
    parts = [result for name, result in inputs.items() if name.startswith(PART)]
    infos: list[CleanInfo] = [p.info for p in parts]  # type: ignore[misc]  # clean results
    shapes = {tuple(info.image_shape) for info in infos}
    if len(shapes) > 1:
        raise ConfigError(
            f"the partitions clean to different image shapes ({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}): "
            "set [clean] image_size and channels in the dataset spec so they agree"
        )
    shape = next(iter(shapes))
    with_text = {info.text is not None for info in infos}
    if len(with_text) > 1:
        raise ConfigError(
            "some partitions carry text and some do not: read every partition with the same text option "
            "(text_column, text_sidecar or text_feature under [options])"
        )
    class_names = (
        list(config.class_names) if config.class_names else sorted({name for info in infos for name in info.class_names}, key=natural_key)
    )
    index = {name: i for i, name in enumerate(class_names)}
    # Duplicates and conflicts across partitions, found on compact keys: ids, labels, content hashes.
    keys = RecordKeys(sum(info.kept for info in infos))
    for part in parts:
        for batch in open_parquet(part.file("records.parquet")).iter_batches(batch_size=_BATCH, columns=["id", "label_name", "sha256"]):
            digests = np.frombuffer(bytes.fromhex("".join(batch.column("sha256").to_pylist())), np.uint8).reshape(-1, 32)
            keys.extend(batch.column("id"), batch.column("label_name").to_pylist(), digests, np.ones(batch.num_rows, np.bool_))
    found = content_conflicts(keys)
    del keys
    modes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for info in infos:
        modes.update(info.source_images.modes)
        sizes.update(info.source_images.size_counts)
    total = sum(info.records_in for info in infos)
    with CleanTableWriter(out_dir, config, class_names, shape[-1], with_text=with_text.pop()) as writer:
        # The partitions' own quarantines first, then the kept records (in partition order), moving
        # the ones seen in another partition to the quarantine as they come.
        for part in parts:
            for batch in open_parquet(part.file("quarantine.parquet")).iter_batches(batch_size=_BATCH):
                writer.write_quarantined(pa.Table.from_batches([batch]))
        for part in parts:
            for batch in open_parquet(part.file("records.parquet")).iter_batches(batch_size=_BATCH):
                table = pa.Table.from_batches([batch])
                names = table.column("label_name").to_pylist()
                table = table.set_column(table.schema.get_field_index("label"), "label", pa.array([index[n] for n in names], pa.int64()))
                dropped = pa.array([record_id in found for record_id in table.column("id").to_pylist()])
                writer.write_kept(table.filter(pc.invert(dropped)))
                writer.write_quarantined(_moved(table.filter(dropped), found, shape))
                progress.report(writer.kept + writer.quarantined, total, "records")
        return writer.finish(
            source=_describe([info.source for info in infos]),
            records_in=total,
            image_shape=list(shape),
            modes=modes,
            size_counts=sizes,
        )


def _moved(moved: pa.Table, found: Mapping[str, tuple[str, str]], shape: tuple[int, ...]) -> pa.Table:
    """Kept records of a partition that the union quarantines, with their pixels as PNG (the
    partition's clean table holds pixels, not the file: this keeps them viewable)."""
    ids = moved.column("id").to_pylist()
    return pa.table(
        {
            "id": ids,
            "label_name": moved.column("label_name"),
            "reason": [found[i][0] for i in ids],
            "detail": [found[i][1] for i in ids],
            "image": [encode_png(np.frombuffer(b, np.uint8).reshape(shape)) for b in moved.column("pixels").to_pylist()],
        },
        schema=QUARANTINE_SCHEMA,
    )


def _describe(sources: list[str]) -> str:
    """``parquet:ROOT/date=A .. date=B (N partitions)`` rather than every partition's source."""
    if len(sources) == 1:
        return sources[0]
    return f"{sources[0]} .. {sources[-1].rsplit('/', 1)[-1]} ({len(sources)} partitions)"


MERGE = Stage("merge", "4", _build)
