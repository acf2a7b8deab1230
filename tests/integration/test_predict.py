"""Batch prediction and the registry commands on a model trained by the real flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import built_once

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "session_server")]
IMGFLOW = [sys.executable, "-m", "flows.cli"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The full mnist5k sample, trained briefly and promoted as v1; with 1,000 of its held-out test
    digits written as PNG files under held/<label>/, plus two files that are not images. Built once
    for every test worker (``built_once``): the tests only read it, and write under their own tmp_path."""
    return built_once(tmp_path_factory, "predict-trained", _train_and_hold_out)


def _train_and_hold_out(tmp: Path) -> dict:
    from flows.train import train

    summary = train(dataset="mnist5k", artifacts=str(tmp / "artifacts"), epochs=4, min_accuracy=0.5)
    assert summary["decision"] == "promoted"
    clean = pq.read_table(Path(summary["stages"]["clean"]["path"]) / "records.parquet").to_pylist()
    held = [r for r in clean if r["split"] == "test"][:1000]
    assert len(held) == 1000
    for record in held:
        folder = tmp / "held" / record["label_name"]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.frombuffer(record["pixels"], np.uint8).reshape(28, 28)
        Image.fromarray(pixels).save(folder / f"{record['id'].replace('/', '_')}.png")
    (tmp / "held" / "3" / "broken.png").write_bytes((tmp / "held" / "3").iterdir().__next__().read_bytes()[:60])
    (tmp / "held" / "notes.txt").write_text("not an image")
    return summary


def test_predicting_held_out_digits_matches_folder_names_and_an_independent_onnx_run(trained, tmp_path: Path) -> None:
    import onnxruntime as ort

    tmp, summary = trained
    output = tmp_path / "predictions.parquet"
    result = subprocess.run(
        [*IMGFLOW, "predict", "--input", f"folder:{tmp / 'held'}", "--artifacts", str(tmp / "artifacts"),
         "--output", str(output), "--json"],
        capture_output=True, text=True, timeout=600, env=os.environ,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["rows"], report["predicted"], report["errors"]) == (1002, 1000, 2)
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == 1002 and {r["version"] for r in rows} == {"v1"}

    errors = {r["id"]: r["error"] for r in rows if r["error"]}
    assert errors == {"3/broken.png": errors["3/broken.png"], "notes.txt": "not_an_image: not a recognised image format"}
    assert errors["3/broken.png"].startswith(("truncated", "undecodable"))

    good = [r for r in rows if not r["error"]]
    accuracy = np.mean([r["label"] == r["id"].split("/")[0] for r in good])
    assert abs(accuracy - summary["metrics"]["accuracy"]) <= 0.02, (accuracy, summary["metrics"]["accuracy"])
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["label"] == r["label"] for r in good)

    session = ort.InferenceSession(str(tmp / "artifacts/models/mnist5k/v1/model.onnx"))
    pixels = np.stack([np.asarray(Image.open(tmp / "held" / r["id"]))[..., None] for r in good]).astype(np.float32)
    independent = session.run(None, {"pixels": pixels})[0]
    assert [r["label"] for r in good] == [str(i) for i in independent.argmax(1)]
    assert np.allclose([r["probability"] for r in good], independent.max(1), atol=1e-6)


def _int8(tmp: Path) -> dict:
    """What export recorded of v1's int8 variant."""
    return json.loads((tmp / "artifacts/models/mnist5k/v1/card.json").read_text())["export"]["int8"]


def test_tensorflow_and_int8_backends_agree_with_onnx(trained, tmp_path: Path) -> None:
    """The int8 variant is exported wherever its accuracy held on this machine's CPU (its weights in 7
    bits hold it on CPUs without VNNI too: tests/unit/stages/test_export.py); where it did not, asking
    for it is refused, saying why."""
    from flows.predict import predict
    from imgflow.runtime.errors import ConfigError

    tmp, _ = trained
    int8 = _int8(tmp)
    sample = tmp_path / "sample"
    for digit in ("1", "7"):
        shutil.copytree(tmp / "held" / digit, sample / digit)
    labels = {}
    for backend in ("onnx", "tensorflow", "onnx-int8") if int8["exported"] else ("onnx", "tensorflow"):
        out = tmp_path / f"{backend}.parquet"
        summary = predict(input=str(sample), output=str(out), artifacts=str(tmp / "artifacts"), backend=backend)
        assert summary["backend"] == backend and summary["errors"] == 0
        labels[backend] = [r["label"] for r in pq.read_table(out).to_pylist()]
    assert labels["tensorflow"] == labels["onnx"]
    assert int8["reduce_range"] and int8["checked_on"]
    if int8["exported"]:
        assert int8["float_accuracy"] - int8["accuracy"] <= int8["max_drop"]
        assert np.mean(np.array(labels["onnx-int8"]) == np.array(labels["onnx"])) >= 0.98
    else:
        assert int8["float_accuracy"] - int8["accuracy"] > int8["max_drop"]
        with pytest.raises(ConfigError, match="its int8 variant lost accuracy and was not exported"):
            predict(input=str(sample), output=str(tmp_path / "int8.parquet"), artifacts=str(tmp / "artifacts"), backend="onnx-int8")


def test_parquet_input_with_a_bad_row(trained, tmp_path: Path) -> None:
    from flows.predict import predict

    tmp, _ = trained
    files = sorted((tmp / "held" / "5").iterdir())[:4]
    table = pa.table({"id": [f.name for f in files] + ["empty"], "image": [f.read_bytes() for f in files] + [b""]})
    pq.write_table(table, tmp_path / "batch.parquet")
    summary = predict(input=f"parquet:{tmp_path / 'batch.parquet'}", output=str(tmp_path / "out.parquet"),
                      artifacts=str(tmp / "artifacts"), model="v1", top_k=1)
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in rows] == table["id"].to_pylist() and summary["rows"] == 5
    assert rows[-1]["error"] == "empty: zero bytes" and rows[-1]["label"] is None
    assert all(len(r["top_k"]) == 1 for r in rows[:-1])


def test_registry_commands_and_the_model_report(trained) -> None:
    tmp, _ = trained
    artifacts = str(tmp / "artifacts")

    def imgflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*IMGFLOW, *args], capture_output=True, text=True, timeout=600)  # a ceiling, for slow machines

    listing = imgflow("models", "ls", "--artifacts", artifacts)
    v1 = next(line for line in listing.stdout.splitlines() if "* v1" in line)
    assert listing.returncode == 0 and ("yes" if _int8(tmp)["exported"] else "no") in v1.split()  # its int8 column
    shown = imgflow("models", "--artifacts", artifacts, "show", "v1")
    assert shown.returncode == 0 and "# Model card: mnist5k v1" in shown.stdout and "-> v1 by" in shown.stdout
    refused = imgflow("models", "rollback", "--artifacts", artifacts, "--reason", "test")
    assert refused.returncode == 2 and "no earlier champion to roll back to" in refused.stderr
    missing = imgflow("models", "promote", "v9", "--artifacts", artifacts, "--reason", "test")
    assert missing.returncode == 2 and "has no version 'v9'" in missing.stderr

    report = (tmp / "artifacts/models/mnist5k/v1/report.html").read_text()
    assert "mnist5k v1" in report and "Hardest misclassified" in report and "data:image/png;base64," in report
    assert " src=\"http" not in report and "<link" not in report  # self-contained: nothing to fetch


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_model_report_renders_in_headless_chromium(trained, tmp_path: Path) -> None:
    tmp, _ = trained
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
         f"--screenshot={shot}", (tmp / "artifacts/models/mnist5k/v1/report.html").as_uri()],
        capture_output=True, timeout=600, check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    # Drawn, not blank: the green PROMOTED badge, the dark digit thumbnails and plenty of distinct colours.
    assert ((pixels[..., 1] > 120) & (pixels[..., 0] < 60) & (pixels[..., 2] < 110)).sum() > 200
    assert (pixels.sum(axis=2) < 30).sum() > 10_000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


def test_parquet_input_with_its_own_column_names_from_a_flag_or_a_dataset_spec(trained, tmp_path: Path) -> None:
    from flows.predict import predict

    tmp, _ = trained
    files = sorted((tmp / "held" / "7").iterdir())[:5]
    table = pa.table({"name": [f.name for f in files], "picture": [f.read_bytes() for f in files]})
    pq.write_table(table, tmp_path / "renamed.parquet")
    artifacts = str(tmp / "artifacts")

    # The flow, with the columns named by parameter.
    predict(input=f"parquet:{tmp_path / 'renamed.parquet'}", output=str(tmp_path / "flow.parquet"), artifacts=artifacts,
            image_column="picture", id_column="name")
    by_flow = pq.read_table(tmp_path / "flow.parquet").to_pylist()
    assert [r["id"] for r in by_flow] == table["name"].to_pylist() and not any(r["error"] for r in by_flow)

    # The command line, with the columns from a dataset spec's [options] (as the training table had them).
    spec = tmp_path / "renamed.toml"
    spec.write_text('source = "parquet:elsewhere"\n[options]\nimage_column = "picture"\nid_column = "name"\n')
    env = os.environ
    command = [*IMGFLOW, "predict", "--input", f"parquet:{tmp_path / 'renamed.parquet'}", "--artifacts", artifacts]
    result = subprocess.run([*command, "--dataset", str(spec), "--output", str(tmp_path / "cli.parquet"), "--json"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert pq.read_table(tmp_path / "cli.parquet").to_pylist() == by_flow

    # Without them, the missing column is named before anything runs.
    refused = subprocess.run([*command, "--output", str(tmp_path / "no.parquet")], capture_output=True, text=True,
                             timeout=300, env=env)
    assert refused.returncode == 2 and "image" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "no.parquet").exists()


def test_verify_finds_damage_anywhere_and_a_swapped_model_is_refused_never_served(trained, tmp_path: Path) -> None:
    tmp, _ = trained
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tmp / "artifacts", artifacts)

    def imgflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*IMGFLOW, *args], capture_output=True, text=True, timeout=600, env=os.environ)

    clean = imgflow("verify", "--artifacts", str(artifacts), "--json")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert json.loads(clean.stdout)["damaged"] == [] and json.loads(clean.stdout)["checked"] >= 7

    shard = next((artifacts / "shard").glob("*/train-*.tfrecord"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    version = artifacts / "models" / "mnist5k" / "v1"
    shutil.copy(version / "model.onnx", tmp_path / "original.onnx")
    (version / "model.onnx").write_bytes((version / "model.int8.onnx").read_bytes() if (version / "model.int8.onnx").is_file()
                                        else (version / "model.onnx").read_bytes() + b"\0")  # another model in its place

    found = imgflow("verify", "--artifacts", str(artifacts), "--json")
    assert found.returncode == 1
    damaged = {item["what"].split()[0] + ":" + item["problems"][0].split(":")[0] for item in json.loads(found.stdout)["damaged"]}
    assert damaged == {f"shard:{shard.name}", "model:model.onnx"}, found.stdout

    served = imgflow("predict", "--input", f"folder:{tmp / 'held'}", "--artifacts", str(artifacts), "--output", str(tmp_path / "p.parquet"))
    assert served.returncode == 2 and not (tmp_path / "p.parquet").exists()
    assert "model mnist5k v1" in served.stderr and "model.onnx: " in served.stderr and "Traceback" not in served.stderr
    promoted = imgflow("models", "promote", "v1", "--reason", "test", "--artifacts", str(artifacts))
    assert promoted.returncode == 2 and "is not the model that was registered" in promoted.stderr

    repaired = imgflow("verify", "--artifacts", str(artifacts), "--repair")
    assert repaired.returncode == 1 and "the next run rebuilds it" in repaired.stdout
    assert not shard.exists() and list((artifacts / "shard" / ".corrupt").glob(f"{shard.parent.name}-*/{shard.name}"))
    shutil.copy(tmp_path / "original.onnx", version / "model.onnx")  # restored from a backup: served again
    assert imgflow("verify", "--artifacts", str(artifacts)).returncode == 0
