"""imgflow.data.audit's parts on real digits: looks, hashes, the neighbour search both ways, outliers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgflow.data import audit
from imgflow.data.images import decode
from imgflow.data.sources import open_source, sample_records


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    records = sample_records(open_source("sample:mnist5k").records(), 2000)
    return np.stack([decode(r.image, (28, 28), 1) for r in records]), np.array([int(r.label) for r in records])


def _rows(images: np.ndarray) -> np.ndarray:
    reducer = audit.Reducer()
    for start in range(0, len(images), 300):
        reducer.add(audit.look(images[start : start + 300]))
    return reducer.result()


def test_a_look_is_at_most_32_pixels_a_side_and_a_re_encoding_keeps_the_hash(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = digits
    assert audit.look(images[:3]).shape == (3, 28 * 28)
    large = np.repeat(np.repeat(images[:3], 3, axis=1), 3, axis=2)  # 84x84: each pixel three times
    assert audit.look(large).shape == (3, 28 * 28) and np.allclose(audit.look(large), audit.look(images[:3]))

    def jpeg(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buffer, format="JPEG", quality=95)
        return np.asarray(Image.open(buffer))[..., None]

    again = np.stack([jpeg(image) for image in images[:200]])
    assert audit.hamming(audit.dhash(images[:200]), audit.dhash(again)).max() <= 4
    assert np.median(audit.hamming(audit.dhash(images[:199]), audit.dhash(images[1:200]))) > 8  # other digits


def test_the_approximate_search_on_large_data_finds_what_the_exact_one_finds(
    digits: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = digits
    copies = np.concatenate([images, images[:20]])  # 20 exact copies: each one's nearest neighbour
    rows = _rows(copies)
    exact, exact_d = audit.nearest(rows)
    assert exact.shape == (len(copies), audit.NEIGHBOURS) and (exact != np.arange(len(copies))[:, None]).all()  # never itself
    assert all(exact_d[len(images) + i, 0] < 1e-4 and exact[len(images) + i, 0] == i for i in range(20))
    monkeypatch.setattr(audit, "EXACT_RECORDS", 100)  # the HNSW graph, as on data past 50,000 records
    graph, graph_d = audit.nearest(rows)
    assert np.array_equal(graph, audit.nearest(rows)[0])  # the same rows, the same answer
    assert all(graph[len(images) + i, 0] == i for i in range(20))
    overlap = np.mean([len(set(a) & set(b)) / audit.NEIGHBOURS for a, b in zip(exact, graph, strict=True)])
    assert overlap > 0.9, overlap
    # The votes agree with the labels about as often either way.
    exact_vote = audit.vote(exact, exact_d, np.concatenate([labels, labels[:20]]), 10).argmax(axis=1)
    graph_vote = audit.vote(graph, graph_d, np.concatenate([labels, labels[:20]]), 10).argmax(axis=1)
    assert np.mean(exact_vote == graph_vote) > 0.97


def test_blank_noise_and_off_domain_images_are_outliers_among_digits(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = digits
    rng = np.random.default_rng(0)
    stripes = np.tile((np.arange(28) % 4 < 2).astype(np.uint8)[None, :, None] * 255, (28, 1, 1))
    odd = np.stack([np.zeros((28, 28, 1), np.uint8), rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), stripes])
    both = np.concatenate([images, odd])
    reducer = audit.Reducer()
    for start in range(0, len(both), 300):
        reducer.add(audit.look(both[start : start + 300]))
    _, distances = audit.nearest(reducer.result())
    found = dict(audit.outliers(audit.blank(both), reducer.unexplained(), audit.outlier_scores(distances)))
    n = len(images)
    assert found[n] == "blank" and found[n + 1] == found[n + 2] == "its look is unlike the data's", found
    assert len(found) < 0.01 * n  # and few digits


def test_label_issues_need_two_records_of_each_class() -> None:
    labels = np.array([0] * 10 + [1])
    probabilities = np.tile([0.5, 0.5], (11, 1))
    assert audit.label_issues(labels, probabilities) == []
