"""Compact per-record keys: what the global decisions of clean and merge (duplicates, label
conflicts, the class list, the report's counts) need to know about every record, whatever its size.

Packed in arrays rather than Python objects: an id is an Arrow string (4 bytes and its characters), a
label a 32-bit code into the distinct labels, a content digest 32 bytes. About 45 bytes a record
and its id's characters, where lists of Python strings, bytes and ints took about 500 (and twice that
in resident memory once the allocator's fragmentation was counted): at 200,000 records the
difference between a stage whose memory is flat and one that grows with the data.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

DIGEST = np.dtype("V32")  # a sha256 digest as one comparable, sortable numpy item


class _Growing:
    """A numpy array that grows by appending: into the capacity given (the stages know how many
    records are coming), doubling it when that is exceeded (views taken earlier stay valid: they keep
    the old buffer)."""

    def __init__(self, dtype: npt.DTypeLike, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1024), dtype)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def extend(self, values: np.ndarray) -> None:
        needed = self._size + len(values)
        if needed > len(self._data):
            grown = np.empty(max(needed, 2 * len(self._data)), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : needed] = values
        self._size = needed

    def view(self) -> np.ndarray:
        return self._data[: self._size]


class Coded:
    """A column of repeating strings (labels, image headers) as 32-bit codes into its distinct values,
    numbered in order of first appearance; None is -1."""

    def __init__(self, capacity: int = 0) -> None:
        self.names: list[str] = []
        self._codes: dict[str, int] = {}
        self._column = _Growing(np.int32, capacity)

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, position: int) -> str | None:
        code = int(self._column.view()[position])
        return None if code < 0 else self.names[code]

    def extend(self, values: Iterable[str | None]) -> None:
        self._column.extend(np.fromiter((-1 if value is None else self._code(value) for value in values), np.int32))

    def _code(self, value: str) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self.names)
            self.names.append(value)
        return code

    def codes(self) -> np.ndarray:
        return self._column.view()

    def counts(self, where: np.ndarray | None = None) -> dict[str, int]:
        """How many records have each value (among ``where``, a boolean mask, when given), in order of
        first appearance: the order a ``Counter`` fed record by record would have."""
        codes = self.codes() if where is None else self.codes()[where]
        found = np.bincount(codes[codes >= 0], minlength=len(self.names))
        return {name: int(count) for name, count in zip(self.names, found, strict=True) if count}


class RecordKeys:
    """Every record's id, label and content digest (sha256 of its pixels; only for records that have
    pixels), in the order added; positions count from 0 across everything added. ``capacity``: how
    many records are expected (more may come, at the cost of a copy)."""

    def __init__(self, capacity: int = 0) -> None:
        self._ids: list[pa.Array] = []
        self._starts: list[int] = []
        self.labels = Coded(capacity)
        self._digests = _Growing(DIGEST, capacity)
        self._has_digest = _Growing(np.bool_, capacity)

    def __len__(self) -> int:
        return len(self._has_digest)

    def extend(self, ids: pa.Array, labels: Sequence[str | None], digests: np.ndarray, has_digest: np.ndarray) -> None:
        """Append records: ``digests`` holds 32 bytes a record (anything where ``has_digest`` is False)."""
        if not len(ids) == len(labels) == len(digests) == len(has_digest):
            raise ValueError(f"keys of different lengths: {len(ids)} ids, {len(labels)} labels, {len(digests)} digests")
        self._starts.append(len(self))
        self._ids.append(ids.cast(pa.string()))
        self.labels.extend(labels)
        self._digests.extend(np.ascontiguousarray(digests).view(DIGEST).reshape(-1))
        self._has_digest.extend(np.asarray(has_digest, np.bool_))

    def id(self, position: int) -> str:
        chunk = bisect.bisect_right(self._starts, position) - 1
        return self._ids[chunk][position - self._starts[chunk]].as_py()

    def ids(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        return [self.id(int(p)) for p in positions]

    def ids_between(self, start: int, stop: int) -> list[str]:
        """The ids of positions ``start`` to ``stop`` (excluded)."""
        found: list[str] = []
        chunk = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            offset = start - self._starts[chunk]
            piece = self._ids[chunk][offset : offset + stop - start].to_pylist()
            found += piece
            start += len(piece)
            chunk += 1
        return found

    def digests(self) -> np.ndarray:
        """One ``DIGEST`` a record."""
        return self._digests.view()

    def digest(self, position: int) -> bytes | None:
        return self._digests.view()[position].tobytes() if self._has_digest.view()[position] else None

    def has_digest(self) -> np.ndarray:
        return self._has_digest.view()


class FirstCopies:
    """Which record first had each content digest, found chunk by chunk as records arrive: 16 bytes a
    distinct image (the first 8 bytes of its digest, sorted, and its position; a match on those is
    confirmed on the whole digest)."""

    def __init__(self, keys: RecordKeys) -> None:
        self.keys = keys
        self._prefixes = np.empty(0, np.uint64)
        self._positions = np.empty(0, np.int64)

    def add(self, positions: np.ndarray) -> np.ndarray:
        """For each of ``positions`` (ascending, every one with a digest, after every position added
        before) the position of the first record with the same digest: itself for a new image."""
        every = self.keys.digests()
        digests = every[positions]
        prefixes = np.ascontiguousarray(digests.view(np.uint8).reshape(-1, 32)[:, :8]).view(np.uint64).reshape(-1)
        firsts = np.asarray(positions, np.int64).copy()
        low = np.searchsorted(self._prefixes, prefixes, "left")
        high = np.searchsorted(self._prefixes, prefixes, "right")
        for i in np.flatnonzero(high > low):  # seen before, or (rarely) another image with the same prefix
            for candidate in self._positions[low[i] : high[i]]:
                if every[candidate] == digests[i]:
                    firsts[i] = candidate
                    break
        first_here: dict[bytes, int] = {}
        for i in np.flatnonzero(firsts == positions):
            firsts[i] = first_here.setdefault(digests[i].tobytes(), int(positions[i]))
        new = firsts == positions
        order = np.argsort(prefixes[new], kind="stable")
        where = np.searchsorted(self._prefixes, prefixes[new][order])
        self._prefixes = np.insert(self._prefixes, where, prefixes[new][order])
        self._positions = np.insert(self._positions, where, firsts[new][order])
        return firsts


def content_conflicts(keys: RecordKeys) -> dict[str, tuple[str, str]]:
    """Duplicates and label conflicts among records with the same pixels, by record id.

    The first record of a group with one label is kept and the others are ``duplicate``; every record
    of a group seen under two labels is a ``label_conflict``. Found by sorting the digests: only the
    groups of more than one record become Python objects.
    """
    positions = np.flatnonzero(keys.has_digest())
    digests = keys.digests()[positions]
    order = np.argsort(digests, kind="stable")  # stable: a group's positions stay ascending
    ordered = digests[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1], [True])))
    groups = [positions[order[a:b]] for a, b in itertools.pairwise(starts) if b - a > 1]
    found: dict[str, tuple[str, str]] = {}
    for group in sorted(groups, key=lambda g: g[0]):  # in order of first copy, as records come
        ids, labels = keys.ids(group), [keys.labels[int(p)] for p in group]
        if len(set(labels)) > 1:
            others = ", ".join(f"{i}={label!r}" for i, label in zip(ids, labels, strict=True))
            found.update((i, ("label_conflict", f"same image under different labels: {others}")) for i in ids)
        else:
            found.update((i, ("duplicate", f"same image as {ids[0]}")) for i in ids[1:])
    return found
