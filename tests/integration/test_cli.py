"""The imgflow command as a user runs it: a real process; the end-to-end run on Prefect's temporary
server, as on a laptop, the others on the session's server (``session_server``)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

IMGFLOW = [sys.executable, "-m", "flows.cli"]
STAGES = ("download", "clean", "drift", "audit", "shard", "train", "validate", "export")


def _imgflow(*args: str, cwd: Path, merged: bool = False) -> subprocess.CompletedProcess:
    """Run imgflow; with ``merged`` its stderr goes into stdout, as with 2>&1 in a shell."""
    return subprocess.run(
        [*IMGFLOW, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True, timeout=900, env=os.environ,
    )


def _bad_inputs(root: Path) -> None:
    for name in ("one-class/a/x.png", "junk/a/x.png", "junk/b/y.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("not an image")
    (root / "bad.parquet").write_text("id,image,label\n")


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
    ],
)
def test_bad_input_is_refused_before_prefect_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    from flows.cli import main

    _bad_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in ("run", "plan"):
        assert main([command, "--artifacts", str(tmp_path / "artifacts"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("imgflow: error:")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("session_server")  # not a test of the temporary server
def test_bad_data_found_inside_the_flow_exits_2_with_one_message_and_no_traceback(tmp_path: Path) -> None:
    # Found only once the flow runs: the clean stage decodes every file.
    _bad_inputs(tmp_path)
    result = _imgflow("run", "--artifacts", str(tmp_path / "artifacts"), "--dataset", "folder:junk", cwd=tmp_path)
    assert result.returncode == 2
    assert "has no decodable image among its 2 records, e.g. a/x.png: not_an_image" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("imgflow: error:")


@pytest.mark.slow
@pytest.mark.usefixtures("session_server")  # not a test of the temporary server
def test_a_test_split_too_small_is_refused_after_clean_before_any_training(tmp_path: Path) -> None:
    # Three records, none of them in the test split: validate used to fail with a raw ValueError after
    # training had run.
    import pyarrow as pa

    from imgflow.data.images import encode_png
    from tests.conftest import digit_like

    table = pa.table({"id": ["r0", "r1", "r2"], "image": [encode_png(digit_like(i)) for i in (0, 1, 3)], "label": ["a", "b", "a"]})
    pq.write_table(table, tmp_path / "tiny.parquet")
    artifacts = tmp_path / "artifacts"
    result = _imgflow("run", "--artifacts", str(artifacts), "--dataset", "parquet:tiny.parquet", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("imgflow: error: the test split of parquet:tiny.parquet would hold 0 record(s)")
    assert "train 3, val 0, test 0" in last and "test_fraction = 0.2" in last and "min_test_records" in last
    assert (artifacts / "clean").is_dir() and not (artifacts / "shard").exists() and not (artifacts / "train").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("session_server")  # not a test of the temporary server
def test_an_unexpected_error_is_one_paragraph_with_its_traceback_in_a_log(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    args = ("run", "--artifacts", str(artifacts), "--dataset", "sample:digits", "--limit", "300", "--until", "clean")
    env = {**os.environ, "IMGFLOW_FAILPOINT": "raise:clean"}  # a bug in clean, after it wrote its files
    failed = subprocess.run([*IMGFLOW, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stdout + failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("imgflow: internal error in stage clean (inputs: raw = ")
    assert "for sample:digits: RuntimeError: IMGFLOW_FAILPOINT=raise:clean: a simulated bug." in last
    log = Path(last.split("The full traceback is in ")[1].split(". No stage output")[0])
    assert log.parent == artifacts / "logs" and "Traceback" in log.read_text() and "in failpoint" in log.read_text()
    assert not [p for p in (artifacts / "clean").iterdir() if p.is_dir()]  # nothing half-written kept
    rerun = _imgflow(*args, "--json", cwd=tmp_path)
    assert rerun.returncode == 0
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["stages"]["download"]["status"] == "cached"


# imgflow in a fresh interpreter that must not import TensorFlow nor Prefect: ``plan``, and a ``run``
# with every stage cached. Returns the last line of its output, parsed.
UNORCHESTRATED = [sys.executable, "-c", "import sys\nfrom flows.cli import main\nrc = main(sys.argv[1:])\n"
                  "assert 'tensorflow' not in sys.modules and 'prefect' not in sys.modules\nsys.exit(rc)"]


def _unorchestrated(*args: str, cwd: Path) -> Any:
    result = subprocess.run([*UNORCHESTRATED, *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _plan(*args: str, cwd: Path) -> dict[str, str]:
    return {p["stage"]: p["action"] for p in _unorchestrated("plan", *args, cwd=cwd)}


@pytest.mark.slow
def test_run_json_ends_with_the_summary(tmp_path: Path) -> None:
    """Slow by nature (about 40 s): the end-to-end command as a user types it, with Prefect's temporary
    server, then its cached and refreshed reruns."""
    artifacts = tmp_path / "artifacts"
    small = ["--dataset", "digits", "--limit", "500", "--epochs", "2", "--min-accuracy", "0", "--artifacts", str(artifacts)]
    assert _plan(*small, cwd=tmp_path) == dict.fromkeys(STAGES, "run")
    result = _imgflow("run", *small, "--json", cwd=tmp_path, merged=True)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])  # the last line, stderr included
    assert summary["decision"] == "promoted"
    assert isinstance(summary["metrics"]["accuracy"], float)
    assert {s: summary["stages"][s]["status"] for s in summary["stages"]} == dict.fromkeys(STAGES, "ran")
    assert summary["stages"]["clean"]["records_in"] == 500
    assert {"kept", "quarantined"} <= set(summary["stages"]["clean"])
    assert Path(summary["artifacts"]["savedmodel"]).is_dir() and Path(summary["artifacts"]["onnx"]).is_file()
    assert "Traceback" not in result.stdout

    listing = _imgflow("models", "--artifacts", str(artifacts), cwd=tmp_path)
    assert listing.returncode == 0 and "* v1" in listing.stdout and "digits" in listing.stdout

    outputs = _imgflow("cache", "ls", "--artifacts", str(artifacts), cwd=tmp_path)
    assert outputs.returncode == 0
    rows = [line.split() for line in outputs.stdout.splitlines()]
    for stage, entry in summary["stages"].items():
        assert [stage, entry["key"]] in [row[:2] for row in rows] and "digits/v1" in outputs.stdout
    pruned = _imgflow("cache", "prune", "--artifacts", str(artifacts), "--keep-runs", "0", cwd=tmp_path)
    assert pruned.returncode == 0 and "removed 0 outputs" in pruned.stdout  # all of it is v1's lineage

    # What a rerun would do: reuse everything; with more epochs, train again and what follows it.
    assert _plan(*small, cwd=tmp_path) == dict.fromkeys(STAGES, "reuse")
    # A rerun with nothing to run concludes as the flow would, without Prefect or TensorFlow.
    again = _unorchestrated("run", *small, cwd=tmp_path)
    assert {s: e["status"] for s, e in again["stages"].items()} == dict.fromkeys(STAGES, "cached")
    assert (again["decision"], again["version"], again["metrics"]) == ("promoted", "v1", summary["metrics"])
    assert again["artifacts"] == summary["artifacts"]
    logged = [json.loads(line) for line in (artifacts / "runs.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and logged[0]["stages"] == logged[1]["stages"]
    more = [*small[:4], "--epochs", "3", *small[6:]]
    assert _plan(*more, cwd=tmp_path) == {"download": "reuse", "clean": "reuse", "drift": "reuse", "audit": "reuse", "shard": "reuse",
                                           "train": "run", "validate": "run", "export": "run"}
    assert _plan(*small, "--refresh", "shard", cwd=tmp_path) == {
        **dict.fromkeys(STAGES[:4], "reuse"), **dict.fromkeys(STAGES[4:], "run")}
    # --until stops there: the run trains nothing new, and says it stopped.
    until = _imgflow("run", *more, "--refresh", "shard", "--until", "shard", "--json", cwd=tmp_path)
    assert until.returncode == 0, until.stderr[-3000:]
    stopped = json.loads(until.stdout.strip().splitlines()[-1])
    assert stopped["decision"] == "stopped" and stopped["version"] is None
    assert {s: e["status"] for s, e in stopped["stages"].items()} == {
        **dict.fromkeys(STAGES[:2], "cached"), "drift": "skipped", "audit": "skipped", "shard": "ran", **dict.fromkeys(STAGES[5:], "skipped")}


@pytest.mark.slow
@pytest.mark.usefixtures("session_server")  # not a test of the temporary server
def test_dirty_folder_runs_end_to_end_and_accounts_for_every_file(tmp_path: Path) -> None:
    """Real digits in five formats and four modes, at three sizes, with broken files, a duplicate and a
    label conflict mixed in: every bad file is quarantined with its reason and a model is promoted."""
    from imgflow.data.synthetic import dirty_folder

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
