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
"""

from __future__ import annotations

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

from imgflow import progress
from imgflow.config import BACKENDS, resolve_dataset
from imgflow.errors import ConfigError, SourceError
from imgflow.images import BadImage, decode
from imgflow.inference import OnnxModel
from imgflow.sources.folder import hidden, sidecars
from imgflow.text import BadText, normalize

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


Input = tuple[str, bytes, bytes | None]  # id, encoded image, text as the input holds it (None: none)


def _folder_images(root: Path, text_sidecar: str | None) -> tuple[int, Iterator[Input]]:
    if root.is_file():
        return 1, iter([(root.name, root.read_bytes(), None)])
    every = sorted(p.relative_to(root).parts for p in root.rglob("*") if p.is_file() and not hidden(p.relative_to(root).parts))
    files, text_of = sidecars(every, text_sidecar)
    if not files:
        raise SourceError(f"prediction input {root} holds no files")

    def text(parts: tuple[str, ...]) -> bytes | None:
        return root.joinpath(*text_of[parts]).read_bytes() if parts in text_of else None

    return len(files), (("/".join(parts), root.joinpath(*parts).read_bytes(), text(parts)) for parts in files)


def input_options(dataset: str | None = None, **columns: str | None) -> dict[str, Any]:
    """How to read a prediction input: a dataset spec's ``[options]`` (a table laid out like the
    training data), then the columns given by name (``image_column``, ``id_column``, ``text_column``,
    ``text_sidecar``; None: unset)."""
    options = dict(resolve_dataset(dataset).options) if dataset else {}
    unknown = set(columns) - {"image_column", "id_column", "text_column", "text_sidecar"}
    if unknown:
        raise ConfigError(f"unknown prediction input option(s) {', '.join(sorted(unknown))}")
    return {**options, **{name: value for name, value in columns.items() if value is not None}}


def input_images(spec: str, options: Mapping[str, Any] | None = None) -> tuple[int | None, Iterator[Input]]:
    """(how many, when known; an iterator of (id, encoded image bytes, text bytes or None)) for a
    prediction input."""
    options = options or {}
    scheme, sep, rest = spec.partition(":")
    if sep and scheme == "parquet":
        from imgflow.sources.parquet import ParquetSource

        source = ParquetSource(rest, {**options, "label_column": None})
        return None, ((record.id, record.image, record.text) for record in source.records())
    path = Path(rest if sep and scheme == "folder" else spec).expanduser()
    if sep and scheme not in ("folder", "parquet") and not path.exists():
        raise SourceError(f"prediction input {spec!r}: expected PATH, folder:PATH or parquet:PATH_OR_URI")
    if not path.exists():
        raise SourceError(f"prediction input {path} does not exist")
    return _folder_images(path, options.get("text_sidecar"))


class Predictor:
    """Class probabilities for uint8 pixels (N, H, W, C), and texts for a model with text, from a
    registered version's export."""

    def __init__(self, version_dir: Path, backend: str) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
        self.backend = backend
        if backend == "tensorflow":
            import tensorflow as tf

            self._tf = tf
            self._signature = tf.saved_model.load(str(version_dir / "savedmodel")).signatures["serving_default"]
            self.takes_text = "text" in self._signature.structured_input_signature[1]
            return
        path = version_dir / ("model.int8.onnx" if backend == "onnx-int8" else "model.onnx")
        if not path.is_file():
            raise ConfigError(f"{version_dir} has no {path.name}" + (" (its int8 variant lost accuracy and was not exported)" if backend == "onnx-int8" else ""))
        self._onnx = OnnxModel(path)
        self.takes_text = self._onnx.takes_text

    def __call__(self, pixels: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """``texts``: one per image ("" for none); ignored by a model without text."""
        batch = pixels.astype(np.float32)
        if self.backend == "tensorflow":
            text = {"text": self._tf.constant(texts if texts is not None else [""] * len(batch))} if self.takes_text else {}
            return self._signature(pixels=self._tf.constant(batch), **text)["probabilities"].numpy()
        return self._onnx(batch, texts, batch_size=len(batch) or 1)


def predict(
    spec: str,
    version_dir: Path,
    output: Path,
    config: PredictConfig = PredictConfig(),
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Label every image of ``spec`` (read with ``options``: see ``input_options``) with the model in
    ``version_dir``; write ``output``; return a summary. Reports progress in images."""
    card = json.loads((version_dir / "card.json").read_text())
    shape = tuple(card["image_shape"])
    classes = np.array(card["class_names"], dtype=object)
    total, images = input_images(spec, options)
    predictor = Predictor(version_dir, config.backend)
    k = min(config.top_k, len(classes))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    counts = {"rows": 0, "errors": 0}
    started = time.perf_counter()

    def flush(writer: pq.ParquetWriter, batch: list[tuple[str, np.ndarray | None, str, str | None]]) -> None:
        good = [i for i, (_, pixels, _, _) in enumerate(batch) if pixels is not None]
        probabilities = (
            predictor(np.stack([batch[i][1] for i in good]), [batch[i][2] for i in good]) if good else np.zeros((0, len(classes)))
        )
        by_row = dict(zip(good, probabilities, strict=True))
        rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        for i, (record_id, _, _, error) in enumerate(batch):
            p = by_row.get(i)
            top = np.argsort(-p, kind="stable")[:k] if p is not None else []
            rows["id"].append(record_id)
            rows["label"].append(classes[top[0]] if p is not None else None)
            rows["probability"].append(float(p[top[0]]) if p is not None else None)
            rows["top_k"].append([{"label": classes[j], "probability": float(p[j])} for j in top] if p is not None else None)
            rows["error"].append(error)
        n = len(batch)
        rows.update(model=[card["name"]] * n, version=[card["version"]] * n, backend=[config.backend] * n)
        writer.write_table(pa.table(rows, schema=SCHEMA))
        counts["rows"] += n
        counts["errors"] += n - len(good)
        progress.report(counts["rows"], total, "images")

    try:
        with pq.ParquetWriter(tmp, SCHEMA) as writer:
            batch: list[tuple[str, np.ndarray | None, str, str | None]] = []
            for record_id, data, raw_text in images:
                try:
                    text = normalize(raw_text) if predictor.takes_text else ""
                    batch.append((record_id, decode(data, shape[:2], shape[2]), text, None))
                except (BadImage, BadText) as bad:
                    batch.append((record_id, None, "", f"{bad.reason}: {bad.detail}"))
                if len(batch) >= config.batch_size:
                    flush(writer, batch)
                    batch = []
            if batch or counts["rows"] == 0:
                flush(writer, batch)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
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
