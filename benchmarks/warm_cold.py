"""What a rerun with nothing new costs: a warm (all cached) run against a cold one, side by side.

Measured twice in one invocation: with Prefect's temporary server (what `imgflow run` does with no
server configured) and against a running `prefect server start` on 127.0.0.1. Each mode uses a fresh
artifact root: a cold run, a warm rerun (must be all cached), then a run with one more epoch (must
rerun train, validate and export only).

    python benchmarks/warm_cold.py [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _timing import timed_json

from flows.server import prefect_server


def _run(artifacts: Path, epochs: int, env: dict[str, str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(artifacts), "--epochs", str(epochs), "--json"]
    return timed_json(command, env)


def _statuses(summary: dict) -> str:
    return ", ".join(f"{stage} {entry['status']}" for stage, entry in summary["stages"].items())


def measure(label: str, tmp: Path, epochs: int, env: dict[str, str]) -> float:
    artifacts = tmp / "artifacts"
    cold, _ = _run(artifacts, epochs, env)
    warm, warm_summary = _run(artifacts, epochs, env)
    more, more_summary = _run(artifacts, epochs + 1, env)
    print(f"{label}: cold {cold:.1f}s, warm {warm:.1f}s, warm/cold = {warm / cold:.3f}", flush=True)
    print(f"  warm: {_statuses(warm_summary)}")
    print(f"  --epochs {epochs + 1} ({more:.1f}s): {_statuses(more_summary)}")
    return warm / cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="the bundled sample's recipe (10): the gate promotes, so export runs too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgflow-warm-cold-") as tmp_name:
        tmp = Path(tmp_name)
        base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        base.pop("PREFECT_API_URL", None)
        (tmp / "temporary").mkdir()
        temporary = measure(
            "temporary server", tmp / "temporary", args.epochs, {**base, "PREFECT_HOME": str(tmp / "temporary" / "prefect")}
        )
        (tmp / "server").mkdir()
        home = tmp / "server" / "prefect"
        home.mkdir()
        with prefect_server(home) as server:
            running = measure(
                "prefect server start", tmp / "server", args.epochs, {**base, "PREFECT_HOME": str(home), "PREFECT_API_URL": server.api_url}
            )
    print(f"warm/cold ratio: temporary server {temporary:.3f}, running server {running:.3f} (goal: <= 0.2)")


if __name__ == "__main__":
    main()
