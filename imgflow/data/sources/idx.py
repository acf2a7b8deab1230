"""``idx:PATH``: images and labels in the IDX format of the MNIST family (MNIST, Fashion-MNIST, KMNIST,
EMNIST), gzip-compressed or not.

``PATH`` is a folder holding pairs of files named ``<part>-images-idx3-ubyte[.gz]`` and
``<part>-labels-idx1-ubyte[.gz]`` (``train`` and ``t10k`` in the published sets: every pair is read, in
name order), or one images file, whose labels file is found beside it by the same rule. Every header
is checked when the source is opened: the magic number (unsigned bytes, 3 dimensions for images, 1 for
labels), the counts of a pair agreeing, the dimensions being non-zero. A file whose data is shorter
than its header says fails when it is read, naming the file, the record and how many bytes are missing.

Labels are the integers the file holds, as text (``"0"`` .. ``"9"``), or names given by ``[options]
label_names`` (a list: the name of label 0, of label 1, ...; Fashion-MNIST's are in
``datasets/fashion-mnist.toml``). Records are ``<part>/<index>`` (``train/00042``), their image a PNG of
the stored pixels. Files are read as a stream, an image at a time.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.data.images import encode_png
from imgflow.data.sources.record import RawRecord
from imgflow.runtime.errors import SourceError
from imgflow.store.fingerprint import sha256_file, stable_hash

_FORMAT = "1"
_PAIR = re.compile(r"^(?P<part>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")
_UBYTE = 0x08


@contextmanager
def _open(path: Path) -> Iterator[io.BufferedIOBase]:
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as handle:
            yield handle
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise SourceError(f"cannot read IDX file {path}: {exc}") from None


def _header(handle: io.BufferedIOBase, path: Path, dimensions: int) -> tuple[int, ...]:
    """The sizes a header declares, after checking its magic number: two zero bytes, the data type
    (unsigned bytes) and the number of dimensions."""
    magic = handle.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0":
        raise SourceError(f"{path} is not an IDX file (its first bytes are {magic.hex() or 'missing'}, not 0000....)")
    if magic[2] != _UBYTE or magic[3] != dimensions:
        raise SourceError(
            f"{path} holds {magic[3]}-dimensional data of type 0x{magic[2]:02x}; "
            f"expected {dimensions}-dimensional unsigned bytes (0x08) for {'images' if dimensions == 3 else 'labels'}"
        )
    raw = handle.read(4 * dimensions)
    if len(raw) < 4 * dimensions:
        raise SourceError(f"{path}: its header is cut short")
    sizes = struct.unpack(f">{dimensions}I", raw)
    if 0 in sizes[1:]:
        raise SourceError(f"{path}: an image of {' x '.join(map(str, sizes[1:]))} pixels has no area")
    return sizes


class IdxSource:
    def __init__(self, path: str, options: Mapping[str, Any]) -> None:
        if not path:
            raise SourceError("an IDX source needs a path: idx:FOLDER or idx:IMAGES_FILE, e.g. idx:/usr/share/datasets/fashion-mnist")
        self.spec = f"idx:{path}"
        self.has_text = False
        root = Path(path).expanduser()
        if not root.exists():
            raise SourceError(f"IDX source {root} does not exist")
        candidates = sorted(root.iterdir()) if root.is_dir() else [root]
        self.pairs: list[tuple[str, Path, Path]] = []
        for images in candidates:
            match = _PAIR.match(images.name)
            if match is None:
                continue
            labels = images.with_name(f"{match['part']}-labels-idx1-ubyte{match['gz'] or ''}")
            if not labels.is_file():
                raise SourceError(f"{images} has no labels file beside it: expected {labels.name}")
            self.pairs.append((match["part"], images, labels))
        if not self.pairs:
            raise SourceError(
                f"IDX source {root} holds no images file: expected files named PART-images-idx3-ubyte[.gz] "
                "with PART-labels-idx1-ubyte[.gz] beside each"
            )
        names = options.get("label_names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)):
            raise SourceError(f"[options] label_names must be a list of non-empty names (label 0's first), got {names!r}")
        self.label_names: list[str] | None = names
        self.shapes = {part: self._check(images, labels) for part, images, labels in self.pairs}

    def _check(self, images: Path, labels: Path) -> tuple[int, int, int]:
        with _open(images) as handle:
            count, height, width = _header(handle, images, 3)
        with _open(labels) as handle:
            (label_count,) = _header(handle, labels, 1)
        if count != label_count:
            raise SourceError(f"{images} holds {count} images but {labels} {label_count} labels: the pair must agree")
        return count, height, width

    def fingerprint(self) -> str:
        files = [(images.name, sha256_file(images), labels.name, sha256_file(labels)) for _, images, labels in self.pairs]
        return stable_hash([_FORMAT, files, self.label_names])

    def _label(self, value: int, labels: Path, index: int) -> str:
        if self.label_names is None:
            return str(value)
        if value >= len(self.label_names):
            raise SourceError(f"{labels}: record {index} has label {value}, but [options] label_names names only {len(self.label_names)}")
        return self.label_names[value]

    def records(self) -> Iterator[RawRecord]:
        for part, images, labels in self.pairs:
            count, height, width = self.shapes[part]
            size = height * width
            with _open(images) as pixels, _open(labels) as classes:
                _header(pixels, images, 3)
                _header(classes, labels, 1)
                for index in range(count):
                    data, label = pixels.read(size), classes.read(1)
                    if len(data) < size or not label:
                        short, what = (images, size - len(data)) if len(data) < size else (labels, 1)
                        raise SourceError(f"{short} is cut short: record {index} of {count} lacks {what} byte(s)")
                    image = np.frombuffer(data, np.uint8).reshape(height, width)
                    yield RawRecord(id=f"{part}/{index:05d}", image=encode_png(image), label=self._label(label[0], labels, index))
