"""A labels CSV (``[clean] labels``): corrections a person accepted (the audit's suggestions, or
their own), read when the run's settings are, so that their content, not the file's path, is part of
the clean stage's key."""

from __future__ import annotations

from pathlib import Path

from imgflow.runtime.errors import ConfigError


def read_labels(path: Path) -> tuple[tuple[str, str], ...]:
    """The (id, label) pairs of a labels CSV (``[clean] labels``: a header with ``id`` and ``label``,
    other columns ignored), sorted by id. A missing file, a missing column, an empty cell or an id given
    twice with two labels is a ``ConfigError`` naming the file and the line."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            fields = rows[0].keys() if rows else (csv.DictReader(path.open(encoding="utf-8")).fieldnames or [])
    except OSError as error:
        raise ConfigError(f"[clean] labels: cannot read {path} ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"[clean] labels: {path} is not UTF-8 text ({error.reason})") from None
    missing = [name for name in ("id", "label") if name not in fields]
    if missing:
        raise ConfigError(f"[clean] labels: {path} has no {' or '.join(missing)} column (its header: {', '.join(fields) or 'none'})")
    chosen: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        record, label = (row["id"] or "").strip(), (row["label"] or "").strip()
        if not record or not label:
            raise ConfigError(f"[clean] labels: {path} line {line} has an empty {'id' if not record else 'label'}")
        if chosen.setdefault(record, label) != label:
            raise ConfigError(f"[clean] labels: {path} line {line} gives {record} the label {label!r}, an earlier line {chosen[record]!r}")
    return tuple(sorted(chosen.items()))
