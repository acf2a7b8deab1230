"""A regression hidden in one class is caught: a candidate trained where most of one class's training
labels were swapped into another is refused, the class named, though the tolerance on overall accuracy
would have let it through; the paired test's p-values and disagreements are in the summary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _digits(labels: list[str] | None = None) -> pa.Table:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [(image * (255 / 16)).round().astype(np.uint8) for image in digits.images]
    png = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png.append(buffer.getvalue())
    return pa.table({
        "id": [f"digit-{index}" for index in range(len(images))],
        "image": png,
        "label": labels if labels is not None else [str(label) for label in digits.target],
    })


def test_a_candidate_that_lost_one_class_is_refused_and_the_class_named(tmp_path: Path) -> None:
    from flows.train import train

    table = tmp_path / "lake" / "digits.parquet"
    table.parent.mkdir()
    pq.write_table(_digits(), table)
    spec = tmp_path / "digits_gate.toml"
    spec.write_text(
        f'source = "parquet:{table}"\n[clean]\nimage_size = [8, 8]\nchannels = 1\ntest_fraction = 0.25\n'
        "[train]\nepochs = 12\n[gate]\nmin_accuracy = 0.5\ntolerance = 0.2\n"
    )
    first = train(dataset=str(spec), artifacts=str(tmp_path / "artifacts"))
    assert first["decision"] == "promoted", first["reasons"]

    # The same images (so the same splits: a record's split is a hash of its pixels), but 70% of the
    # training split's 3s now labelled 5; the test split keeps its true labels.
    records = pq.read_table(Path(first["stages"]["clean"]["path"]) / "records.parquet", columns=["id", "split", "label_name"]).to_pylist()
    train_threes = [r["id"] for r in records if r["split"] == "train" and r["label_name"] == "3"]
    swapped = set(train_threes[: int(0.7 * len(train_threes))])
    original = _digits()
    labels = ["5" if record_id in swapped else label for record_id, label in zip(original["id"].to_pylist(), original["label"].to_pylist(), strict=True)]
    pq.write_table(_digits(labels), table)

    second = train(dataset=str(spec), artifacts=str(tmp_path / "artifacts"))
    assert second["metrics"]["champion_accuracy"] is not None
    assert second["metrics"]["accuracy"] >= second["metrics"]["champion_accuracy"] - 0.2  # within the tolerance
    assert second["decision"] == "rejected", second["reasons"]
    assert any(reason.startswith("class '3' recall fell from") for reason in second["reasons"]), second["reasons"]
    paired = second["metrics"]["paired"]
    assert paired["champion_only"] > paired["candidate_only"] and paired["p_worse"] < 0.05
