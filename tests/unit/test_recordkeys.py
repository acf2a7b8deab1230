"""Compact per-record keys: the same answers as the plain Python rules they replace."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from imgflow.data.recordkeys import Coded, FirstCopies, RecordKeys, content_conflicts


def _digest(content: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(content.encode()).digest(), np.uint8)


def _keys(ids: list[str], labels: list[str], contents: list[str | None], chunk: int = 2) -> RecordKeys:
    """Keys added ``chunk`` records at a time, as the stages add them."""
    keys = RecordKeys()
    for start in range(0, len(ids), chunk):
        part = contents[start : start + chunk]
        digests = np.stack([np.zeros(32, np.uint8) if c is None else _digest(c) for c in part]) if part else np.zeros((0, 32), np.uint8)
        keys.extend(pa.array(ids[start : start + chunk], pa.string()), labels[start : start + chunk], digests,
                    np.array([c is not None for c in part], np.bool_))
    return keys


def test_content_conflicts_keep_the_first_duplicate_and_drop_every_conflicting_copy() -> None:
    keys = _keys(["a", "b", "c", "d", "e", "f"], ["x", "x", "x", "y", "x", "x"], ["1", "1", "2", "2", None, "3"])
    found = content_conflicts(keys)
    assert {i: reason for i, (reason, _) in found.items()} == {"b": "duplicate", "c": "label_conflict", "d": "label_conflict"}
    assert found["b"][1] == "same image as a" and found["c"][1] == "same image under different labels: c='x', d='y'"


def test_keys_give_back_what_was_added_across_chunks() -> None:
    keys = _keys(["a", "b", "c", "d", "e"], ["x", "y", "x", "", "y"], ["1", None, "2", "3", None])
    assert len(keys) == 5 and keys.ids([4, 0, 2]) == ["e", "a", "c"] and keys.ids_between(1, 5) == ["b", "c", "d", "e"]
    assert [keys.labels[p] for p in range(5)] == ["x", "y", "x", "", "y"] and keys.labels.names == ["x", "y", ""]
    assert keys.digest(1) is None and keys.digest(2) == hashlib.sha256(b"2").digest()
    assert keys.labels.counts() == {"x": 2, "y": 2, "": 1}
    assert keys.labels.counts(where=keys.has_digest()) == {"x": 2, "": 1}


def test_coded_counts_come_in_order_of_first_appearance_like_a_counter() -> None:
    values = ["b", None, "a", "b", "c", "a", "a", None]
    coded = Coded()
    coded.extend(values[:3])
    coded.extend(values[3:])
    assert coded.counts() == dict(Counter(v for v in values if v is not None))
    assert list(coded.counts()) == ["b", "a", "c"] and coded[1] is None and coded[4] == "c"


def _reference(ids: list[str], labels: list[str], contents: list[str | None]) -> dict[str, tuple[str, str]]:
    """The rule in plain Python: group by content in order of first copy."""
    groups: dict[str, list[int]] = {}
    for position, content in enumerate(contents):
        if content is not None:
            groups.setdefault(content, []).append(position)
    found: dict[str, tuple[str, str]] = {}
    for positions in groups.values():
        if len({labels[p] for p in positions}) > 1:
            others = ", ".join(f"{ids[p]}={labels[p]!r}" for p in positions)
            found.update((ids[p], ("label_conflict", f"same image under different labels: {others}")) for p in positions)
        else:
            found.update((ids[p], ("duplicate", f"same image as {ids[positions[0]]}")) for p in positions[1:])
    return found


records = st.lists(
    st.tuples(st.sampled_from("abcdefgh"), st.sampled_from("xy"), st.one_of(st.none(), st.sampled_from("0123456"))),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(records, st.integers(1, 7))
def test_conflicts_and_first_copies_match_the_plain_rules(found: list[tuple[str, str, str | None]], chunk: int) -> None:
    ids = [f"{name}{i % 3}" for i, (name, _, _) in enumerate(found)]  # ids may repeat, as in a backfill
    labels = [label for _, label, _ in found]
    contents = [content for _, _, content in found]
    keys = _keys(ids, labels, contents, chunk)
    assert content_conflicts(keys) == _reference(ids, labels, contents)
    # First copies, chunk by chunk: the earliest position with the same content.
    copies = FirstCopies(keys)
    firsts: list[int] = []
    for start in range(0, len(ids), chunk):
        positions = np.array([p for p in range(start, min(start + chunk, len(ids))) if contents[p] is not None], np.int64)
        firsts += copies.add(positions).tolist()
    assert firsts == [contents.index(c) for c in contents if c is not None]


def test_first_copies_tell_apart_digests_that_share_their_first_bytes() -> None:
    common = bytes(8)
    digests = [common + bytes([1]) * 24, common + bytes([2]) * 24, common + bytes([1]) * 24, common + bytes([2]) * 24]
    keys = RecordKeys()
    copies = FirstCopies(keys)
    firsts = []
    for start in (0, 2):  # the second chunk meets both images again
        keys.extend(pa.array(["a", "b"]), ["x", "x"], np.frombuffer(b"".join(digests[start : start + 2]), np.uint8).reshape(2, 32),
                    np.ones(2, np.bool_))
        firsts += copies.add(np.array([start, start + 1])).tolist()
    assert firsts == [0, 1, 0, 1]
