"""The imgflow command as a user runs it: a real process, Prefect's temporary server included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

IMGFLOW = [sys.executable, "-m", "flows.cli"]


def _imgflow(*args: str, cwd: Path, merged: bool = False) -> subprocess.CompletedProcess:
    """Run imgflow; with ``merged`` its stderr goes into stdout, as with 2>&1 in a shell."""
    return subprocess.run(
        [*IMGFLOW, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True, timeout=900, env=os.environ,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--dataset", "ftp:x"], "unknown dataset source 'ftp:x'"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--dataset", "missing.toml"], "dataset spec file missing.toml does not exist"),
        (["--dataset", "folder:no/such/dir"], "dataset folder no/such/dir does not exist"),
        (["--dataset", "folder:one-class"], "has 1 class folder(s) with files (a)"),
        (["--dataset", "parquet:bad.parquet"], "bad.parquet in Parquet source parquet:bad.parquet is not a readable Parquet file"),
        (["--dataset", f"archive:one-class/a/x.png#sha256={'0' * 64}"], "fails its checksum"),
        (["--dataset", "tfds:no_such_dataset_xyz"], "unknown TFDS dataset 'no_such_dataset_xyz'"),
        # Found only once the flow runs: the clean stage decodes every file.
        (["--dataset", "folder:junk"], "has no decodable image among its 2 records, e.g. a/x.png: not_an_image"),
    ],
)
def test_bad_input_exits_2_with_one_message_and_no_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    for name in ("one-class/a/x.png", "junk/a/x.png", "junk/b/y.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("not an image")
    (tmp_path / "bad.parquet").write_text("id,image,label\n")
    result = _imgflow("run", "--artifacts", str(tmp_path / "artifacts"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("imgflow: error:")


@pytest.mark.slow
def test_run_json_ends_with_the_summary(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = _imgflow("run", "--dataset", "digits", "--limit", "500", "--epochs", "2", "--min-accuracy", "0",
                      "--artifacts", str(artifacts), "--json", cwd=tmp_path, merged=True)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # the last line, stderr included
    assert summary["decision"] == "promoted"
    assert isinstance(summary["metrics"]["accuracy"], float)
    assert {s: summary["stages"][s]["status"] for s in summary["stages"]} == dict.fromkeys(
        ("download", "clean", "shard", "train", "validate", "export"), "ran"
    )
    assert summary["stages"]["clean"]["records_in"] == 500
    assert {"kept", "quarantined"} <= set(summary["stages"]["clean"])
    assert Path(summary["artifacts"]["savedmodel"]).is_dir() and Path(summary["artifacts"]["onnx"]).is_file()
    assert "Traceback" not in result.stdout

    listing = _imgflow("models", "--artifacts", str(artifacts), cwd=tmp_path)
    assert listing.returncode == 0 and "* v1" in listing.stdout and "digits" in listing.stdout

    outputs = _imgflow("cache", "ls", "--artifacts", str(artifacts), cwd=tmp_path)
    assert outputs.returncode == 0
    for stage, entry in summary["stages"].items():
        assert f"{stage:<9} {entry['key']}" in outputs.stdout and "digits/v1" in outputs.stdout
    pruned = _imgflow("cache", "prune", "--artifacts", str(artifacts), "--keep-runs", "0", cwd=tmp_path)
    assert pruned.returncode == 0 and "removed 0 outputs" in pruned.stdout  # all of it is v1's lineage


@pytest.mark.slow
def test_dirty_folder_runs_end_to_end_and_accounts_for_every_file(tmp_path: Path) -> None:
    """Real digits in five formats and four modes, at three sizes, with broken files, a duplicate and a
    label conflict mixed in: every bad file is quarantined with its reason and a model is promoted."""
    from imgflow.testing import dirty_folder

    corpus = dirty_folder(tmp_path / "digits", count=2000)
    spec = tmp_path / "digits.toml"
    spec.write_text(
        f'source = "folder:{corpus.root}"\n[clean]\nimage_size = [28, 28]\nchannels = 1\ntest_fraction = 0.2\n'
        "[train]\nepochs = 5\nclass_weights = true\n"
    )
    result = _imgflow("run", "--dataset", str(spec), "--artifacts", str(tmp_path / "artifacts"),
                      "--min-accuracy", "0.9", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    clean = summary["stages"]["clean"]
    assert clean["records_in"] == corpus.files == clean["kept"] + clean["quarantined"]
    assert clean["quarantine_reasons"] == dict(corpus.expected)
    assert set(clean["class_balance"]) == {str(d) for d in range(10)}
    assert clean["source_images"]["modes"].keys() >= {"L", "RGB", "RGBA", "P"}
    assert summary["decision"] == "promoted", summary["reasons"]
    quarantined = pq.read_table(Path(clean["path"]) / "quarantine.parquet").to_pylist()
    by_name = {row["id"].split("/")[-1]: row["reason"] for row in quarantined}
    assert by_name["00000-empty.png"] == "empty" and by_name["00000-cut.png"] == "truncated"
    assert by_name["00000-notes.jpg"] == "not_an_image"
