"""Image + text through ``imgflow run`` and ``imgflow predict``, as a user runs them, on data whose class
needs both: the image tells one bit, the caption the other (``imgflow.data.synthetic.captioned_folder``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgflow.data.synthetic import captioned_folder

IMGFLOW = [sys.executable, "-m", "flows.cli"]


def _imgflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([*IMGFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.usefixtures("session_server")
def test_a_model_with_text_beats_either_modality_alone_and_its_exports_agree(tmp_path: Path) -> None:
    """Slow by nature (30-50 s): the claim is about what a model trained to convergence (15 epochs) on
    images and captions learns; no other test trains such a model to share."""
    captioned_folder(tmp_path / "data", per_class=150)
    (tmp_path / "captioned.toml").write_text(
        'source = "folder:data"\n\n[options]\ntext_sidecar = ".txt"\n\n[train]\ntext = true\nepochs = 15\n\n[gate]\nmin_accuracy = 0.85\n'
    )
    artifacts = tmp_path / "artifacts"
    run = _imgflow("run", "--dataset", "captioned.toml", "--artifacts", str(artifacts), "--json", cwd=tmp_path)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    both, image_only, text_only = (summary["metrics"]["modalities"][k] for k in ("both", "image_only", "text_only"))
    # Each modality alone tells two of the four classes apart; together they tell all four.
    assert image_only < 0.7 and text_only < 0.7
    assert both >= 0.85 and both > max(image_only, text_only) + 0.2
    assert summary["decision"] == "promoted" and summary["metrics"]["accuracy"] == both

    version = artifacts / "models" / "captioned" / summary["version"]
    parity = json.loads((version / "parity.json").read_text())
    assert parity["max_abs_diff"] <= parity["tolerance"] and parity["same_top1"]
    assert (version / "vocabulary.txt").read_text().split()  # the ONNX model's token ids index it
    report = (version / "report.html").read_text()
    assert "Image and text" in report and f"{image_only:.4f}" in report and f"{text_only:.4f}" in report

    # A drift check reads the text too: the captions' lengths, and the champion's view through its text
    # tower. Its own data against itself (built directly: a run would leave out the champion it learned from).
    from imgflow.config import DriftConfig
    from imgflow.registry.versions import champion_result
    from imgflow.stages.drift import DRIFT
    from imgflow.store.artifacts import ArtifactStore

    clean = ArtifactStore(artifacts).lookup("clean", summary["stages"]["clean"]["key"])
    (tmp_path / "drift").mkdir()
    checked = DRIFT.build(tmp_path / "drift", DriftConfig(), {"data": clean, "reference": champion_result(artifacts, "captioned")})
    checks = {c["name"]: c for c in json.loads((tmp_path / "drift" / "drift.json").read_text())["checks"]}
    assert checked.compared and not checked.drifted, checked.note
    assert {"caption_tokens", "embeddings", "champion_accuracy"} <= set(checks) and checks["champion_accuracy"]["size"] < 0.05

    # Batch prediction reads the captions beside the images; without them it answers from the image.
    out = tmp_path / "predictions.parquet"
    _imgflow("predict", "--input", "data", "--output", str(out), "--artifacts", str(artifacts), "--text-sidecar", ".txt", cwd=tmp_path)

    def accuracy(path: Path) -> float:
        rows = pq.read_table(path).to_pylist()
        assert all(row["error"] is None for row in rows) and len(rows) == 600
        return float(np.mean([row["id"].split("/")[0] == row["label"] for row in rows]))

    from imgflow.serving.batch import PredictConfig, predict

    with_text = accuracy(out)
    predict(str(tmp_path / "data"), version, tmp_path / "tf.parquet", PredictConfig(backend="tensorflow"), {"text_sidecar": ".txt"})
    assert with_text >= 0.85 and abs(with_text - accuracy(tmp_path / "tf.parquet")) <= 1 / 600
    for txt in (tmp_path / "data").rglob("*.txt"):
        txt.unlink()
    predict(str(tmp_path / "data"), version, tmp_path / "no-text.parquet")
    assert accuracy(tmp_path / "no-text.parquet") < 0.7  # the same images without their captions
