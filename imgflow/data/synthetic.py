"""Synthetic and deliberately dirty image data, for benchmarks, tests and trying imgflow out.

``dirty_folder`` writes a ``folder:`` dataset the way users' folders look: real digits (the bundled
MNIST sample) saved as PNG, JPEG, GIF, BMP and WebP, in grayscale, RGB, RGBA and palette modes, at
several sizes, with broken files mixed in; it returns what cleaning must find, so a caller can check
the accounting exactly. ``partitioned_parquet`` writes a lake of ``date=`` partitions, ``synthetic_table``
a Parquet table of any size streamed in chunks (memory stays flat), ``captioned_folder`` images with
text sidecars whose words say the class.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imgflow.data.sources import open_source, sample_records

FORMATS = (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"), ("WEBP", "webp"))
MODES = ("L", "RGB", "RGBA", "P")
SIZES = (28, 32, 40)


@dataclass
class Corpus:
    root: Path
    files: int = 0
    expected: Counter = field(default_factory=Counter)  # quarantine reason -> count


def image_file(pixels: np.ndarray, fmt: str, mode: str, side: int) -> bytes:
    """``pixels`` (a grayscale uint8 array) as an image file: resized, converted to ``mode``."""
    image = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        mode = "RGB"  # JPEG stores neither alpha nor a palette
    image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


def dirty_folder(root: Path, count: int = 2000, bad_every: int = 100) -> Corpus:
    """``count`` (at most 5,000) real digits from ``sample:mnist5k`` under ``root/<digit>/``, in mixed formats, modes and
    sizes; for every ``bad_every`` images also a zero-byte file, a truncated PNG and a text file named
    like an image; one image copied under a second label (a label conflict) and one exact duplicate.
    """
    corpus = Corpus(root)
    records = sample_records(open_source("sample:mnist5k").records(), count)  # spread over all ten classes
    rng = np.random.default_rng(0)
    for index, record in enumerate(records):
        pixels = np.asarray(Image.open(io.BytesIO(record.image)))
        fmt, ext = FORMATS[index % len(FORMATS)]
        data = image_file(pixels, fmt, MODES[(index // len(FORMATS)) % len(MODES)], SIZES[int(rng.integers(len(SIZES)))])
        folder = root / record.label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:05d}.{ext}").write_bytes(data)
        corpus.files += 1
        if index % bad_every == 0:
            (folder / f"{index:05d}-empty.png").write_bytes(b"")
            (folder / f"{index:05d}-cut.png").write_bytes(
                data[: len(data) // 2] if fmt == "PNG" else image_file(pixels, "PNG", "L", 28)[:200]
            )
            (folder / f"{index:05d}-notes.jpg").write_text("not an image, just a misnamed note\n")
            corpus.files += 3
            corpus.expected.update(empty=1, truncated=1, not_an_image=1)
        if index == 1:
            other = "7" if record.label != "7" else "1"
            (root / other).mkdir(parents=True, exist_ok=True)
            (root / other / f"{index:05d}-conflict.{ext}").write_bytes(data)
            corpus.files += 1
            corpus.expected.update(label_conflict=2)
        if index == 2:
            (folder / f"{index:05d}-copy.{ext}").write_bytes(data)
            corpus.files += 1
            corpus.expected.update(duplicate=1)
    return corpus


def partitioned_parquet(root: Path, days: list[str], per_day: int, offset: int = 0, invert: Sequence[str] = ()) -> Path:
    """A Parquet table of real digits under ``root/date=<day>/part-0.parquet``, ``per_day`` distinct
    digits per day: the sample split by date, as data of one kind arrives day after day (the days deal
    the records of a class-spread sample, from ``offset`` on, in turn, so each day has every class).
    The days in ``invert`` hold their digits inverted: black on white, a drift no label shows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sample_records(open_source("sample:mnist5k").records(), offset + per_day * len(days))[offset:]
    for number, day in enumerate(days):
        rows = records[number : per_day * len(days) : len(days)]
        folder = root / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        images = [_inverted(r.image) if day in invert else r.image for r in rows]
        table = pa.table({"image": images, "label": [int(r.label) for r in rows]})
        pq.write_table(table, folder / "part-0.parquet")
    return root


def _inverted(image: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - np.asarray(Image.open(io.BytesIO(image)))).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_chunk(start: int, count: int, size: int, classes: int, seed: int) -> list[tuple[str, bytes, str]]:
    """Records ``start .. start + count`` of a synthetic colour dataset (see ``synthetic_table``)."""
    records = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for number in range(start, start + count):
        rng = np.random.default_rng([seed, number])
        label = number % classes
        angle = np.pi * label / classes + rng.normal(0, 0.05)
        frequency = 3 + label % 4 + rng.uniform(-0.3, 0.3)
        stripes = np.sin(2 * np.pi * frequency * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
        hue = np.array([np.sin(label), np.cos(label), np.sin(2 * label + 1)]) * 60 + 128
        pixels = hue + stripes[..., None] * 90 + rng.normal(0, 12, (size, size, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
        records.append((f"synthetic/{number:08d}", buffer.getvalue(), f"class{label:02d}"))
    return records


def synthetic_table(path: Path, count: int, size: int = 64, classes: int = 10, seed: int = 0, chunk: int = 4096) -> Path:
    """A Parquet table (id, image as PNG bytes, label) of ``count`` generated ``size`` x ``size`` RGB
    images in ``classes`` classes: oriented stripes whose angle, frequency and colour depend on the
    class, with random phase and noise, so a CNN can learn them and no two images are the same. For
    benchmarks and tests at any size; generated in parallel, written one chunk at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgflow.runtime.parallel import ordered_map

    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.string())])
    jobs = [(start, min(chunk, count - start), size, classes, seed) for start in range(0, count, chunk)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as writer:
        for records in ordered_map(synthetic_chunk, jobs):
            writer.write_table(pa.table(list(zip(*records, strict=True)), schema=schema))
    return path


# Words for ``captioned_folder``: each class's caption names one of two themes, in several words each,
# among filler that every class shares.
_THEMES = (("sun", "beach", "summer", "sand", "warm"), ("snow", "winter", "frost", "ice", "cold"))
_FILLER = ("a", "photo", "of", "the", "picture", "nice", "old", "new", "my", "with", "view", "day")


def captioned_folder(root: Path, per_class: int = 150, side: int = 16, seed: int = 0) -> Path:
    """A ``folder:`` dataset of images with ``.txt`` captions (``text_sidecar = ".txt"``) whose four
    classes need both: the image says one bit (horizontal or vertical stripes, under noise), the
    caption the other (a summer or a winter word among filler words). Either alone tells at best two
    classes apart: about 50% accuracy; both together, all four."""
    rng = np.random.default_rng(seed)
    rows = np.arange(side)[:, None] % 4 < 2
    stripes = (np.broadcast_to(rows, (side, side)), np.broadcast_to(rows.T, (side, side)))
    for label in range(4):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        orientation, theme = divmod(label, 2)
        for index in range(per_class):
            shift = rng.integers(0, 4)
            pattern = np.roll(stripes[orientation], shift, axis=orientation ^ 1)
            pixels = np.clip(pattern * 160.0 + 40 + rng.normal(0, 30, (side, side)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:04d}.png")
            words = [*rng.choice(_FILLER, size=rng.integers(3, 7)), str(rng.choice(_THEMES[theme]))]
            rng.shuffle(words)
            (folder / f"{index:04d}.txt").write_text(" ".join(words).capitalize() + ".\n")
    return root
