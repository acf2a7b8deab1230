"""Ctrl-C and SIGTERM are normal stops: sent to the ``imgflow run`` process alone or to its whole process
group (what a terminal, ``timeout`` and process supervisors do, Prefect's temporary server included),
training ends within a batch, the command within seconds with one line and no traceback, status
128 + the signal, nothing left running; the rerun resumes from the last committed epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgflow.lifetime import descendants

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc")]

ARGS = ["--dataset", "mnist5k", "--limit", "1500", "--epochs", "6", "--min-accuracy", "0"]


def _start(tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(tmp_path / "artifacts"), "--json", *ARGS],
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job has
    )


def _committed(tmp_path: Path) -> int:
    found = list((tmp_path / "artifacts" / "train").glob(".work-*/progress.json"))
    return json.loads(found[0].read_text())["epoch"] if found else 0


@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGINT, False)],
    ids=["sigint-group", "sigterm-group", "sigint-alone"],
)
def test_a_stop_signal_during_training_ends_the_run_cleanly_and_the_rerun_resumes(tmp_path: Path, signum: int, to_group: bool) -> None:
    run = _start(tmp_path)
    deadline = time.monotonic() + 300
    while _committed(tmp_path) < 2:
        assert run.poll() is None, f"the run ended before training:\n{run.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "training never committed two epochs"
        time.sleep(0.05)
    below = descendants([run.pid])
    assert below, "the run has its server, watcher and pools below it"
    (os.killpg if to_group else os.kill)(run.pid, signum)
    stdout, stderr = run.communicate(timeout=120)  # seconds, in fact: the timing is in the closing note, not asserted

    assert run.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]
    name = signal.Signals(signum).name
    assert f"imgflow: interrupted by {name}; a rerun resumes training from the checkpoint of epoch" in stderr.splitlines()[-1]
    assert "Finished in state Crashed" in stderr  # the flow run's last state reached its server
    time.sleep(2)
    assert not [pid for pid in below if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]

    if signum == signal.SIGINT and to_group:
        rerun = _start(tmp_path)
        out, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err[-3000:]
        train = json.loads(out.strip().splitlines()[-1])["stages"]["train"]
        assert train["status"] == "ran" and train["resumed_from_epoch"] >= 2
