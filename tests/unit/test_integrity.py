"""Damaged stage outputs are found before reuse, set aside (never deleted) and rebuilt, and the rebuild
says what was found; an unchanged file is not hashed twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgflow.store import integrity
from imgflow.store.integrity import CORRUPT, DAMAGE_NOTE
from imgflow.store.artifacts import MANIFEST, ArtifactStore
from imgflow.store.stage import Stage


def _stage(calls: list[int]) -> Stage:
    def build(out_dir: Path, config: dict, inputs: dict) -> dict:
        calls.append(1)
        (out_dir / "table.bin").write_bytes(bytes(range(256)) * 64)
        (out_dir / "part").mkdir()
        (out_dir / "part" / "notes.txt").write_text("fine\n")
        return {}

    return Stage("demo", "1", build)


def _flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "found"),
    [
        (lambda folder: _flip(folder / "table.bin"), r"table\.bin: sha256 \w+ where the manifest has \w+"),
        (lambda folder: (folder / "part" / "notes.txt").write_text("fine, or not\n"), r"part/notes\.txt: 13 bytes where the manifest has 5"),
        (lambda folder: (folder / "table.bin").unlink(), r"table\.bin: cannot be read"),
        (lambda folder: (folder / MANIFEST).write_bytes((folder / MANIFEST).read_bytes()[:40]), r"manifest\.json: unreadable"),
    ],
    ids=["flipped-byte", "resized", "missing", "truncated-manifest"],
)
def test_a_damaged_output_is_set_aside_and_rebuilt_and_the_rebuild_says_so(store: ArtifactStore, damage, found: str) -> None:
    calls: list[int] = []
    stage = _stage(calls)
    first = stage.run(store, {}, {})
    damage(Path(first.path))
    again = stage.run(store, {}, {})
    assert len(calls) == 2 and again.status == "ran" and again.key == first.key
    assert again.repaired is not None
    import re

    assert re.search(found, again.repaired), again.repaired
    aside = list((store.folder / "demo" / CORRUPT).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(first.key)
    assert re.search(found, (aside[0] / DAMAGE_NOTE).read_text())
    # The rebuilt output is whole, and a third run reuses it.
    assert (Path(again.path) / "table.bin").read_bytes() == bytes(range(256)) * 64
    third = stage.run(store, {}, {})
    assert third.status == "cached" and third.repaired is None and len(calls) == 2


def test_an_unchanged_file_is_not_hashed_again_and_a_changed_one_is(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    stage = _stage(calls)
    first = stage.run(store, {}, {})
    hashed: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    assert stage.run(store, {}, {}).status == "cached"
    assert hashed == []  # verified as it was written
    table = Path(first.path) / "table.bin"
    table.write_bytes(table.read_bytes())  # same bytes, new modification time: hashed once, then trusted again
    assert stage.run(store, {}, {}).status == "cached" and hashed == ["table.bin"]
    assert stage.run(store, {}, {}).status == "cached" and hashed == ["table.bin"]


def test_damage_rehash_checks_every_file_whatever_the_record_says(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a").write_bytes(b"abc")
    files = {"a": {"sha256": "0" * 64, "bytes": 3}}
    integrity.record_verified(folder, ["a"])  # a record that (wrongly) vouches for it
    assert integrity.damage(folder, files) == []
    assert integrity.damage(folder, files, rehash=True) == [f"a: sha256 {integrity.sha256_file(folder / 'a')[:16]} where the manifest has {'0' * 16}"]
    assert json.loads(integrity.verified_record(folder).read_text())  # the record sits beside the output, not in it


def test_sealed_files_sharing_a_folder_are_hashed_only_when_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two seals in one folder (a features cache's train and validation files): each is trusted as
    written, a file changed since is hashed and a flipped byte named, and ``rehash`` hashes regardless."""
    for stem in ("train", "val"):
        for part in ("features", "labels"):
            (tmp_path / f"{stem}.{part}.npy").write_bytes(stem.encode() * 1000)
        integrity.seal(tmp_path / f"{stem}{integrity.SEAL}", [tmp_path / f"{stem}.{part}.npy" for part in ("features", "labels")])
    hashed: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    for _ in range(2):
        assert integrity.seal_damage(tmp_path / f"train{integrity.SEAL}") == []
        assert integrity.seal_damage(tmp_path / f"val{integrity.SEAL}") == []
    assert hashed == []
    _flip(tmp_path / "val.labels.npy")
    problems = integrity.seal_damage(tmp_path / f"val{integrity.SEAL}")
    assert hashed == ["val.labels.npy"] and len(problems) == 1 and problems[0].startswith("val.labels.npy: sha256 ")
    assert integrity.seal_damage(tmp_path / f"train{integrity.SEAL}") == [] and hashed == ["val.labels.npy"]
    hashed.clear()
    integrity.seal_damage(tmp_path / f"train{integrity.SEAL}", rehash=True)
    assert sorted(hashed) == ["train.features.npy", "train.labels.npy"]
