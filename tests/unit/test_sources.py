import io
import tempfile

import numpy as np
import pytest
from PIL import Image

from imgflow.runtime.errors import SourceError
from imgflow.data.sources import RawRecord, open_source, sample_records


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_mnist5k_has_5000_real_digits() -> None:
    source = open_source("sample:mnist5k")
    records = list(source.records())
    assert len(records) == 5000
    assert sorted({r.label for r in records}) == [str(d) for d in range(10)]
    assert len({r.id for r in records}) == 5000
    first = _pixels(records[0].image)
    assert first.shape == (28, 28) and first.dtype == np.uint8 and first.max() > 200


def test_digits_are_scaled_to_0_255() -> None:
    records = list(open_source("sample:digits").records())
    assert len(records) == 1797
    assert max(_pixels(r.image).max() for r in records[:50]) == 255


def test_fingerprint_is_stable_and_differs_per_source() -> None:
    assert open_source("sample:mnist5k").fingerprint() == open_source("sample:mnist5k").fingerprint()
    assert open_source("sample:mnist5k").fingerprint() != open_source("sample:digits").fingerprint()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sample:cifar", "unknown sample 'cifar'"),
        ("ftp:somewhere", "unknown dataset source 'ftp:somewhere'"),
        ("mnist", "unknown dataset source 'mnist'"),
        ("tfds:", "needs a dataset name"),
        ("tfds:no_such_dataset_xyz", "unknown TFDS dataset 'no_such_dataset_xyz'"),
        ("tfds:mnist?", r"cannot open TFDS dataset tfds:mnist\?: Parsing builder name string mnist\? failed\.$"),
    ],
)
def test_bad_specs_fail_clearly(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_tfds_catalog_dataset_offline_with_mock_data() -> None:
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6, data_dir=tempfile.mkdtemp()):
        source = open_source("tfds:mnist")
        assert source.fingerprint() == open_source("tfds:mnist").fingerprint()
        assert source.fingerprint() != open_source("tfds:fashion_mnist").fingerprint()
        records = list(source.records())
    assert len(records) == 12  # train and test, 6 each
    assert {r.id.split("/")[1] for r in records} == {"train", "test"}
    assert all(r.label in [str(d) for d in range(10)] for r in records)
    assert _pixels(records[0].image).shape == (28, 28)


def test_tfds_dataset_without_image_feature_is_refused() -> None:
    with pytest.raises(SourceError, match="not an image-classification dataset"):
        open_source("tfds:imdb_reviews")


def _records(n: int) -> list[RawRecord]:
    return [RawRecord(id=f"r{i:04d}", image=bytes([i % 256]), label=str(i // (n // 2))) for i in range(n)]


def test_sample_is_spread_fixed_and_in_source_order() -> None:
    records = _records(1000)  # sorted by label, like mnist5k
    chosen = sample_records(records, 100)
    assert len(chosen) == 100
    assert chosen == sample_records(list(reversed(records)), 100)[::-1]  # chosen by id, not position
    assert [r.id for r in chosen] == sorted(r.id for r in chosen)
    assert 30 <= sum(r.label == "0" for r in chosen) <= 70  # both halves represented
    assert sample_records(records, 5000) == records


def test_tfds_text_feature_offline_with_mock_data() -> None:
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4, data_dir=tempfile.mkdtemp()):
        plain = open_source("tfds:cats_vs_dogs")
        source = open_source("tfds:cats_vs_dogs", {"text_feature": "image/filename"})
        assert not plain.has_text and source.has_text and source.fingerprint() != plain.fingerprint()
        records = list(source.records())
    assert records and all(isinstance(r.text, bytes) and r.text.strip() for r in records)
    with pytest.raises(SourceError, match="has no text feature named 'caption'"):
        open_source("tfds:cats_vs_dogs", {"text_feature": "caption"})
