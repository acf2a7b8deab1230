"""A full disk and a read-only artifact root are the machine's fault, not a bug: the command ends with one
paragraph naming what happened and what to do, status 2, no traceback, and nothing half-written, so
the rerun on a fixed machine reuses what finished. Each needs a real small file system (a tmpfs):
skipped, saying why, where one cannot be mounted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's tmpfs")]

ARGS = ["--dataset", "mnist5k", "--limit", "2000", "--until", "shard", "--json"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: too small for the sample's 2,000 digits (1.6 MB of pixels)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _run(artifacts: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(artifacts), *ARGS],
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}, capture_output=True, text=True, timeout=600,
    )


def test_a_full_disk_is_named_as_the_machines_fault_and_the_rerun_after_freeing_space_completes(small_disk: Path, tmp_path: Path) -> None:
    first = _run(small_disk / "artifacts", tmp_path)
    assert first.returncode == 2, first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("imgflow: error: the machine stopped the run") and "the disk is full (ENOSPC" in last, last
    assert "Traceback" not in first.stderr and "bug in imgflow" not in first.stderr
    assert "details: " in last and Path(last.rsplit("details: ", 1)[1].rstrip(")")).is_file()  # a log where one could be written
    assert not list((small_disk / "artifacts").glob("*/*/manifest.json.tmp*"))

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = _run(small_disk / "artifacts", tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["stages"]["shard"]["status"] == "ran"


def test_a_read_only_root_is_named_as_the_machines_fault(small_disk: Path, tmp_path: Path) -> None:
    (small_disk / "artifacts").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    found = _run(small_disk / "artifacts", tmp_path)
    assert found.returncode == 2, found.stderr[-3000:]
    last = found.stderr.strip().splitlines()[-1]
    assert "the file system is read-only (EROFS" in last and "point --artifacts at a writable folder" in last, last
    assert "Traceback" not in found.stderr
