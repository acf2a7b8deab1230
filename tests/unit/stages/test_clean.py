"""clean: every record decoded and checked, bad ones quarantined with a reason, stable splits."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgflow.config import CleanConfig
from imgflow.runtime.errors import SourceError
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import SCHEMA
from imgflow.store.artifacts import ArtifactStore, StageResult
from tests.conftest import claimed_png, digit_like, encode


def _raw(store: ArtifactStore, rows: list[tuple[str, bytes, str]]) -> StageResult:
    folder = store.folder / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"id": [r[0] for r in rows], "image": [r[1] for r in rows], "label": [r[2] for r in rows]}, schema=SCHEMA
    )
    pq.write_table(table, folder / "records.parquet")
    return StageResult(
        stage="download", key="k", path=str(folder), fingerprint=str(hash(tuple(rows))), status="ran",
        info={"records": len(rows), "source": "test:corpus"},
    )


def _corpus() -> list[tuple[str, bytes, str]]:
    rows = [(f"good/{i:03d}", encode(digit_like(i)), str(i % 3)) for i in range(60)]
    png = encode(digit_like(1000))
    rows += [
        ("bad/empty", b"", "0"),
        ("bad/truncated", png[: len(png) // 2], "1"),
        ("bad/text", b"this is not an image at all", "2"),
        ("dup/copy", encode(digit_like(5)), "2"),  # same pixels and label as good/005
        ("dup/bmp", encode(digit_like(7), "BMP"), "1"),  # same pixels, other format
        ("conflict/a", encode(digit_like(2000)), "0"),
        ("conflict/b", encode(digit_like(2000)), "1"),
        ("mode/rgba", encode(digit_like(3000), mode="RGBA"), "0"),
        ("mode/palette", encode(digit_like(3001), "GIF", mode="P"), "1"),
        ("size/big", encode(digit_like(3002, size=40)), "2"),
        ("bad/bomb", claimed_png(100_000, 100_000), "0"),  # stopped whole runs with DecompressionBombError
    ]
    return rows


def test_clean_accounts_for_every_record(store: ArtifactStore) -> None:
    rows = _corpus()
    result = CLEAN.run(store, CleanConfig(image_size=(16, 16), channels=1), {"raw": _raw(store, rows)})
    info = result.info
    assert info.records_in == len(rows) == info.kept + info.quarantined
    quarantine = pq.read_table(result.file("quarantine.parquet")).to_pylist()
    reasons = {row["id"]: row["reason"] for row in quarantine}
    assert reasons == {
        "bad/empty": "empty",
        "bad/truncated": "truncated",
        "bad/text": "not_an_image",
        "dup/copy": "duplicate",
        "dup/bmp": "duplicate",
        "conflict/a": "label_conflict",
        "conflict/b": "label_conflict",
        "bad/bomb": "too_large",
    }
    assert all(row["detail"] for row in quarantine)
    truncated = next(r for r in quarantine if r["id"] == "bad/truncated")["image"]
    assert truncated == rows[61][1] and len(truncated) < len(encode(digit_like(1000)))  # the original, cut bytes
    assert info.quarantine_reasons == {"duplicate": 2, "label_conflict": 2, "empty": 1, "truncated": 1, "not_an_image": 1, "too_large": 1}

    kept = pq.read_table(result.file("records.parquet")).to_pylist()
    assert {r["id"] for r in kept} >= {"mode/rgba", "mode/palette", "size/big", "good/005", "good/007"}
    assert all(len(r["pixels"]) == 16 * 16 for r in kept)
    assert info.class_names == ["0", "1", "2"]
    assert all(info.class_names[r["label"]] == r["label_name"] for r in kept)
    report = Path(result.path, "report.md").read_text()
    assert "| truncated | 1 |" in report and "bad/truncated" in report


def test_kept_pixels_are_the_decoded_image(store: ArtifactStore) -> None:
    rows = [(f"r{i}", encode(digit_like(i)), str(i % 2)) for i in range(10)]
    result = CLEAN.run(store, CleanConfig(), {"raw": _raw(store, rows)})
    kept = pq.read_table(result.file("records.parquet")).to_pylist()
    assert result.info.image_shape == [16, 16, 1]  # inferred: most common size, all grayscale
    first = next(r for r in kept if r["id"] == "r0")
    assert np.array_equal(np.frombuffer(first["pixels"], np.uint8).reshape(16, 16), digit_like(0))


def test_color_images_infer_three_channels_and_transparency_becomes_white(store: ArtifactStore) -> None:
    transparent = np.zeros((16, 16, 4), np.uint8)
    rows = [("clear", encode(transparent), "a"), ("gray", encode(digit_like(1)), "b")]
    result = CLEAN.run(store, CleanConfig(test_fraction=0, val_fraction=0), {"raw": _raw(store, rows)})
    assert result.info.image_shape == [16, 16, 3]
    kept = {r["id"]: r for r in pq.read_table(result.file("records.parquet")).to_pylist()}
    assert set(np.frombuffer(kept["clear"]["pixels"], np.uint8)) == {255}


def test_unknown_label_is_quarantined(store: ArtifactStore) -> None:
    rows = [(f"r{i}", encode(digit_like(i)), "abc"[i % 3]) for i in range(9)]
    result = CLEAN.run(store, CleanConfig(class_names=("a", "b")), {"raw": _raw(store, rows)})
    assert result.info.quarantine_reasons == {"unknown_label": 3}


def test_no_decodable_image_fails_naming_the_source(store: ArtifactStore) -> None:
    raw = _raw(store, [("a", b"", "0"), ("b", b"junk", "1")])
    with pytest.raises(SourceError, match="test:corpus has no decodable image among its 2 records"):
        CLEAN.run(store, CleanConfig(), {"raw": raw})


def test_one_class_fails(store: ArtifactStore) -> None:
    raw = _raw(store, [(f"r{i}", encode(digit_like(i)), "only") for i in range(5)])
    with pytest.raises(SourceError, match="fewer than two classes"):
        CLEAN.run(store, CleanConfig(), {"raw": raw})


def test_splits_follow_fractions_and_never_share_an_image(store: ArtifactStore) -> None:
    rows = [(f"r{i}", encode(digit_like(i)), str(i % 2)) for i in range(400)]
    result = CLEAN.run(store, CleanConfig(test_fraction=0.25, val_fraction=0.1), {"raw": _raw(store, rows)})
    kept = pq.read_table(result.file("records.parquet")).to_pylist()
    counts = result.info.splits
    assert 60 <= counts["test"] <= 140 and 15 <= counts["val"] <= 70
    test_hashes = {r["sha256"] for r in kept if r["split"] == "test"}
    assert not test_hashes & {r["sha256"] for r in kept if r["split"] == "train"}


@given(
    old=st.lists(st.tuples(st.integers(0, 60), st.sampled_from("ab")), min_size=2, max_size=25),
    new=st.lists(st.tuples(st.integers(0, 60), st.sampled_from("ab")), max_size=25),
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_adding_records_never_moves_existing_ones(tmp_path_factory: pytest.TempPathFactory, old, new) -> None:
    """Clean the old records, then old + new: every old record kept both times keeps its split, and an
    old record only leaves the kept set when a new one duplicates it under another label."""
    store = ArtifactStore(tmp_path_factory.mktemp("split"))
    rows_old = [(f"old/{i}", encode(digit_like(seed)), label) for i, (seed, label) in enumerate(old)]
    rows_new = [(f"new/{i}", encode(digit_like(seed)), label) for i, (seed, label) in enumerate(new)]
    config = CleanConfig(test_fraction=0.3, val_fraction=0.2, class_names=("a", "b"))

    def splits(rows: list[tuple[str, bytes, str]]) -> dict[str, str]:
        try:
            result = CLEAN.run(store, config, {"raw": _raw(store, rows)}, force=True)
        except SourceError:  # fewer than two classes left: nothing to compare
            return {}
        return {r["id"]: r["split"] for r in pq.read_table(result.file("records.parquet")).to_pylist()}

    before, after = splits(rows_old), splits(rows_old + rows_new)
    conflicted = {seed for seed, label in new if any(s == seed and l != label for s, l in old)}
    for record_id, split in before.items():
        if record_id in after:
            assert after[record_id] == split
        elif after:
            assert old[int(record_id.split("/")[1])][0] in conflicted


def test_unlabeled_records_are_quarantined(store: ArtifactStore) -> None:
    rows = [(f"r{i}", encode(digit_like(i)), "ab"[i % 2]) for i in range(6)] + [("stray.png", encode(digit_like(99)), "")]
    result = CLEAN.run(store, CleanConfig(), {"raw": _raw(store, rows)})
    assert result.info.quarantine_reasons == {"unlabeled": 1} and result.info.class_names == ["a", "b"]


def _raw_with_text(store: ArtifactStore, rows: list[tuple[str, bytes, str, bytes | None]], name: str = "raw") -> StageResult:
    from imgflow.stages.download import TEXT_SCHEMA

    folder = store.folder / name
    folder.mkdir(parents=True, exist_ok=True)
    columns = dict(zip(TEXT_SCHEMA.names, map(list, zip(*rows, strict=True)), strict=True))
    pq.write_table(pa.table(columns, schema=TEXT_SCHEMA), folder / "records.parquet")
    return StageResult(
        stage="download", key=name, path=str(folder), fingerprint=str(hash(tuple(rows))), status="ran",
        info={"records": len(rows), "source": "test:captions"},
    )


def test_text_is_normalized_bad_text_quarantined_and_missing_text_counted(store: ArtifactStore) -> None:
    rows = [(f"r{i:02d}", encode(digit_like(i)), "ab"[i % 2], f"  Photo   of a {'cat' if i % 2 else 'dog'} {i} ".encode()) for i in range(30)]
    rows += [
        ("no-text", encode(digit_like(100)), "a", None),
        ("empty-text", encode(digit_like(101)), "b", b"   "),
        ("latin1", encode(digit_like(102)), "a", "caf\u00e9".encode("latin-1")),
        ("nfd", encode(digit_like(103)), "b", "e\u0301te\u0301".encode()),
        ("same-image-other-caption", encode(digit_like(3)), "b", b"another caption"),  # r03's pixels, new text
        ("same-image-same-caption", encode(digit_like(4)), "a", b"Photo of a dog 4"),  # r04 again, once normalized
    ]
    result = CLEAN.run(store, CleanConfig(image_size=(16, 16), channels=1), {"raw": _raw_with_text(store, rows)})
    info = result.info
    assert info.records_in == len(rows) == info.kept + info.quarantined
    quarantine = {row["id"]: (row["reason"], row["detail"]) for row in pq.read_table(result.file("quarantine.parquet")).to_pylist()}
    assert quarantine["latin1"] == ("bad_text", "text is not valid UTF-8: byte 0xe9 at offset 3 (unexpected end of data)")
    assert quarantine["same-image-same-caption"][0] == "duplicate"
    assert set(quarantine) == {"latin1", "same-image-same-caption"}
    kept = {r["id"]: r for r in pq.read_table(result.file("records.parquet")).to_pylist()}
    assert kept["r01"]["text"] == "Photo of a cat 1" and kept["nfd"]["text"] == "\u00e9t\u00e9"
    assert kept["no-text"]["text"] == kept["empty-text"]["text"] == ""
    # A record's content covers its caption, its split only its pixels: a new caption moves nothing.
    same, other = kept["r03"], kept["same-image-other-caption"]
    assert same["sha256"] != other["sha256"] and same["split"] == other["split"]
    assert info.text is not None and info.text.empty == 2
    assert info.text.tokens is not None and info.text.tokens.max == 5
    assert info.text.top_tokens["a"][:3] == [("a", 15), ("dog", 15), ("of", 15)]
    report = Path(result.path, "report.md").read_text()
    assert "## Text" in report and "records without text: 2 of" in report and "| b | a (" in report


def test_a_caption_change_changes_the_data_fingerprint_but_no_split(tmp_path_factory: pytest.TempPathFactory) -> None:
    rows = [(f"r{i:02d}", encode(digit_like(i)), "ab"[i % 2], f"caption {i}".encode()) for i in range(40)]
    changed = [*rows[:-1], (rows[-1][0], rows[-1][1], rows[-1][2], b"a new caption")]
    results = []
    for name, table in (("before", rows), ("after", changed)):
        store = ArtifactStore(tmp_path_factory.mktemp(name))
        results.append(CLEAN.run(store, CleanConfig(image_size=(16, 16), channels=1), {"raw": _raw_with_text(store, table)}))
    before, after = (pq.read_table(r.file("records.parquet")).to_pylist() for r in results)
    assert results[0].info.data_fingerprint != results[1].info.data_fingerprint
    assert [r["split"] for r in before] == [r["split"] for r in after]
