"""How batch prediction reads its input (the run itself is tested on a trained model in integration)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.errors import ConfigError, SourceError
from imgflow.predict import input_images, input_options
from tests.conftest import digit_like, encode


def test_options_come_from_a_dataset_spec_then_the_flags(tmp_path: Path) -> None:
    spec = tmp_path / "pets.toml"
    spec.write_text('source = "parquet:x"\n[options]\nimage_column = "picture"\nid_column = "name"\n')
    assert input_options() == {}
    assert input_options(str(spec)) == {"image_column": "picture", "id_column": "name"}
    assert input_options(str(spec), image_column="img", id_column=None) == {"image_column": "img", "id_column": "name"}
    with pytest.raises(ConfigError, match="unknown prediction input option"):
        input_options(label_column="y")


def test_a_table_is_read_by_its_configured_columns_and_a_missing_one_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"name": ["x", "y"], "picture": [encode(digit_like(1)), b""]}), tmp_path / "t.parquet")
    total, images = input_images(f"parquet:{tmp_path / 't.parquet'}", {"image_column": "picture", "id_column": "name"})
    assert [record_id for record_id, _, _ in images] == ["x", "y"]
    with pytest.raises(SourceError, match="image"):
        input_images(f"parquet:{tmp_path / 't.parquet'}")


def test_a_folder_is_read_recursively_in_name_order(tmp_path: Path) -> None:
    for name in ("b/2.png", "a/1.png", ".hidden/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encode(digit_like(0)))
    total, images = input_images(str(tmp_path))
    assert total == 2 and [record_id for record_id, _, _ in images] == ["a/1.png", "b/2.png"]
    with pytest.raises(SourceError, match="does not exist"):
        input_images(f"folder:{tmp_path / 'nope'}")
