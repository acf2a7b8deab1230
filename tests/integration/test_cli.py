"""The imgflow command as a user runs it: a real process, Prefect's temporary server included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

IMGFLOW = [sys.executable, "-m", "imgflow.cli"]


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
    ],
)
def test_bad_input_exits_2_with_one_message_and_no_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    result = _imgflow("run", "--artifacts", str(tmp_path), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("imgflow: error:")


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
