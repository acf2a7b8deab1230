"""folder:, parquet: and archive: sources on data the tests make, including every clear-failure case."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.runtime.errors import SourceError
from imgflow.data.sources import open_source
from tests.conftest import digit_like, encode


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _images(n: int = 4) -> dict[str, bytes]:
    return {f"{'ab'[i % 2]}/{i}.png": encode(digit_like(i)) for i in range(n)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# folder:


def test_folder_labels_are_class_folders_and_ids_relative_paths(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {**_images(), "a/deep/x.jpg": encode(digit_like(9), "JPEG"), ".DS_Store": b"meta",
                                   "a/.hidden.png": b"", "README.txt": b"about"})
    records = list(open_source(f"folder:{root}").records())
    assert [(r.id, r.label) for r in records] == [
        ("README.txt", ""), ("a/0.png", "a"), ("a/2.png", "a"), ("a/deep/x.jpg", "a"), ("b/1.png", "b"), ("b/3.png", "b"),
    ]
    assert records[1].image == (root / "a/0.png").read_bytes()


def test_folder_fingerprint_follows_content_not_location_or_time(tmp_path: Path) -> None:
    one = _tree(tmp_path / "one", _images())
    two = _tree(tmp_path / "two", _images())
    assert open_source(f"folder:{one}").fingerprint() == open_source(f"folder:{two}").fingerprint()
    (two / "a/0.png").write_bytes(encode(digit_like(100)))
    assert open_source(f"folder:{one}").fingerprint() != open_source(f"folder:{two}").fingerprint()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"folder .*/d is empty: it holds no files"),
        ({"a/1.png": b"x", "a/2.png": b"y"}, r"folder .*/d has 1 class folder\(s\) with files \(a\)"),
        ({"1.png": b"x"}, r"folder .*/d has 0 class folder\(s\) with files \(none\)"),
    ],
)
def test_folder_without_two_classes_fails(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    (tmp_path / "d").mkdir()
    _tree(tmp_path / "d", files)
    with pytest.raises(SourceError, match=message):
        open_source(f"folder:{tmp_path / 'd'}")


def test_missing_folder_and_a_file_fail_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"dataset folder {tmp_path}/nope does not exist"):
        open_source(f"folder:{tmp_path}/nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(SourceError, match="is not a folder"):
        open_source(f"folder:{tmp_path}/f")


# parquet:


def _parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_parquet_partitions_and_ids_are_the_same_through_root_or_partition(tmp_path: Path) -> None:
    for day in ("2024-05-01", "2024-05-02"):
        _parquet(tmp_path / "lake" / f"date={day}" / "part-0.parquet",
                 [{"image": encode(digit_like(i)), "label": i % 2} for i in range(3)])
    (tmp_path / "lake" / "_SUCCESS").write_text("")
    whole = list(open_source(f"parquet:{tmp_path / 'lake'}").records())
    assert [r.id for r in whole][:2] == ["date=2024-05-01/part-0.parquet#0", "date=2024-05-01/part-0.parquet#1"]
    assert len(whole) == 6 and {r.label for r in whole} == {"0", "1"}
    one_day = list(open_source(f"parquet:{tmp_path / 'lake' / 'date=2024-05-02'}").records())
    assert [r.id for r in one_day] == [r.id for r in whole][3:]
    uri = list(open_source(f"parquet:file://{tmp_path / 'lake'}").records())
    assert [r.id for r in uri] == [r.id for r in whole]


def test_parquet_columns_by_option_struct_images_ids_and_nulls(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "t.parquet", [
        {"key": "k1", "img": {"bytes": encode(digit_like(1)), "path": "1.png"}, "y": "cat"},
        {"key": "k2", "img": {"bytes": None, "path": "2.png"}, "y": None},
    ])
    options = {"image_column": "img", "label_column": "y", "id_column": "key"}
    records = list(open_source(f"parquet:{path}", options).records())
    assert [(r.id, r.label, len(r.image) > 0) for r in records] == [("k1", "cat", True), ("k2", "", False)]


def test_parquet_uses_an_id_column_named_id_by_default(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "t.parquet", [{"id": "x", "image": b"1", "label": "a"}])
    assert [r.id for r in open_source(f"parquet:{path}").records()] == ["x"]


def test_parquet_clear_failures(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"Parquet source {tmp_path}/none does not exist"):
        open_source(f"parquet:{tmp_path}/none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="is empty: the folder holds no Parquet files"):
        open_source(f"parquet:{tmp_path}/empty")
    (tmp_path / "mixed").mkdir()
    _parquet(tmp_path / "mixed" / "a.parquet", [{"image": b"1", "label": "a"}])
    (tmp_path / "mixed" / "b.parquet").write_text("id,image,label\n")
    with pytest.raises(SourceError, match=r"mixed/b.parquet in Parquet source .* is not a readable Parquet file"):
        open_source(f"parquet:{tmp_path}/mixed")
    path = _parquet(tmp_path / "cols.parquet", [{"picture": b"1", "label": "a"}])
    with pytest.raises(SourceError, match=r"cols.parquet has no image column 'image' \(columns: picture, label\)"):
        open_source(f"parquet:{path}")
    with pytest.raises(SourceError, match="has no label column 'y'"):
        open_source(f"parquet:{path}", {"image_column": "picture", "label_column": "y"})
    text = _parquet(tmp_path / "text.parquet", [{"image": "not bytes", "label": "a"}])
    with pytest.raises(SourceError, match="the image column 'image' holds string, not image bytes"):
        open_source(f"parquet:{text}")


# archive:


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None, hard: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


@pytest.mark.parametrize("maker", [_zip, _tar])
def test_archive_reads_class_folders_inside_one_top_folder(tmp_path: Path, maker) -> None:
    files = {f"pets/{name}": data for name, data in _images().items()}
    path = maker(tmp_path / "data.bin", files)
    source = open_source(f"archive:{path}#sha256={_sha(path)}")
    records = list(source.records())
    assert [(r.id, r.label) for r in records] == [("a/0.png", "a"), ("a/2.png", "a"), ("b/1.png", "b"), ("b/3.png", "b")]
    assert records[0].image == files["pets/a/0.png"]
    assert source.fingerprint() == open_source(f"archive:{path}#sha256={_sha(path).upper()}").fingerprint()


def test_archive_by_url_is_fetched_and_checked(tmp_path: Path) -> None:
    path = _zip(tmp_path / "d.zip", _images())
    assert len(list(open_source(f"archive:file://{path}#sha256={_sha(path)}").records())) == 4
    with pytest.raises(SourceError, match="fails its checksum"):
        list(open_source(f"archive:file://{path}#sha256={'0' * 64}").records())
    with pytest.raises(SourceError, match="cannot reach .* for archive:file:///nowhere.zip.*: no such file"):
        list(open_source(f"archive:file:///nowhere.zip#sha256={'0' * 64}").records())


def test_archive_clear_failures(tmp_path: Path) -> None:
    path = _zip(tmp_path / "d.zip", _images())
    with pytest.raises(SourceError, match=r"needs a location and its checksum: archive:PATH_OR_URL#sha256=HEX"):
        open_source(f"archive:{path}")
    with pytest.raises(SourceError, match=rf"archive {path} fails its checksum: sha256 is {_sha(path)}, the spec says 0+;"):
        open_source(f"archive:{path}#sha256={'0' * 64}")
    with pytest.raises(SourceError, match=f"archive {tmp_path}/none.zip does not exist"):
        open_source(f"archive:{tmp_path}/none.zip#sha256={'0' * 64}")
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(SourceError, match="is neither a zip nor a tar archive"):
        open_source(f"archive:{text}#sha256={_sha(text)}")


@pytest.mark.parametrize(
    ("files", "links", "hard", "message"),
    [
        ({"/etc/a/x.png": b"1", "b/y.png": b"2"}, None, False, "an absolute path, '/etc/a/x.png'"),
        ({"a/../../x.png": b"1", "b/y.png": b"2"}, None, False, "an entry escaping its folder, 'a/../../x.png'"),
        ({"a/x.png": b"1", "b/y.png": b"2"}, {"a/evil.png": "../../etc/passwd"}, False, "a link escaping its folder, 'a/evil.png' -> '../../etc/passwd'"),
        ({"a/x.png": b"1", "b/y.png": b"2"}, {"a/evil.png": "/etc/passwd"}, False, "a link escaping its folder"),
        ({"a/x.png": b"1", "b/y.png": b"2"}, {"a/evil.png": "../etc/passwd"}, True, "a link escaping its folder"),
    ],
)
def test_archive_entries_escaping_the_folder_refuse_the_archive(tmp_path: Path, files, links, hard, message) -> None:
    path = _tar(tmp_path / "evil.tgz", files, links, hard)
    with pytest.raises(SourceError, match=message):
        open_source(f"archive:{path}#sha256={_sha(path)}")


def test_archive_link_inside_the_folder_is_allowed(tmp_path: Path) -> None:
    path = _tar(tmp_path / "ok.tgz", _images(), {"a/same.png": "0.png"})
    assert len(list(open_source(f"archive:{path}#sha256={_sha(path)}").records())) == 4


def test_zip_symlink_escaping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in _images().items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("a/evil.png")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "../../../etc/passwd")
    with pytest.raises(SourceError, match="a link escaping its folder, 'a/evil.png'"):
        open_source(f"archive:{path}#sha256={_sha(path)}")


# Found by tests/fuzz: each was a traceback before.


def test_folder_name_that_is_not_utf8_becomes_an_id_that_shows_its_bytes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", _images())
    (root / "a").joinpath(b"caf\xe9.png".decode("utf-8", "surrogateescape")).write_bytes(encode(digit_like(7)))
    records = {r.id: r for r in open_source(f"folder:{root}").records()}
    assert records["a/caf\\xe9.png"].label == "a"
    assert all(r.id.encode("utf-8") for r in records.values())


def test_a_cut_gzip_tar_is_a_damaged_archive(tmp_path: Path) -> None:
    whole = _tar(tmp_path / "whole.tgz", _images(8))
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(SourceError, match=rf"archive {cut} is damaged or unsupported: EOFError"):
        list(open_source(f"archive:{cut}#sha256={_sha(cut)}").records())


def test_a_zip_entry_with_an_empty_name_is_skipped(tmp_path: Path) -> None:
    path = _zip(tmp_path / "d.zip", _images())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"nameless")
    assert len(list(open_source(f"archive:{path}#sha256={_sha(path)}").records())) == 4


def test_a_zip_name_flagged_utf8_that_is_not_is_a_damaged_archive(tmp_path: Path) -> None:
    path = _zip(tmp_path / "d.zip", {**_images(), "a/\u00e9.png": b"x"})  # a non-ASCII name sets zip's UTF-8 flag
    path.write_bytes(path.read_bytes().replace("\u00e9".encode(), b"\xe9\x82"))
    with pytest.raises(SourceError, match="is damaged or unsupported: UnicodeDecodeError"):
        open_source(f"archive:{path}#sha256={_sha(path)}")


# text


def test_folder_sidecar_text_belongs_to_its_image_and_a_lone_text_file_stays_a_record(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {**_images(), "a/0.txt": b"a cat", "b/1.txt": b"caf\xe9", "b/notes.txt": b"no image"})
    plain = open_source(f"folder:{root}")
    assert not plain.has_text and "a/0.txt" in [r.id for r in plain.records()]  # without the option: a record
    source = open_source(f"folder:{root}", {"text_sidecar": ".txt"})
    records = {r.id: r for r in source.records()}
    assert source.has_text and sorted(records) == ["a/0.png", "a/2.png", "b/1.png", "b/3.png", "b/notes.txt"]
    assert records["a/0.png"].text == b"a cat" and records["b/1.png"].text == b"caf\xe9"  # raw: cleaning checks it
    assert records["a/2.png"].text is None
    before = source.fingerprint()
    assert before != plain.fingerprint()
    (root / "a/0.txt").write_bytes(b"a dog")  # a changed caption is changed content
    assert open_source(f"folder:{root}", {"text_sidecar": ".txt"}).fingerprint() != before
    with pytest.raises(SourceError, match="text_sidecar must be a non-empty string"):
        open_source(f"folder:{root}", {"text_sidecar": ""})


def test_parquet_text_column_of_strings_or_bytes_and_a_wrong_one_named(tmp_path: Path) -> None:
    images = [encode(digit_like(i)) for i in range(3)]
    pq.write_table(pa.table({"image": images, "label": ["a", "b", "a"], "caption": ["x y", None, "z"]}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"image": images, "label": ["a", "b", "a"], "caption": [b"x", b"\xff", b""]}), tmp_path / "b.parquet")
    assert [r.text for r in open_source(f"parquet:{tmp_path / 's.parquet'}", {"text_column": "caption"}).records()] == [b"x y", None, b"z"]
    assert [r.text for r in open_source(f"parquet:{tmp_path / 'b.parquet'}", {"text_column": "caption"}).records()] == [b"x", b"\xff", b""]
    assert all(r.text is None for r in open_source(f"parquet:{tmp_path / 's.parquet'}").records())
    with pytest.raises(SourceError, match="no text column 'title'"):
        open_source(f"parquet:{tmp_path / 's.parquet'}", {"text_column": "title"})
    with pytest.raises(SourceError, match="the text column 'label'"):
        pq.write_table(pa.table({"image": images, "label": [1, 2, 3]}), tmp_path / "n.parquet")
        open_source(f"parquet:{tmp_path / 'n.parquet'}", {"text_column": "label"})


def test_archive_sidecar_text(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**_images(), "a/0.txt": b"first caption"}.items():
            archive.writestr(f"top/{name}", data)
    records = list(open_source(f"archive:{path}#sha256={_sha(path)}", {"text_sidecar": ".txt"}).records())
    assert [(r.id, r.text) for r in records][:2] == [("a/0.png", b"first caption"), ("a/2.png", None)]
    assert len(records) == 4


# idx:


def _idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> Path:
    import gzip
    import struct

    header = (magic or bytes([0, 0, 8, array.ndim])) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _idx_pair(root: Path, part: str, count: int, gz: str = ".gz") -> None:
    root.mkdir(parents=True, exist_ok=True)
    _idx(root / f"{part}-images-idx3-ubyte{gz}", np.stack([digit_like(i, 6) for i in range(count)]))
    _idx(root / f"{part}-labels-idx1-ubyte{gz}", np.arange(count) % 3)


def test_idx_reads_every_pair_gzip_or_not_with_label_names(tmp_path: Path) -> None:
    from PIL import Image

    _idx_pair(tmp_path / "d", "train", 5)
    _idx_pair(tmp_path / "d", "t10k", 2, gz="")
    records = list(open_source(f"idx:{tmp_path / 'd'}").records())
    assert [r.id for r in records] == ["t10k/00000", "t10k/00001", *[f"train/{i:05d}" for i in range(5)]]
    assert [r.label for r in records] == ["0", "1", "0", "1", "2", "0", "1"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(records[3].image))), digit_like(1, 6))
    named = open_source(f"idx:{tmp_path / 'd' / 'train-images-idx3-ubyte.gz'}", {"label_names": ["zero", "one", "two"]})
    assert [r.label for r in named.records()] == ["zero", "one", "two", "zero", "one"]
    assert named.fingerprint() != open_source(f"idx:{tmp_path / 'd'}").fingerprint()
    with pytest.raises(SourceError, match="record 2 has label 2, but \\[options\\] label_names names only 2"):
        list(open_source(f"idx:{tmp_path / 'd'}", {"label_names": ["zero", "one"]}).records())


def test_idx_clear_failures(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _idx_pair(root, "train", 4)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SourceError, match="has no labels file beside it: expected train-labels-idx1-ubyte.gz"):
        open_source(f"idx:{root}")
    _idx(root / "train-labels-idx1-ubyte.gz", np.arange(3))
    with pytest.raises(SourceError, match="holds 4 images but .* 3 labels"):
        open_source(f"idx:{root}")
    _idx(root / "train-labels-idx1-ubyte.gz", np.zeros((4, 2)))
    with pytest.raises(SourceError, match="holds 2-dimensional data of type 0x08; expected 1-dimensional unsigned bytes"):
        open_source(f"idx:{root}")
    (root / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="cannot read IDX file .*train-labels-idx1-ubyte.gz"):
        open_source(f"idx:{root}")
    _idx(root / "train-labels-idx1-ubyte.gz", np.arange(4))
    images = root / "train-images-idx3-ubyte.gz"
    import gzip

    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-10]))  # the last image cut short
    with pytest.raises(SourceError, match="is cut short: record 3 of 4 lacks 10 byte"):
        list(open_source(f"idx:{root}").records())
    with pytest.raises(SourceError, match="holds no images file"):
        open_source(f"idx:{tmp_path}")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"idx:{tmp_path / 'nope'}")
