"""merge: the union of several cleaned partitions, as one clean table (same layout as ``clean``).

Output folder: the clean-table layout of ``imgflow.cleantable``.

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
import pyarrow.parquet as pq

from imgflow.cleantable import KEPT_SCHEMA, QUARANTINE_SCHEMA, content_conflicts, natural_key, write_clean_output
from imgflow.config import CleanConfig
from imgflow.errors import ConfigError
from imgflow.images import encode_png
from imgflow.results import CleanInfo, StageResult
from imgflow.store import Stage

PART = "part:"  # the prefix of the merge stage's input names: one input per cleaned partition


def _build(out_dir: Path, config: CleanConfig, inputs: Mapping[str, StageResult]) -> CleanInfo:
    parts = [result for name, result in inputs.items() if name.startswith(PART)]
    infos: list[CleanInfo] = [p.info for p in parts]  # type: ignore[misc]  # clean results
    shapes = {tuple(info.image_shape) for info in infos}
    if len(shapes) > 1:
        raise ConfigError(
            f"the partitions clean to different image shapes ({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}): "
            "set [clean] image_size and channels in the dataset spec so they agree"
        )
    class_names = list(config.class_names) if config.class_names else sorted(
        {name for info in infos for name in info.class_names}, key=natural_key
    )
    index = {name: i for i, name in enumerate(class_names)}
    kept = pa.concat_tables([pq.read_table(p.file("records.parquet")) for p in parts]) if parts else KEPT_SCHEMA.empty_table()
    names = kept.column("label_name").to_pylist()
    kept = kept.set_column(kept.schema.get_field_index("label"), "label", pa.array([index[n] for n in names], pa.int64()))
    ids = kept.column("id").to_pylist()
    found = content_conflicts(ids, names, kept.column("sha256").to_pylist())
    dropped = pa.array([record_id in found for record_id in ids])
    shape = next(iter(shapes))
    moved = kept.filter(dropped)
    merge_quarantine = pa.table(
        {
            "id": moved.column("id"),
            "label_name": moved.column("label_name"),
            "reason": [found[i][0] for i in moved.column("id").to_pylist()],
            "detail": [found[i][1] for i in moved.column("id").to_pylist()],
            # The partition's clean table holds pixels, not the file: keep them viewable as PNG.
            "image": [encode_png(np.frombuffer(b, np.uint8).reshape(shape)) for b in moved.column("pixels").to_pylist()],
        },
        schema=QUARANTINE_SCHEMA,
    )
    quarantined = pa.concat_tables([*(pq.read_table(p.file("quarantine.parquet")) for p in parts), merge_quarantine])
    modes, sizes = Counter(), Counter()
    for info in infos:
        modes.update(info.source_images.modes)
        sizes.update(info.source_images.size_counts)
    return write_clean_output(
        out_dir,
        config,
        source=_describe([info.source for info in infos]),
        records_in=sum(info.records_in for info in infos),
        kept=kept.filter(pc.invert(dropped)),
        quarantined=quarantined,
        class_names=class_names,
        image_shape=list(shape),
        modes=modes,
        size_counts=sizes,
    )


def _describe(sources: list[str]) -> str:
    """``parquet:ROOT/date=A .. date=B (N partitions)`` rather than every partition's source."""
    if len(sources) == 1:
        return sources[0]
    return f"{sources[0]} .. {sources[-1].rsplit('/', 1)[-1]} ({len(sources)} partitions)"


MERGE = Stage("merge", "1", _build)
