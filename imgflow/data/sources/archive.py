"""``archive:PATH_OR_URL#sha256=HEX``: a zip or tar archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``,
``.tar.xz``) laid out like a ``folder:`` source, one folder per class, optionally inside one top folder.

The sha256 is required: it is the source's fingerprint (so the archive is not fetched just to decide
whether anything changed) and it is checked before a single entry is read. A local archive is checked
when the source is opened; one behind a URL (``http://``, ``https://``, ``file://``) when the download
stage fetches it (``imgflow.runtime.network``: a host that does not resolve or refuses fails at once, when
the source is opened, before any run starts; a timeout or a 5xx is retried within ``[download]
timeout``). Members are read straight from the archive, never written to disk, and an archive
holding an absolute path, a ``..`` entry, or a link pointing outside its folder is refused as a whole:
such an archive is broken or hostile, and nothing from it is used. ``[options] text_sidecar`` reads
text files beside the images as a ``folder:`` source does.
"""

from __future__ import annotations

import lzma
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from imgflow.data.sources.folder import check_classes, class_label, hidden, sidecars
from imgflow.data.sources.record import RawRecord, text_name, text_option
from imgflow.runtime.errors import SourceError
from imgflow.runtime.network import budget, check_reachable, fetch
from imgflow.store.fingerprint import sha256_file, stable_hash

_FORMAT = "1"
_CHECKSUM = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


def _member_parts(name: str, where: str) -> tuple[str, ...]:
    """The path parts of an archive entry; ``SourceError`` if it would land outside the folder."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise SourceError(f"archive {where} holds an entry with an absolute path, {name!r}: refusing the archive")
    parts = tuple(part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", "."))
    if ".." in parts:
        raise SourceError(f"archive {where} holds an entry escaping its folder, {name!r}: refusing the archive")
    return parts


def _escapes(folder_parts: tuple[str, ...], target: str) -> bool:
    """Whether a link target, relative to ``folder_parts``, points outside the archive's folder."""
    if target.startswith("/"):
        return True
    depth = len(folder_parts)
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


Listing = dict[tuple[str, ...], Callable[[], bytes]]  # the path parts of each file -> how to read it


def _refuse_link(where: str, name: str, target: str) -> SourceError:
    return SourceError(f"archive {where} holds a link escaping its folder, {name!r} -> {target!r}: refusing the archive")


@contextmanager
def _zip_listing(path: Path, where: str) -> Iterator[Listing]:
    with zipfile.ZipFile(path) as archive:
        files: Listing = {}
        for info in archive.infolist():
            parts = _member_parts(info.filename, where)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symbolic link, as Info-ZIP stores one
                target = archive.read(info).decode("utf-8", "replace")
                if _escapes(parts[:-1], target):
                    raise _refuse_link(where, info.filename, target)
                continue  # an in-archive link: its target is read as itself
            if parts and not info.filename.endswith("/"):  # an empty name has no parts (is_dir() fails on it)
                files[parts] = partial(archive.read, info)
        yield files


@contextmanager
def _tar_listing(path: Path, where: str) -> Iterator[Listing]:
    with tarfile.open(path) as archive:
        files: Listing = {}
        for member in archive.getmembers():
            parts = _member_parts(member.name, where)
            # A symbolic link's target is relative to its folder, a hard link's to the archive's root.
            if member.issym() and _escapes(parts[:-1], member.linkname):
                raise _refuse_link(where, member.name, member.linkname)
            if member.islnk() and _escapes((), member.linkname):
                raise _refuse_link(where, member.name, member.linkname)
            if member.isfile() and parts:
                files[parts] = partial(_read_member, archive, member)
        yield files


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    return handle.read() if handle is not None else b""


# What reading a damaged (cut, corrupted) or unsupported archive raises, by the layer that notices:
# zip and tar structure, the gzip/bz2/xz streams (``OSError`` includes ``gzip.BadGzipFile``), a zip
# entry flagged UTF-8 whose name is not, zip's unsupported compression methods
# (``NotImplementedError``) and encrypted members (``RuntimeError``).
_DAMAGED = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
)


@contextmanager
def _listing(path: Path, where: str) -> Iterator[Listing]:
    try:
        if zipfile.is_zipfile(path):
            opener = _zip_listing
        elif tarfile.is_tarfile(path):
            opener = _tar_listing
        else:
            raise SourceError(f"archive {where} is neither a zip nor a tar archive")
        with opener(path, where) as files:
            yield files
    except _DAMAGED as exc:
        raise SourceError(f"archive {where} is damaged or unsupported: {type(exc).__name__}: {exc}") from None


def _class_files(
    files: Listing, where: str, text_sidecar: str | None
) -> tuple[list[tuple[tuple[str, ...], tuple[str, ...]]], dict[tuple[str, ...], tuple[str, ...]]]:
    """(archive parts, parts below the dataset root) of each record file, sorted, and the text file of
    each that has one (``sidecars``); checks the classes.

    Archives are often one folder holding the class folders: when every file sits at least two folders
    deep under one common top folder, that folder is the root.
    """
    names, text_of = sidecars(sorted(parts for parts in files if not hidden(parts)), text_sidecar)
    strip = 1 if names and len({p[0] for p in names}) == 1 and all(len(p) >= 3 for p in names) else 0
    check_classes(f"archive {where}", [class_label(parts[strip:]) for parts in names])
    return [(parts, parts[strip:]) for parts in names], text_of


class ArchiveSource:
    def __init__(self, rest: str, options: Mapping[str, Any] | None = None) -> None:
        location, _, fragment = rest.partition("#")
        match = _CHECKSUM.match(fragment)
        if not location or not match:
            raise SourceError(
                f"archive source {rest!r} needs a location and its checksum: archive:PATH_OR_URL#sha256=HEX "
                "(64 hex digits; `sha256sum FILE` prints it)"
            )
        self.spec = f"archive:{rest}"
        self.location = location
        self.sha256 = match.group(1).lower()
        self.remote = "://" in location
        self.text_sidecar = text_option(options or {}, "text_sidecar")
        self.has_text = self.text_sidecar is not None
        if location.startswith(("http://", "https://")):
            check_reachable(location, source=self.spec, advice=self._advice())  # before any run starts
        if not self.remote:
            path = Path(location).expanduser()
            if not path.is_file():
                raise SourceError(f"archive {path} does not exist" if not path.exists() else f"archive {path} is not a file")
            self._verify(path)
            with _listing(path, location) as files:
                _class_files(files, location, self.text_sidecar)  # refuse a hostile or class-less archive before any run starts

    def fingerprint(self) -> str:
        return stable_hash([_FORMAT, self.sha256] + ([self.text_sidecar] if self.has_text else []))

    def _advice(self) -> str:
        return f"Where there is no network, download it elsewhere and use the copy: archive:PATH#sha256={self.sha256}"

    def _verify(self, path: Path) -> None:
        actual = sha256_file(path)
        if actual != self.sha256:
            raise SourceError(
                f"archive {self.location} fails its checksum: sha256 is {actual}, the spec says {self.sha256}; "
                "the file is corrupt or not the one the spec names"
            )

    @contextmanager
    def _local_copy(self) -> Iterator[Path]:
        if not self.remote:
            yield Path(self.location).expanduser()
            return
        host = urllib.parse.urlsplit(self.location).netloc or self.location
        with tempfile.TemporaryDirectory(prefix="imgflow-archive-") as folder:
            path = Path(folder) / "archive"
            fetch(partial(self._fetch, path), source=self.spec, host=host, advice=self._advice())
            self._verify(path)
            yield path

    def _fetch(self, path: Path) -> None:
        try:
            response = urllib.request.urlopen(self.location, timeout=min(60.0, budget()))
        except ValueError as exc:  # not a URL urllib can open: retrying will not change it
            raise SourceError(f"cannot fetch archive {self.location}: {exc}") from None
        with response, path.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)

    def records(self) -> Iterator[RawRecord]:
        with self._local_copy() as path, _listing(path, self.location) as files:
            found, text_of = _class_files(files, self.location, self.text_sidecar)
            for parts, inner in found:
                names = [text_name(part) for part in inner]
                sidecar = text_of.get(parts)
                text = files[sidecar]() if sidecar is not None else None
                yield RawRecord(id="/".join(names), image=files[parts](), label=class_label(names), text=text)
