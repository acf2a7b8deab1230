"""``imgflow tune`` as a user runs it: trials on the validation split, a SIGKILL, a resume that keeps
the finished trials, and the best configuration through the gate against the default's model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

IMGFLOW = [sys.executable, "-m", "flows.cli"]
SPEC = """source = "sample:digits"
limit = 600
[clean]
image_size = [8, 8]
channels = 1
[train]
epochs = 6
learning_rate = 0.01
translate = 0.0
rotate = 0.0
zoom = 0.0
width = 8
[gate]
min_accuracy = 0.3
[search]
learning_rate = {low = 2e-3, high = 5e-2, log = true}
width = [4, 8, 16]
"""


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _imgflow(*args: str, cwd: Path) -> dict:
    done = subprocess.run([*IMGFLOW, *args, "--json"], cwd=cwd, capture_output=True, text=True, timeout=900, env=os.environ)
    assert done.returncode == 0, done.stderr[-3000:]
    return _last_json(done.stdout)


@pytest.mark.slow
@pytest.mark.usefixtures("session_server")
def test_tune_resumes_after_a_kill_keeping_finished_trials_and_promotes_through_the_gate(tmp_path: Path) -> None:
    """Slow by nature (40-50 s): real trials train, one study is killed mid-trial and resumed, and the
    winner goes through the gate against the default run's champion of the same spec."""
    (tmp_path / "digits-small.toml").write_text(SPEC)
    artifacts = tmp_path / "artifacts"
    common = ("--dataset", "digits-small.toml", "--artifacts", str(artifacts))
    default = _imgflow("run", *common, cwd=tmp_path)
    assert default["decision"] == "promoted"

    # Killed once a trial beyond trial 0 has trained (trial 0 is the default configuration: its training
    # is the default run's, reused).
    killed = subprocess.Popen([*IMGFLOW, "tune", *common, "--trials", "4"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(list(artifacts.glob("train/*/manifest.json"))) < 2:
        assert killed.poll() is None, killed.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the tuner never trained a trial"
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    trained_before = {p: p.stat().st_mtime_ns for p in artifacts.glob("train/*/manifest.json")}

    summary = _imgflow("tune", *common, "--trials", "4", cwd=tmp_path)
    trials = summary["tune"]["trials"]
    assert sum(t["state"] in ("complete", "pruned") for t in trials) == 4
    assert trials[0]["state"] == "complete" and trials[0]["width"] == 8 and trials[0]["learning_rate"] == pytest.approx(0.01)
    # Nothing trained before the kill was trained again: same outputs, untouched.
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in trained_before.items())
    best = summary["tune"]["best"]
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in trials if t["val_accuracy"] is not None)
    assert best["val_accuracy"] >= trials[0]["val_accuracy"]  # trial 0 is the default configuration
    released = summary["tune"]["released"]
    if released["trial"] == 0:  # no trial beat the default by more than the noise: the default's model, reused
        assert summary["metrics"]["accuracy"] == default["metrics"]["accuracy"] and "the spec's own configuration" in released["why"]
    else:
        assert released["trial"] == best["number"]
    # The best configuration went through validate and the gate, on the test split, against the default's model.
    champion = json.loads((artifacts / "models" / "digits-small" / "champion.json").read_text())
    assert champion["accuracy"] >= default["metrics"]["accuracy"] - 0.005  # the gate's tolerance
    assert summary["decision"] in ("promoted", "rejected") and summary["metrics"]["test_records"] == default["metrics"]["test_records"]
    assert Path(summary["tune"]["plot"]).stat().st_size > 0 and "| trial | state |" in Path(summary["tune"]["report"]).read_text()
