"""The audit stage on real digits with planted faults: flipped labels are found, and test images copied
into train after a resize and a JPEG re-encoding are reported as cross-split near-duplicates."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imgflow.config import AuditConfig, CleanConfig, DownloadConfig
from imgflow.data.audit import ISSUES, PAIRS
from imgflow.data.sources import open_source, source_fingerprint
from imgflow.data.tables import open_parquet
from imgflow.results import StageResult
from imgflow.stages.audit import AUDIT
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD
from imgflow.store.artifacts import ArtifactStore

CLEANING = CleanConfig(image_size=(28, 28), channels=1)


def _clean(store: ArtifactStore, path: Path, rows: dict[str, list]) -> StageResult:
    pq.write_table(pa.table(rows), path)
    config = DownloadConfig(source=f"parquet:{path}")
    raw = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source)})
    return CLEAN.run(store, CLEANING, {"raw": raw})


def _splits(clean: StageResult) -> dict[str, str]:
    table = open_parquet(clean.file("records.parquet")).read(columns=["id", "split"])
    return dict(zip(table.column("id").to_pylist(), table.column("split").to_pylist(), strict=True))


def _copy(image: bytes) -> bytes:
    """The image enlarged to 36x36 and saved again as a JPEG (quality 75)."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("L").resize((36, 36), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits() -> tuple[list[str], list[bytes], np.ndarray]:
    records = list(open_source("sample:mnist5k").records())
    return [f"digit-{i:05d}" for i in range(len(records))], [r.image for r in records], np.array([int(r.label) for r in records])


@dataclasses.dataclass(frozen=True)
class Planted:
    """The sample's digits with 5% of their labels flipped and 100 test images copied after a resize
    and a JPEG re-encoding, cleaned and audited once for the tests of this module."""

    store: ArtifactStore
    table: Path
    noisy: np.ndarray
    flipped: set[int]
    copies: list[str]
    planted: list[tuple[str, str]]  # (test original, its copy in train): the first 50
    clean: StageResult
    splits: dict[str, str]
    audited: StageResult


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, digits: tuple[list[str], list[bytes], np.ndarray]) -> Planted:
    ids, images, labels = digits
    tmp_path = tmp_path_factory.mktemp("planted")
    store = ArtifactStore(tmp_path / "artifacts")
    rng = np.random.default_rng(7)
    flipped = set(rng.choice(len(ids), size=len(ids) // 20, replace=False).tolist())
    noisy = labels.copy()
    for i in flipped:
        noisy[i] = (labels[i] + rng.integers(1, 10)) % 10
    rows = {"id": ids, "image": images, "label": noisy.tolist()}
    splits = _splits(_clean(store, tmp_path / "flipped.parquet", rows))
    # 100 test images copied: the copies' own content decides their split, so about 70 land in train.
    originals = [i for i, record in enumerate(ids) if splits[record] == "test" and i not in flipped][:100]
    copies = [f"copy-of-{ids[i]}" for i in originals]
    rows = {
        "id": ids + copies,
        "image": images + [_copy(images[i]) for i in originals],
        "label": noisy.tolist() + [int(labels[i]) for i in originals],
    }
    clean = _clean(store, tmp_path / "copied.parquet", rows)
    splits = _splits(clean)
    pairs = [(ids[i], copy) for i, copy in zip(originals, copies, strict=True) if splits[copy] == "train"][:50]
    assert len(pairs) == 50
    audited = AUDIT.run(store, AuditConfig(), {"data": clean})
    return Planted(store, tmp_path / "copied.parquet", noisy, flipped, copies, pairs, clean, splits, audited)


def test_flipped_labels_and_test_images_copied_into_train_are_found(
    planted: Planted, digits: tuple[list[str], list[bytes], np.ndarray]
) -> None:
    ids, _, _ = digits
    flipped, noisy, splits, audited, planted_pairs = planted.flipped, planted.noisy, planted.splits, planted.audited, planted.planted
    info = audited.info
    found = json.loads(audited.file("audit.json").read_text())
    assert found["embeddings"].startswith("pixels") and info.records == len(ids) + len(planted.copies)
    issues = pq.read_table(audited.file(ISSUES)).to_pylist()
    pairs_found = pq.read_table(audited.file(PAIRS)).to_pylist()

    # At least 80% of the flipped training labels, at precision 0.5 or better among training records.
    suspects = {issue["id"] for issue in issues if issue["split"] == "train"}
    flipped_train = {ids[i] for i in flipped if splits[ids[i]] == "train"}
    assert len(suspects & flipped_train) >= 0.8 * len(flipped_train), (len(suspects & flipped_train), len(flipped_train))
    assert len(suspects & flipped_train) >= 0.5 * len(suspects), (len(suspects & flipped_train), len(suspects))
    issue = next(issue for issue in issues if issue["id"] in flipped_train)
    position = ids.index(issue["id"])
    assert issue["label"] == str(noisy[position]) and 0 <= issue["score"] < 1

    # At least 45 of the 50 copies are reported as near-duplicates of their originals, across splits.
    pairs = {frozenset((p["first_id"], p["second_id"])): p for p in pairs_found}
    reported = [pairs[frozenset(pair)] for pair in planted_pairs if frozenset(pair) in pairs]
    assert len(reported) >= 45 and all(p["cross_split"] for p in reported), len(reported)
    assert info.cross_split >= 45 and info.near_duplicates == len(pairs_found) == found["near_duplicates"]
    assert pairs_found[0]["cross_split"] and found["examples"]["near_duplicates"][0]["first"]["id"] == pairs_found[0]["first_id"]

    # The report shows them as pictures; the summary's examples are the top ones.
    page = audited.file("report.html").read_text()
    assert page.count("data:image/png;base64,") >= 40 and "Suspected label errors" in page and "Near-duplicates" in page
    assert info.examples["label_issues"][0] == issues[0] == found["examples"]["label_issues"][0]
    assert f"{info.label_issues} suspected label errors" in audited.file("report.md").read_text()

    # [audit] action = "exclude": the shards leave out each suspect and the held-out copy of each pair.
    from imgflow.config import build_run_config
    from imgflow.pipeline import audited_shards
    from imgflow.pipeline.context import Run
    from imgflow.stages.shard import EXCLUDED, SHARD

    cfg = build_run_config(f"parquet:{planted.table}", planted.store.folder, overrides={"audit": {"action": "exclude"}})
    run = Run(cfg, planted.store)
    reported = dataclasses.replace(run, cfg=dataclasses.replace(cfg, audit=cfg.audit.replace(action="report")))
    assert audited_shards(reported, {"audit": audited}, True) == cfg.shard
    shard_config = audited_shards(run, {"audit": audited}, True)
    left = dict(shard_config.exclude)
    originals_left = [original for original, _ in planted_pairs if original in left]
    assert len(originals_left) >= 45 and all(left[o].startswith("near-duplicate: of copy-of-") and left[o].endswith("in test") for o in originals_left)
    assert suspects <= set(left)
    shards = SHARD.run(planted.store, shard_config, {"clean": planted.clean})
    written = {split: entry.records for split, entry in shards.info.splits.items()}
    assert sum(written.values()) == len(ids) + len(planted.copies) - len(left)
    assert sum(shards.info.excluded.values()) == len(left) and set(shards.info.excluded) == {"suspected label error", "near-duplicate"}
    listed = pq.read_table(shards.file(EXCLUDED)).to_pylist()
    assert {row["id"]: row["reason"] for row in listed} == left
    from imgflow.results import shard_files
    from imgflow.training.inputs import load_arrays

    kept = set(load_arrays(shard_files(shards, "test"), (28, 28, 1)).ids)
    assert not kept & set(left) and len(kept) == written["test"]


def test_colour_images_are_judged_by_lite0s_imagenet_features_and_champion_only_where_there_is_one(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images of 48 pixels a side or more mean what EfficientNet-Lite0's ImageNet features say (not their
    pixels); asking for the champion's embeddings where there is none stops, saying what to write."""
    from imgflow.runtime.errors import ConfigError
    from imgflow.data.synthetic import synthetic_table

    monkeypatch.setenv("IMGFLOW_WEIGHTS", str(tmp_path / "weights"))
    table = synthetic_table(tmp_path / "stripes.parquet", 240, size=64, classes=4)
    config = DownloadConfig(source=f"parquet:{table}")
    raw = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source)})
    clean = CLEAN.run(store, CleanConfig(image_size=(64, 64), channels=3), {"raw": raw})
    audited = AUDIT.run(store, AuditConfig(), {"data": clean})
    assert audited.info.embeddings == "EfficientNet-Lite0's ImageNet features at 64 px (no champion, or it learned from this data)"
    assert audited.info.records == 240 and audited.info.label_issues <= 12  # the stripes' classes are clear to ImageNet features
    with pytest.raises(ConfigError, match='embeddings = "champion", but there is none to use: no champion'):
        AUDIT.run(store, AuditConfig(embeddings="champion"), {"data": clean})


def test_the_audits_suggested_labels_applied_by_clean_correct_the_flipped_ones(
    planted: Planted, tmp_path: Path, digits: tuple[list[str], list[bytes], np.ndarray]
) -> None:
    """The audit's labels.csv, named in [clean] labels, gives most flipped records their true label back;
    the file's content keys the clean stage (a copy elsewhere reuses it, one changed line does not)."""
    from imgflow.config import build_run_config
    from imgflow.config.labels import read_labels
    from imgflow.stages.audit import LABELS

    ids, _, labels = digits
    store, audited = planted.store, planted.audited
    suggestions = audited.file(LABELS)
    spec = tmp_path / "digits.toml"
    spec.write_text(f'source = "parquet:{planted.table}"\n[clean]\nimage_size = [28, 28]\nchannels = 1\nlabels = "{LABELS}"\n')
    (tmp_path / LABELS).write_bytes(suggestions.read_bytes())  # beside the spec: a relative path is its folder's
    cfg = build_run_config(str(spec), store.folder)
    assert cfg.clean.labels == str(tmp_path / LABELS) and len(cfg.clean.relabel) == audited.info.label_issues
    raw = DOWNLOAD.run(store, cfg.download, {"source": source_fingerprint(cfg.download.source)})
    corrected = CLEAN.run(store, cfg.clean, {"raw": raw})
    assert corrected.status == "ran" and corrected.key != planted.clean.key
    assert corrected.info.relabeled == audited.info.label_issues
    table_after = open_parquet(corrected.file("records.parquet")).read(columns=["id", "label"])
    after = dict(zip(table_after.column("id").to_pylist(), table_after.column("label").to_pylist(), strict=True))
    truth = {ids[i]: int(labels[i]) for i in planted.flipped if ids[i] in after}
    repaired = sum(after[record] == label for record, label in truth.items())
    assert repaired >= 0.75 * len(truth), (repaired, len(truth))  # most flips undone by accepting the suggestions
    # The content keys it, not the path: the same lines elsewhere reuse the output; a changed line does not.
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(suggestions.read_bytes())
    same = cfg.clean.replace(labels=str(moved))
    assert CLEAN.run(store, same, {"raw": raw}).status == "cached"
    moved.write_text("\n".join(suggestions.read_text().splitlines()[:-1]) + "\n")
    assert CLEAN.key(same.replace(relabel=read_labels(moved)), {"raw": raw}) != corrected.key


def test_a_labels_file_that_cannot_be_applied_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    from imgflow.config.labels import read_labels
    from imgflow.runtime.errors import ConfigError

    path = tmp_path / "labels.csv"
    with pytest.raises(ConfigError, match=r"cannot read .*labels\.csv"):
        read_labels(path)
    path.write_text("record,class\na,1\n")
    with pytest.raises(ConfigError, match="has no id or label column"):
        read_labels(path)
    path.write_text("id,label\na,1\nb,\n")
    with pytest.raises(ConfigError, match="line 3 has an empty label"):
        read_labels(path)
    path.write_text("id,label\na,1\nb,2\na,3\n")
    with pytest.raises(ConfigError, match="line 4 gives a the label '3', an earlier line '1'"):
        read_labels(path)
    path.write_text("id,label,given\nb,2,x\na,1,y\na,1,y\n")
    assert read_labels(path) == (("a", "1"), ("b", "2"))
