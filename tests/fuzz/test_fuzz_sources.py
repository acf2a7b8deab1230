"""Fuzz: random Parquet schemas, random folder trees and random archive entries through the sources
and the download stage. Each gives records (id, bytes, label) or a clear ``SourceError``, never another
exception and never a hang; an archive never makes anything appear outside its own folder."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgflow.config import DownloadConfig
from imgflow.runtime.errors import SourceError
from imgflow.data.sources import open_source
from imgflow.stages.download import DOWNLOAD
from imgflow.store.artifacts import ArtifactStore
from tests.conftest import digit_like, encode
from tests.fuzz.conftest import fuzz_target

GOOD = encode(digit_like(1))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zipfile on duplicate names: expected here


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """A ``TimeoutError`` (a failing test, not a hung one) if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read(spec: str, folder: Path, options: dict[str, Any] | None = None) -> None:
    """Open ``spec`` and run the download stage on it: records of the right types, or a SourceError."""
    with _within(30):
        try:
            source = open_source(spec, options or {})
            records = list(source.records())
            source.fingerprint()
        except SourceError as error:
            assert str(error)
            return
        for record in records:
            assert isinstance(record.id, str) and isinstance(record.image, bytes) and isinstance(record.label, str)
        try:
            result = DOWNLOAD.run(ArtifactStore(folder / "artifacts"), DownloadConfig(source=spec, options=options or {}), {"source": "fuzz"})
        except SourceError as error:
            assert str(error) and not records  # the only refusal left: a source without records
            return
        assert pq.read_table(result.file("records.parquet")).num_rows == result.info.records == len(records)


# --- Parquet tables -------------------------------------------------------------------------------

COLUMN_TYPES = {
    "binary": (pa.binary(), st.one_of(st.none(), st.just(GOOD), st.binary(max_size=20))),
    "large_binary": (pa.large_binary(), st.one_of(st.none(), st.just(GOOD))),
    "string": (pa.string(), st.one_of(st.none(), st.text(max_size=8))),
    "int64": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "float": (pa.float64(), st.one_of(st.none(), st.floats())),
    "bool": (pa.bool_(), st.one_of(st.none(), st.booleans())),
    "null": (pa.null(), st.none()),
    "struct_bytes": (pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                     st.one_of(st.none(), st.fixed_dictionaries({"bytes": st.one_of(st.none(), st.just(GOOD)), "path": st.just("p")}))),
    "struct_path": (pa.struct([("path", pa.string())]), st.one_of(st.none(), st.fixed_dictionaries({"path": st.text(max_size=4)}))),
    "list": (pa.list_(pa.int64()), st.one_of(st.none(), st.lists(st.integers(0, 9), max_size=3))),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    rows = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(["image", "label", "id", "extra", "jpeg"]), unique=True, max_size=5))
    columns = {}
    for name in names:
        kind, values = COLUMN_TYPES[draw(st.sampled_from(sorted(COLUMN_TYPES)))]
        columns[name] = pa.array([draw(values) for _ in range(rows)], type=kind)
    return pa.table(columns) if columns else pa.table({"only": pa.array([], pa.int64())})


@fuzz_target(examples=150)
@given(
    parts=st.lists(st.tuples(st.sampled_from(["", "date=2024-05-01/", "date=bad/", ".hidden/", "_meta/"]), tables()), min_size=1, max_size=3),
    junk=st.booleans(),
    options=st.dictionaries(st.sampled_from(["image_column", "label_column", "id_column"]),
                            st.one_of(st.sampled_from(["image", "label", "id", "jpeg", "nope"]), st.integers(0, 3)), max_size=2),
)
def test_a_parquet_table_of_any_schema_gives_records_or_a_source_error(
    parts: list[tuple[str, pa.Table]], junk: bool, options: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "table"
        for number, (prefix, table) in enumerate(parts):
            (root / prefix).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / prefix / f"part-{number}.parquet")
        if junk:
            (root / "notes.parquet").write_bytes(b"not parquet at all")
        _read(f"parquet:{root}", Path(folder), options)
        _read(f"parquet:{root / parts[0][0]}part-0.parquet", Path(folder), options)


# --- Folder trees ---------------------------------------------------------------------------------

segment = st.one_of(
    st.sampled_from(["a", "b", "c", ".hidden", "deep", "x.png", "é", "space name"]),
    st.binary(min_size=1, max_size=6).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")).map(os.fsdecode),
)
entries = st.tuples(
    st.lists(segment, min_size=1, max_size=3),
    st.sampled_from(["good", "junk", "empty_file", "dir", "link_file", "link_dir", "link_loop", "link_dangling", "fifo", "unreadable"]),
)


def _make(root: Path, parts: list[str], kind: str) -> None:
    path = root.joinpath(*parts)
    if os.path.lexists(path):
        return  # the tree already has something there (writing into a FIFO made earlier would block)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "good":
            path.write_bytes(GOOD)
        elif kind in ("junk", "empty_file", "unreadable"):
            path.write_bytes(b"junk" * 3 if kind != "empty_file" else b"")
            if kind == "unreadable":
                path.chmod(0)
        elif kind == "dir":
            path.mkdir(exist_ok=True)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            target = {"link_file": root / "a" / "x.png", "link_dir": root / "a", "link_loop": path.parent, "link_dangling": root / "nowhere"}[kind]
            path.symlink_to(target)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        pass  # a parent is a file, a FIFO or a link to one


@fuzz_target(examples=100)
@given(tree=st.lists(entries, max_size=8))
def test_a_folder_tree_of_anything_gives_records_or_a_source_error(tree: list[tuple[list[str], str]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        for parts, kind in [(["a", "x.png"], "good"), (["b", "y.png"], "good"), *tree]:
            _make(root, parts, kind)
        _read(f"folder:{root}", Path(folder))


# --- Archives -------------------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from(["a/x.png", "b/y.png", "top/a/x.png", "top/b/y.png", "../evil.png", "/etc/evil.png", "a/../../x",
                     "a\\..\\..\\x", "C:/x.png", "", ".", "a/", "./a/z.png", "é/ü.png"]),
    st.text(max_size=10),
)
members = st.tuples(names, st.sampled_from(["file", "file", "dir", "symlink", "hardlink", "chardev", "blockdev", "fifo"]),
                    st.sampled_from(["a/x.png", "../../outside", "/etc/passwd", "x.png", ".."]))


def _tar(entries: list[tuple[str, str, str]], compression: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for name, kind, target in entries:
            info = tarfile.TarInfo(name)
            data = GOOD if kind == "file" else b""
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname, info.size = target, len(data)
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _zip(entries: list[tuple[str, str, str]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, kind, target in entries:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = 0o120777 << 16
                archive.writestr(info, target)
            elif kind == "dir":
                archive.writestr(zipfile.ZipInfo((name or "d").rstrip("/") + "/"), b"")
            else:
                archive.writestr(info, GOOD if kind == "file" else b"\0\1")
    return buffer.getvalue()


@fuzz_target(examples=150)
@given(entries=st.lists(members, max_size=6), kind=st.sampled_from(["tar", "gz", "zip"]),
       cut=st.one_of(st.none(), st.integers(1, 2000)))
def test_an_archive_of_any_entries_gives_records_or_a_source_error(entries: list[tuple[str, str, str]], kind: str, cut: int | None) -> None:
    base = [("a/x.png", "file", ""), ("b/y.png", "file", "")]
    data = _zip(base + entries) if kind == "zip" else _tar(base + entries, "" if kind == "tar" else "gz")
    data = data[:cut] if cut is not None else data  # a damaged archive, still with its own checksum
    with tempfile.TemporaryDirectory() as folder:
        inside = Path(folder) / "in"
        inside.mkdir()
        path = inside / f"data.{'zip' if kind == 'zip' else 'tar'}"
        path.write_bytes(data)
        _read(f"archive:{path}#sha256={hashlib.sha256(data).hexdigest()}", inside)
        assert sorted(p.name for p in Path(folder).iterdir()) == ["in"]  # nothing appeared outside
