"""``folder:PATH``: a folder with one sub-folder per class, images of any common format inside.

Every regular file under a class folder is a record (nested folders belong to their top-level class),
whatever its extension: the clean stage decides what is an image, and quarantines the rest with a
reason. Hidden files and folders (a leading dot: ``.DS_Store``, ``.ipynb_checkpoints``) are metadata,
not records. A file lying directly in the root has no class: it becomes a record with an empty label,
which cleaning quarantines as ``unlabeled`` rather than dropping it unseen.

Record ids are the files' paths relative to the root, so the same tree gives the same ids wherever it
lies (bytes of a name that are not UTF-8 show as ``\\xNN``); the fingerprint hashes those paths and
the files' bytes.

Text: with ``[options] text_sidecar = ".txt"``, a file ``cat_01.txt`` beside ``cat_01.jpg`` is that
image's text, not a record (``sidecars``); an image without one has no text, and a ``.txt`` file
with no image of its name stays a record (which cleaning quarantines as ``not_an_image``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from imgflow.data.sources.record import RawRecord, text_name, text_option
from imgflow.runtime.errors import SourceError
from imgflow.store.fingerprint import sha256_file, stable_hash

_FORMAT = "1"


def class_label(parts: Sequence[str]) -> str:
    """The class of a file from its path parts below the dataset root: its top-level folder."""
    return parts[0] if len(parts) > 1 else ""


def hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def sidecars(files: Sequence[tuple[str, ...]], suffix: str | None) -> tuple[list[tuple[str, ...]], dict[tuple[str, ...], tuple[str, ...]]]:
    """(the record files, {record file: its text file}) of a file tree given as path parts: a file
    named like another one but ending in ``suffix`` is that file's text. No ``suffix``: every file
    is a record."""
    if suffix is None:
        return list(files), {}
    present = set(files)
    text_of: dict[tuple[str, ...], tuple[str, ...]] = {}
    for parts in files:
        if parts[-1].endswith(suffix):
            continue
        sidecar = (*parts[:-1], PurePosixPath(parts[-1]).stem + suffix)
        if sidecar in present:
            text_of[parts] = sidecar
    claimed = set(text_of.values())
    return [parts for parts in files if parts not in claimed], text_of


def check_classes(where: str, labels: Sequence[str]) -> None:
    """The clear failures shared by the file-tree sources: nothing at all, or fewer than two classes."""
    if not labels:
        raise SourceError(f"dataset {where} is empty: it holds no files")
    classes = sorted({label for label in labels if label})
    if len(classes) < 2:
        raise SourceError(
            f"dataset {where} has {len(classes)} class folder(s) with files ({', '.join(classes) or 'none'}); "
            "a classifier needs at least two: put each class's images in its own sub-folder"
        )


class FolderSource:
    def __init__(self, path: str, options: Mapping[str, Any] | None = None) -> None:
        if not path:
            raise SourceError("a folder source needs a path: folder:PATH, e.g. folder:data/pets")
        self.spec = f"folder:{path}"
        self.root = Path(path).expanduser()
        if not self.root.exists():
            raise SourceError(f"dataset folder {self.root} does not exist")
        if not self.root.is_dir():
            raise SourceError(f"dataset folder {self.root} is not a folder (folder: wants one sub-folder per class)")
        self.text_sidecar = text_option(options or {}, "text_sidecar")
        self.has_text = self.text_sidecar is not None
        every = sorted(
            relative.parts
            for relative in (p.relative_to(self.root) for p in self.root.rglob("*"))
            if not hidden(relative.parts) and (self.root / relative).is_file()
        )
        self.files, self.text_of = sidecars(every, self.text_sidecar)
        self._every = every
        check_classes(f"folder {self.root}", [class_label(f) for f in self.files])

    def fingerprint(self) -> str:
        listing = [("/".join(f), sha256_file(self.root.joinpath(*f))) for f in self._every]
        return stable_hash([_FORMAT, listing] + ([self.text_sidecar] if self.has_text else []))

    def _read(self, parts: tuple[str, ...]) -> bytes:
        try:
            return self.root.joinpath(*parts).read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {self.root.joinpath(*parts)}: {exc.strerror or exc}") from None

    def records(self) -> Iterator[RawRecord]:
        for relative in self.files:
            parts = [text_name(part) for part in relative]
            sidecar = self.text_of.get(relative)
            text = self._read(sidecar) if sidecar is not None else None
            yield RawRecord(id="/".join(parts), image=self._read(relative), label=class_label(parts), text=text)
