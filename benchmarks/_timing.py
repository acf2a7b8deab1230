"""Shared by the benchmarks: time a command that ends its output with one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def timed_json(command: list[str], env: dict[str, str], cwd: str | None = None) -> tuple[float, dict]:
    """Wall seconds of ``command`` (run in ``cwd``) and the JSON object on the last line of its stdout;
    exit on failure."""
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=cwd)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return seconds, json.loads(result.stdout.strip().splitlines()[-1])
