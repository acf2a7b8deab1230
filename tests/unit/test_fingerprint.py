from dataclasses import dataclass
from pathlib import Path

from imgflow.store.fingerprint import sha256_bytes, sha256_file, stable_hash


@dataclass(frozen=True)
class Config:
    a: int
    b: tuple[int, ...]


def test_stable_hash_ignores_dict_order_and_sees_values() -> None:
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_stable_hash_of_dataclass_equals_its_fields() -> None:
    assert stable_hash(Config(1, (2, 3))) == stable_hash({"a": 1, "b": [2, 3]})
    assert stable_hash(Config(1, (2, 3))) != stable_hash(Config(1, (3, 2)))


def test_file_hash_matches_bytes_hash(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == sha256_bytes(b"x" * 3_000_000)
