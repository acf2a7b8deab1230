"""A clean table's profile: what its data looks like, in fixed histograms, for drift checks.

Every clean table (``clean``'s and ``merge``'s) writes ``profile.json`` beside its records, counted as
the records are written, so it costs no second pass and its size never grows with the records::

    {"records": N,
     "histograms": {"brightness": {"edges": [...], "counts": [...]}, "contrast": ..., "mean_red": ...,
                    "longer_side": ..., "caption_tokens": ...},
     "labels": {"cat": 120, ...}}

- ``brightness``: each image's mean luminance (0..1; ITU-R 601 weights for RGB);
- ``contrast``: the standard deviation of its luminance (0..0.5);
- ``mean_red``/``mean_green``/``mean_blue`` (RGB) or ``mean_gray`` (one channel): each image's channel
  mean (0..1);
- ``longer_side``: the source image's longer side in pixels, before resizing (powers of two);
- ``caption_tokens``: tokens per caption (only with text);
- ``labels``: records per class name.

Fixed edges make two profiles comparable bin for bin, and make a union's profile the sum of its
parts' (``Profile.add``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.store.files import write_json_atomic

PROFILE_FILE = "profile.json"
_UNIT = np.linspace(0.0, 1.0, 21)
EDGES: dict[str, np.ndarray] = {
    "brightness": _UNIT,
    "contrast": np.linspace(0.0, 0.5, 21),
    "mean_red": _UNIT,
    "mean_green": _UNIT,
    "mean_blue": _UNIT,
    "mean_gray": _UNIT,
    "longer_side": np.array([0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, np.inf]),
    "caption_tokens": np.array([0, 1, 2, 4, 8, 16, 32, 64, np.inf]),
}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SLICE_BYTES = 8 << 20  # of uint8 pixels profiled at once


@dataclass
class Profile:
    """Histograms of a table's records (``EDGES``), its labels, and how many records it counts."""

    records: int = 0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    labels: Counter[str] = field(default_factory=Counter)

    def _count(self, name: str, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        edges = EDGES[name]
        # The last bin takes values on its upper edge, and anything beyond it (a contrast above 0.5).
        found, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges, weights=weights)
        self.counts[name] = self.counts.get(name, np.zeros(len(edges) - 1, np.int64)) + found.astype(np.int64)

    def add_pixels(self, images: np.ndarray) -> None:
        """Count a batch of clean images, (N, pixels, channels) uint8 (``pixel_array``'s view), a slice of
        about ``_SLICE_BYTES`` at a time: memory stays a few slices whatever the batch or image size,
        and the slices stay in the CPU's cache."""
        channels = images.shape[-1]
        names = ("mean_gray",) if channels == 1 else ("mean_red", "mean_green", "mean_blue")
        step = max(1, _SLICE_BYTES // max(1, images[0].nbytes)) if len(images) else 1
        for start in range(0, len(images), step):
            part = images[start : start + step].astype(np.float32)
            luminance = part[..., 0] if channels == 1 else part @ _LUMA
            self._count("brightness", luminance.mean(axis=1) / 255)
            self._count("contrast", luminance.std(axis=1) / 255)
            means = part.mean(axis=1) / 255
            for index, name in enumerate(names):
                self._count(name, means[:, index])
        self.records += len(images)

    def add_labels(self, counts: Mapping[str, int]) -> None:
        """Count records per class name (the clean report's per-class totals)."""
        self.labels.update({name: count for name, count in counts.items() if count})

    def add_caption_lengths(self, counts: Mapping[int, int]) -> None:
        """Count captions by their number of tokens (``{tokens: records}``, the clean report's)."""
        self._count("caption_tokens", np.array(list(counts), np.float64), np.array(list(counts.values()), np.float64))

    def add_sizes(self, size_counts: Mapping[str, int]) -> None:
        """Count the source images' sizes (``{"HxW": records}``, the clean report's)."""
        sides = np.array([max(int(n) for n in size.split("x")) for size in size_counts], np.float64)
        self._count("longer_side", sides, np.array(list(size_counts.values()), np.float64))

    def add(self, other: Profile) -> None:
        """Add ``other``'s records: the profile of a union of tables."""
        self.records += other.records
        for name, found in other.counts.items():
            self.counts[name] = self.counts.get(name, np.zeros_like(found)) + found
        self.labels.update(other.labels)

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "histograms": {
                name: {"edges": _edges_json(EDGES[name]), "counts": found.tolist()} for name, found in sorted(self.counts.items())
            },
            "labels": dict(sorted(self.labels.items())),
        }

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / PROFILE_FILE, self.as_json())


def _edges_json(edges: np.ndarray) -> list[float | None]:
    return [None if np.isinf(edge) else float(edge) for edge in edges]  # JSON has no infinity


def read_profile(path: Path) -> Profile:
    """A profile written by ``Profile.write`` (``path`` the file)."""
    data = json.loads(path.read_text())
    counts = {name: np.array(item["counts"], np.int64) for name, item in data["histograms"].items()}
    return Profile(records=data["records"], counts=counts, labels=Counter(data["labels"]))
