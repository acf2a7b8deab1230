"""audit: what is wrong with a clean table's content: suspected label errors, near-duplicates, outliers.

Output folder::

    audit.json    the counts, what the embeddings were, and the top findings of each kind
    label_issues.parquet     each suspected label error: id, split, given and suggested label,
                             cleanlab's label quality score; most doubtful first
    near_duplicates.parquet  each pair: both records (id, split, label), their distance, their
                             perceptual hashes' differing bits, whether it crosses splits; leakage first
    outliers.parquet         each outlier: id, split, label, why, its neighbour distance
    report.md     the counts and the top findings (the Prefect artifact)
    report.html   the findings as pictures: label errors with their given and suggested labels,
                  near-duplicate pairs side by side (leakage first), outliers
    labels.csv    the suspected label errors as corrections (id, label: the suggested one; given,
                  score, split): reviewed, it is what ``[clean] labels`` applies

Inputs: ``data``, a clean table, and ``reference``, the current champion's registry folder, absent when
there is none or when it learned from this very table (as for drift: a rerun after a promotion reuses
the audit). How it judges is ``imgflow.data.audit``'s; this stage streams the table through it, one
batch at a time, and keeps a few dozen floats a record. It changes nothing itself: what to do with
the findings is the user's (the report says what each one is), and ``[audit] action = "exclude"`` has
the shard stage leave them out (``imgflow.pipeline.audited_shards``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import AuditConfig
from imgflow.data import audit
from imgflow.data.cleantable import SPLITS, pixel_array
from imgflow.data.tables import open_parquet
from imgflow.reporting.audit import report_html, report_markdown
from imgflow.results import AuditInfo, CleanInfo, StageResult
from imgflow.runtime.errors import ConfigError
from imgflow.serving.inference import OnnxModel
from imgflow.serving.views import unless_learned_from
from imgflow.store.files import write_json_atomic
from imgflow.store.stage import Stage

BATCH = 512
LABELS = "labels.csv"  # the suspected label errors with the suggested labels: a [clean] labels file to review
TOP = 5  # examples of each finding in the stage's info (the summary's)


def _batches(data: StageResult, text: bool) -> Iterator[tuple[np.ndarray, np.ndarray, list[str], list[str], list[str] | None]]:
    """The table's records, in order: (pixels, labels, ids, splits, texts or None) a batch at a time."""
    assert isinstance(data.info, CleanInfo), data.stage
    shape = tuple(data.info.image_shape)
    columns = ["id", "label", "split", "pixels", *(["text"] if text else [])]
    for batch in open_parquet(data.file("records.parquet")).iter_batches(batch_size=BATCH, columns=columns):
        texts = batch.column("text").to_pylist() if text else None
        yield (
            pixel_array(batch.column("pixels"), shape),
            batch.column("label").to_numpy(),
            batch.column("id").to_pylist(),
            batch.column("split").to_pylist(),
            texts,
        )


LITE0_SIDE = 48  # "auto" embeds images at least this many pixels a side with Lite0's ImageNet features
STEP = 128  # images Lite0 embeds at once, at most (fewer for large ones: ``eval_batch``)


class Embedder(NamedTuple):
    """What gives a batch of records its meaning (features [N, D]), whether it reads their text, and
    what it is, for the report."""

    embed: Callable[[np.ndarray, list[str] | None], np.ndarray] | None  # None: the look is the meaning
    text: bool
    what: str


def _lite0_side(shape: tuple[int, ...]) -> int:
    """The size Lite0 sees images of ``shape`` at: their own, from 32 to 224 pixels a side."""
    return min(224, max(32, max(shape[:2])))


def _lite0(shape: tuple[int, ...]) -> Callable[[np.ndarray, list[str] | None], np.ndarray]:
    """EfficientNet-Lite0's ImageNet features (its pooled last block: 1,280 floats) of images of ``shape``,
    at their own size (from 32 to 224 pixels a side)."""
    import tensorflow as tf

    from imgflow.config import TrainConfig
    from imgflow.training.frozen import extractor
    from imgflow.training.inputs import eval_batch
    from imgflow.training.models import make_transfer

    side = _lite0_side(shape)
    network = extractor(make_transfer(shape, 2, TrainConfig(model="transfer", backbone_size=side)))
    step = eval_batch((side, side), largest=STEP)
    # One traced graph for every batch: eager calls kept each layer's activations alive and paid Python
    # for every layer (benchmarks/RESULTS.md, "The audit": the memory at 200,000 records).
    graph = tf.function(lambda images: network(images, training=False), input_signature=[tf.TensorSpec((None, *shape), tf.float32)])

    def embed(pixels: np.ndarray, _: list[str] | None) -> np.ndarray:
        parts = [graph(tf.constant(pixels[i : i + step], tf.float32)) for i in range(0, len(pixels), step)]
        return np.concatenate([np.asarray(part, dtype=np.float32) for part in parts])

    return embed


def _embedder(config: AuditConfig, champion: StageResult | None, info: CleanInfo) -> Embedder:
    """The meaning the audit judges labels and outliers by (``[audit] embeddings``)."""
    shape = tuple(info.image_shape)
    if config.embeddings == "pixels":
        return Embedder(None, False, "pixels (as [audit] embeddings says)")
    why = "no champion, or it learned from this data"
    if champion is not None and config.embeddings in ("auto", "champion"):
        onnx = Path(champion.path) / "model.onnx"
        model = OnnxModel(onnx, keep_memory=False, embeddings=True) if onnx.is_file() else None
        if model is None:
            why = f"champion {champion.key} has no ONNX model"
        elif model.image_shape != list(info.image_shape):
            why = f"champion {champion.key} takes images of {model.image_shape}, this data is {info.image_shape}"
        elif model.takes_text and info.text is None:
            why = f"champion {champion.key} reads text, this data has none"
        else:
            return Embedder(
                lambda pixels, texts: model.embed(pixels, texts)[0], model.takes_text, f"champion {champion.key}'s penultimate layer"
            )
    if config.embeddings == "champion":
        raise ConfigError(f'[audit] embeddings = "champion", but there is none to use: {why}; write "auto", "lite0" or "pixels"')
    if config.embeddings == "lite0" or min(shape[:2]) >= LITE0_SIDE:
        why = "as [audit] embeddings says" if config.embeddings == "lite0" else why
        return Embedder(_lite0(shape), False, f"EfficientNet-Lite0's ImageNet features at {_lite0_side(shape)} px ({why})")
    return Embedder(None, False, f"pixels ({why}; images under {LITE0_SIDE} px a side)")


def _build(out_dir: Path, config: AuditConfig, inputs: Mapping[str, StageResult]) -> AuditInfo:
    data, champion = inputs["data"], inputs.get("reference")
    info = data.info
    assert isinstance(info, CleanInfo), data.stage
    embedder = _embedder(config, champion, info)
    embeddings = embedder.what
    looks, meanings = audit.Reducer(), audit.Reducer()
    labels, hashes, blanks, ids, splits = [], [], [], [], []
    for pixels, batch_labels, batch_ids, batch_splits, texts in _batches(data, embedder.text):
        looks.add(audit.look(pixels))
        if embedder.embed is not None:
            meanings.add(embedder.embed(pixels, texts))
        labels.append(batch_labels)
        hashes.append(audit.dhash(pixels))
        blanks.append(audit.blank(pixels))
        ids += batch_ids
        splits += batch_splits
    records = len(ids)
    label_array = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    hash_array = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    near, near_d = audit.nearest(looks.result())
    if embedder.embed is not None:
        meaning, meaning_d = audit.nearest(meanings.result())
    else:
        meaning, meaning_d = near, near_d
    classes = len(info.class_names)
    issues = audit.label_issues(label_array, audit.vote(meaning, meaning_d, label_array, classes)) if records > 1 else []
    pairs = audit.near_duplicates(near, near_d, hash_array, config.near_duplicate)
    scores = audit.outlier_scores(meaning_d)
    blank = np.concatenate(blanks) if blanks else np.zeros(0, bool)
    odd = audit.outliers(blank, looks.unexplained(), scores)

    columns = _Columns(
        pa.array(ids, pa.string()), np.array([SPLITS.index(split) for split in splits], np.int8), label_array, info.class_names
    )
    at = np.array([issue.index for issue in issues], np.int64)
    issue_table = pa.table(
        {
            **columns.of(at),
            "suggested": columns.names(np.array([issue.suggested for issue in issues], np.int64)),
            "score": pa.array([round(issue.score, 4) for issue in issues], pa.float64()),
        }
    )
    cross = columns.splits[pairs.first] != columns.splits[pairs.second]
    order = np.lexsort((pairs.distance, ~cross))  # leakage first, closest first within each
    pair_table = pa.table(
        {
            **{f"first_{name}": value for name, value in columns.of(pairs.first[order]).items()},
            **{f"second_{name}": value for name, value in columns.of(pairs.second[order]).items()},
            "distance": pa.array(np.round(pairs.distance[order], 5)),
            "hash_bits": pa.array(pairs.hash_bits[order]),
            "cross_split": pa.array(cross[order]),
        }
    )
    odd_at = np.array([index for index, _ in odd], np.int64)
    outlier_table = pa.table(
        {**columns.of(odd_at), "why": pa.array([why for _, why in odd], pa.string()), "score": pa.array(np.round(scores[odd_at], 4))}
    )
    for name, table in ((audit.ISSUES, issue_table), (audit.PAIRS, pair_table), (audit.OUTLIERS, outlier_table)):
        pq.write_table(table, out_dir / name)
    shown = config.examples
    found_issues = issue_table.slice(0, max(shown, TOP)).to_pylist()
    found_pairs = [_nested(row) for row in pair_table.slice(0, max(shown, TOP)).to_pylist()]
    found_outliers = outlier_table.slice(0, max(shown, TOP)).to_pylist()
    counts = {"label_issues": len(issues), "near_duplicates": len(pairs.first), "cross_split": int(cross.sum()), "outliers": len(odd)}
    note = f"{records} records of {info.source}; embeddings: {embeddings}"
    write_json_atomic(
        out_dir / "audit.json",
        {
            "note": note,
            "embeddings": embeddings,
            "config": config.model_dump(),
            **counts,
            "examples": {"label_issues": found_issues[:shown], "near_duplicates": found_pairs[:shown], "outliers": found_outliers[:shown]},
        },
    )
    _suggestions(out_dir / LABELS, issue_table)
    pictures = _pictures(data, [f["id"] for f in found_issues[:shown]], found_pairs[:shown], found_outliers[:shown])
    (out_dir / "report.md").write_text(report_markdown(info.source, note, counts, found_issues, found_pairs, found_outliers))
    (out_dir / "report.html").write_text(report_html(info.source, note, counts, found_issues, found_pairs, found_outliers, pictures, shown))
    return AuditInfo(
        records=records,
        embeddings=embeddings,
        label_issues=counts["label_issues"],
        near_duplicates=counts["near_duplicates"],
        cross_split=counts["cross_split"],
        outliers=counts["outliers"],
        examples={"label_issues": found_issues[:TOP], "near_duplicates": found_pairs[:TOP], "outliers": found_outliers[:TOP]},
        note=note,
    )


class _Columns(NamedTuple):
    """The audited records' ids, splits (codes into ``SPLITS``) and labels, for the findings' tables."""

    ids: pa.Array
    splits: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def names(self, labels: np.ndarray) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(labels.astype(np.int32)), pa.array(self.class_names))

    def of(self, at: np.ndarray) -> dict[str, pa.Array]:
        """The id, split and label of the records at ``at``."""
        return {
            "id": self.ids.take(pa.array(at, pa.int64())),
            "split": pa.DictionaryArray.from_arrays(pa.array(self.splits[at].astype(np.int32)), pa.array(SPLITS)),
            "label": self.names(self.labels[at]),
        }


def _nested(row: dict[str, Any]) -> dict[str, Any]:
    """A near-duplicates row as the report and the summary show it: both records, then the pair's figures."""
    side = {end: {name: row[f"{end}_{name}"] for name in ("id", "split", "label")} for end in ("first", "second")}
    return {**side, "distance": row["distance"], "hash_bits": row["hash_bits"], "cross_split": row["cross_split"]}


def _suggestions(path: Path, issues: pa.Table) -> None:
    """The suspected label errors as a labels CSV (``id``, ``label``: the suggested one; then the given
    label, the score and the split, for the person who reviews it): kept as it is, or with the lines one
    disagrees with deleted, it is what ``[clean] labels`` applies."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "given", "score", "split"])
        writer.writerows([issue["id"], issue["suggested"], issue["label"], issue["score"], issue["split"]] for issue in issues.to_pylist())


def _pictures(
    data: StageResult, issue_ids: list[str], pairs: list[dict[str, Any]], outliers: list[dict[str, Any]]
) -> dict[str, np.ndarray]:
    """The pixels of the records the report shows, by id, from a second pass over the table."""
    wanted = {*issue_ids, *(pair[side]["id"] for pair in pairs for side in ("first", "second")), *(o["id"] for o in outliers)}
    found: dict[str, np.ndarray] = {}
    if not wanted:
        return found
    for pixels, _, batch_ids, _, _ in _batches(data, text=False):
        for index, record_id in enumerate(batch_ids):
            if record_id in wanted:
                found[record_id] = pixels[index].copy()
    return found


AUDIT = Stage("audit", "1", _build, relevant=unless_learned_from)
