"""Batch prediction: a registered model labels every image of a folder or a Parquet table.

Inputs: ``PATH`` (an image file, or a folder read recursively), ``folder:PATH`` (the same) or
``parquet:PATH_OR_URI`` (an image-bytes column, ``image`` unless the options' ``image_column`` says
otherwise; ids from an ``id`` column, or the options' ``id_column``, when there is one). The options
come from a dataset spec's ``[options]`` and flags: ``input_options``. Images are decoded and converted exactly as the clean stage
does for training, then run in batches through ONNX Runtime (the default), its int8 variant, or the
TensorFlow SavedModel.

A model trained with text reads each record's text too: a Parquet input's ``text_column``, or a folder's
sidecar files (``text_sidecar = ".txt"``: ``cat_01.txt`` beside ``cat_01.jpg``), cleaned as the clean
stage cleans it. A record without text is predicted from its image alone; text that is not UTF-8 is
an error row, as an undecodable image is. A model without text ignores any text.

The output is one Parquet row per input image, in input order: ``id`` (the path relative to the
folder, or the table's id), ``label``, ``probability``, ``top_k`` (list of {label, probability}),
``model``, ``version``, ``backend`` and ``error``. An image that cannot be decoded gets a row with the
reason in ``error`` and null predictions: never a silent drop, never a failed batch. The file is
written next to its destination and renamed into place when complete.

The input is cut into pieces of about ``CHUNK_IMAGES`` images (slices of a folder's sorted files; runs
of a table's row groups, a row group never split) that worker processes predict on their own
(``imgflow.runtime.parallel``: one ONNX Runtime session per process, its threads a share of the cores), or the
Dask workers with ``IMGFLOW_TASK_RUNNER=dask[:ADDRESS]`` (one thread each). Each piece comes back as
its rows, written in input order, so the output does not depend on how many workers ran: byte for
byte a single process's. Memory holds a batch of pixels per worker and a piece's rows, whatever the
input's size. A Dask worker must reach the input (a ``parquet:s3://...`` table, or a folder on a
disk it shares) and the model: on an object-store artifact root it pulls the version it needs into
its own mirror.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import BACKENDS, resolve_dataset
from imgflow.data.images import BadImage, decode
from imgflow.data.sources.folder import hidden, sidecars
from imgflow.data.sources.parquet import ParquetPiece, ParquetSource
from imgflow.data.text import BadText, normalize
from imgflow.runtime import cpus, progress
from imgflow.runtime.errors import ConfigError, SourceError
from imgflow.runtime.parallel import cluster_pool, dask_address, ordered_map, worker_count
from imgflow.serving.inference import OnnxModel

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.string()),
        ("probability", pa.float32()),
        ("top_k", pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))),
        ("model", pa.string()),
        ("version", pa.string()),
        ("backend", pa.string()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class PredictConfig:
    backend: str = "onnx"
    top_k: int = 3
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_backend(self.backend)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")


Input = tuple[str, bytes, bytes | None]  # id, encoded image, text as the input holds it (None: none)


def input_options(dataset: str | None = None, **columns: str | None) -> dict[str, Any]:
    """How to read a prediction input: a dataset spec's ``[options]`` (a table laid out like the
    training data), then the columns given by name (``image_column``, ``id_column``, ``text_column``,
    ``text_sidecar``; None: unset)."""
    options = dict(resolve_dataset(dataset).options) if dataset else {}
    unknown = set(columns) - {"image_column", "id_column", "text_column", "text_sidecar"}
    if unknown:
        raise ConfigError(f"unknown prediction input option(s) {', '.join(sorted(unknown))}")
    return {**options, **{name: value for name, value in columns.items() if value is not None}}


CHUNK_IMAGES = 4096  # images a worker predicts at once: a folder's files, or about that many of a table's rows


@dataclass(frozen=True)
class FolderPiece:
    """A slice of a folder input's sorted files (path parts under ``root``), each with its text file's
    parts (None: no text)."""

    root: str
    files: tuple[tuple[str, ...], ...]
    texts: tuple[tuple[str, ...] | None, ...]

    def inputs(self) -> Iterator[Input]:
        root = Path(self.root)
        for parts, text in zip(self.files, self.texts, strict=True):
            yield "/".join(parts), root.joinpath(*parts).read_bytes(), root.joinpath(*text).read_bytes() if text else None


Piece = FolderPiece | ParquetPiece


def piece_inputs(piece: Piece) -> Iterator[Input]:
    """The (id, encoded image bytes, text bytes or None) of every image of a piece, in order."""
    if isinstance(piece, FolderPiece):
        return piece.inputs()
    return ((record.id, record.image, record.text) for record in piece.records())


def input_pieces(spec: str, options: Mapping[str, Any] | None = None, size: int | None = None) -> tuple[int, list[Piece]]:
    """(how many images, the input in pieces of about ``size`` (default ``CHUNK_IMAGES``) images, in
    input order) for a prediction input read with ``options`` (see ``input_options``). Lists the
    folder or reads the table's footers: a missing input, file or column fails here, before any work."""
    options = options or {}
    size = size or CHUNK_IMAGES
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "parquet":
        pieces = ParquetSource(rest, {**options, "label_column": None}).pieces(size)
        return sum(piece.rows or 0 for piece in pieces), list(pieces)
    path = Path(rest if sep and scheme == "folder" else spec).expanduser()
    if sep and scheme not in ("folder", "parquet") and not path.exists():
        raise SourceError(f"prediction input {spec!r}: expected PATH, folder:PATH or parquet:PATH_OR_URI")
    if not path.exists():
        raise SourceError(f"prediction input {path} does not exist")
    if path.is_file():
        return 1, [FolderPiece(str(path.parent), ((path.name,),), (None,))]
    every = sorted(p.relative_to(path).parts for p in path.rglob("*") if p.is_file() and not hidden(p.relative_to(path).parts))
    files, text_of = sidecars(every, options.get("text_sidecar"))
    if not files:
        raise SourceError(f"prediction input {path} holds no files")
    slices = [files[start : start + size] for start in range(0, len(files), size)]
    return len(files), [FolderPiece(str(path), tuple(part), tuple(text_of.get(f) for f in part)) for part in slices]


class Predictor:
    """Class probabilities for uint8 pixels (N, H, W, C), and texts for a model with text, from a
    registered version's export."""

    def __init__(self, version_dir: Path, backend: str, threads: int | None = None) -> None:
        """``threads``: ONNX Runtime's threads per operator (default: one per core)."""
        check_backend(backend)
        self.backend = backend
        if backend == "tensorflow":
            import tensorflow as tf

            self._tf = tf
            self._signature = tf.saved_model.load(str(version_dir / "savedmodel")).signatures["serving_default"]
            self.takes_text = "text" in self._signature.structured_input_signature[1]
            return
        path = version_dir / ("model.int8.onnx" if backend == "onnx-int8" else "model.onnx")
        if not path.is_file():
            raise ConfigError(
                f"{version_dir} has no {path.name}"
                + (" (its int8 variant lost accuracy and was not exported)" if backend == "onnx-int8" else "")
            )
        self._onnx = OnnxModel(path, threads=threads)
        self.takes_text = self._onnx.takes_text

    def __call__(self, pixels: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """``texts``: one per image ("" for none); ignored by a model without text."""
        batch = pixels.astype(np.float32)
        if self.backend == "tensorflow":
            text = {"text": self._tf.constant(texts if texts is not None else [""] * len(batch))} if self.takes_text else {}
            return self._signature(pixels=self._tf.constant(batch), **text)["probabilities"].numpy()
        return self._onnx(batch, texts, batch_size=len(batch) or 1)


@dataclass(frozen=True)
class _Plan:
    """What every piece's worker needs to predict it: picklable, for worker processes and Dask."""

    version_dir: str  # the version's folder on the machine that planned
    root: str | None  # the object-store artifact root it came from: another machine pulls it from there
    name: str
    version: str
    backend: str
    threads: int | None
    image_shape: tuple[int, ...]
    classes: tuple[str, ...]
    top_k: int
    batch_size: int

    def folder(self) -> Path:
        if self.root is None:
            return Path(self.version_dir)
        from imgflow.store.roots import open_store

        return open_store(self.root).pull_version(self.name, self.version)


@functools.lru_cache(maxsize=1)
def _predictor(plan: _Plan) -> Predictor:
    """The process's model, loaded once for all the pieces it predicts (a worker keeps it)."""
    return Predictor(plan.folder(), plan.backend, plan.threads)


def predict_piece(piece: Piece, plan: _Plan) -> pa.Table:
    """The output rows of one piece of the input, in its order. Runs in a worker process."""
    predictor = _predictor(plan)
    classes = np.array(plan.classes, dtype=object)
    k = min(plan.top_k, len(classes))
    rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}

    def flush(batch: list[tuple[str, np.ndarray | None, str, str | None]]) -> None:
        good = [i for i, (_, pixels, _, _) in enumerate(batch) if pixels is not None]
        images = [pixels for _, pixels, _, _ in batch if pixels is not None]
        probabilities: Any = predictor(np.stack(images), [batch[i][2] for i in good]) if good else []
        by_row = dict(zip(good, probabilities, strict=True))
        for i, (record_id, _, _, error) in enumerate(batch):
            p = by_row.get(i)
            top: Any = np.argsort(-p, kind="stable")[:k] if p is not None else []
            rows["id"].append(record_id)
            rows["label"].append(classes[top[0]] if p is not None else None)
            rows["probability"].append(float(p[top[0]]) if p is not None else None)
            rows["top_k"].append([{"label": classes[j], "probability": float(p[j])} for j in top] if p is not None else None)
            rows["error"].append(error)

    batch: list[tuple[str, np.ndarray | None, str, str | None]] = []
    for record_id, data, raw_text in piece_inputs(piece):
        try:
            text = normalize(raw_text) if predictor.takes_text else ""
            batch.append((record_id, decode(data, (plan.image_shape[0], plan.image_shape[1]), plan.image_shape[2]), text, None))
        except (BadImage, BadText) as bad:
            batch.append((record_id, None, "", f"{bad.reason}: {bad.detail}"))
        if len(batch) >= plan.batch_size:
            flush(batch)
            batch = []
    flush(batch)
    n = len(rows["id"])
    rows.update(model=[plan.name] * n, version=[plan.version] * n, backend=[plan.backend] * n)
    return pa.table(rows, schema=SCHEMA)


def _session_threads(pool: object, pieces: int) -> int | None:
    """ONNX Runtime's threads in each worker: all cores in this process alone; a share of them in each
    of a process pool's workers; one per Dask worker (run them with ``--nthreads 1``, one per core)."""
    if pool is None:
        return None
    if dask_address() is not None:
        return 1
    return max(1, cpus.threads() // min(worker_count(), pieces))


def predict(
    spec: str,
    version_dir: Path,
    output: Path,
    config: PredictConfig = PredictConfig(),
    options: Mapping[str, Any] | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Label every image of ``spec`` (read with ``options``: see ``input_options``) with the model in
    ``version_dir``; write ``output``; return a summary. ``root``: the object-store artifact root the
    version was pulled from, where workers on other machines find it. Reports progress in images."""
    card = json.loads((version_dir / "card.json").read_text())
    total, pieces = input_pieces(spec, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    counts = {"rows": 0, "errors": 0}
    started = time.perf_counter()
    try:
        with cluster_pool(len(pieces)) as pool, pq.ParquetWriter(tmp, SCHEMA) as writer:
            plan = _Plan(
                str(version_dir),
                root,
                card["name"],
                card["version"],
                config.backend,
                _session_threads(pool, len(pieces)),
                tuple(card["image_shape"]),
                tuple(card["class_names"]),
                config.top_k,
                config.batch_size,
            )
            jobs = [(piece, plan) for piece in pieces]
            for table in ordered_map(predict_piece, jobs, pool):
                writer.write_table(table)
                counts["rows"] += table.num_rows
                counts["errors"] += table.num_rows - table.column("error").null_count
                progress.report(counts["rows"], total, "images")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
        _predictor.cache_clear()  # the model, loaded here when no worker process ran the pieces
    seconds = time.perf_counter() - started
    return {
        "output": str(output),
        "rows": counts["rows"],
        "predicted": counts["rows"] - counts["errors"],
        "errors": counts["errors"],
        "model": card["name"],
        "version": card["version"],
        "backend": config.backend,
        "seconds": round(seconds, 3),
        "images_per_second": round(counts["rows"] / seconds, 1) if seconds else None,
    }
