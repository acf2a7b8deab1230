"""``folder:PATH``: a folder with one sub-folder per class, images of any common format inside.

Every regular file under a class folder is a record (nested folders belong to their top-level class),
whatever its extension: the clean stage decides what is an image, and quarantines the rest with a
reason. Hidden files and folders (a leading dot: ``.DS_Store``, ``.ipynb_checkpoints``) are metadata,
not records. A file lying directly in the root has no class: it becomes a record with an empty label,
which cleaning quarantines as ``unlabeled`` rather than dropping it unseen.

Record ids are the files' paths relative to the root, so the same tree gives the same ids wherever it
lies (bytes of a name that are not UTF-8 show as ``\\xNN``); the fingerprint hashes those paths and
the files' bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from imgflow.errors import SourceError
from imgflow.fingerprint import sha256_file, stable_hash
from imgflow.sources import RawRecord, text_name

_FORMAT = "1"


def class_label(parts: Sequence[str]) -> str:
    """The class of a file from its path parts below the dataset root: its top-level folder."""
    return parts[0] if len(parts) > 1 else ""


def hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") for part in parts)


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
    def __init__(self, path: str) -> None:
        if not path:
            raise SourceError("a folder source needs a path: folder:PATH, e.g. folder:data/pets")
        self.spec = f"folder:{path}"
        self.root = Path(path).expanduser()
        if not self.root.exists():
            raise SourceError(f"dataset folder {self.root} does not exist")
        if not self.root.is_dir():
            raise SourceError(f"dataset folder {self.root} is not a folder (folder: wants one sub-folder per class)")
        self.files = sorted(
            relative
            for relative in (p.relative_to(self.root) for p in self.root.rglob("*"))
            if not hidden(relative.parts) and (self.root / relative).is_file()
        )
        check_classes(f"folder {self.root}", [class_label(f.parts) for f in self.files])

    def fingerprint(self) -> str:
        return stable_hash([_FORMAT, [(f.as_posix(), sha256_file(self.root / f)) for f in self.files]])

    def records(self) -> Iterator[RawRecord]:
        for relative in self.files:
            try:
                data = (self.root / relative).read_bytes()
            except OSError as exc:
                raise SourceError(f"cannot read {self.root / relative}: {exc.strerror or exc}") from None
            parts = [text_name(part) for part in relative.parts]
            yield RawRecord(id="/".join(parts), image=data, label=class_label(parts))
