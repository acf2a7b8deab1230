"""What checking stored outputs before reuse costs: warm reruns of the sample with this checkout against
the same with another revision (default: the one before outputs were checked), side by side in one
invocation, and what ``imgflow verify`` (re-hashing everything) costs against the cold run.

Each revision gets its own worktree, artifact root and cold run; then their warm (all cached) reruns
alternate, ``--repeat`` of each, so both see the same machine state.

    python benchmarks/verify_overhead.py [--before REV] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import timed_json

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="090a2d5", help="the revision to compare with (default: before stored outputs were checked)")
    parser.add_argument("--repeat", type=int, default=7, help="warm reruns of each")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgflow-verify-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(work / "before"), args.before], check=True, capture_output=True)
    try:
        checkouts = {"before": work / "before", "checked": REPO}
        env = {**os.environ, "PREFECT_HOME": str(work / "prefect")}
        cold = {}
        for name, checkout in checkouts.items():
            cold[name], _ = timed_json(_command(work / name), env, cwd=str(checkout))
        warm: dict[str, list[float]] = {name: [] for name in checkouts}
        for _ in range(args.repeat):
            for name, checkout in checkouts.items():
                seconds, summary = timed_json(_command(work / name), env, cwd=str(checkout))
                assert all(entry["status"] == "cached" for entry in summary["stages"].values()), summary["stages"]
                warm[name].append(seconds)
        started = time.perf_counter()
        verified = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--artifacts", str(work / "checked")], capture_output=True, text=True)
        verify_seconds = time.perf_counter() - started
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "before")], check=False, capture_output=True)
    before, checked = statistics.median(warm["before"]), statistics.median(warm["checked"])
    print(f"\nthe sample, {args.repeat} warm reruns each (median wall s of the whole `imgflow run` command):")
    print(f"{'':<30} {'cold s':>8} {'warm s':>8}")
    print(f"{'before (' + args.before + ')':<30} {cold['before']:>8.1f} {before:>8.3f}")
    print(f"{'outputs checked on reuse':<30} {cold['checked']:>8.1f} {checked:>8.3f}")
    print(f"warm rerun, checked / before: {checked / before:.3f}")
    print(f"imgflow verify (re-hash everything): {verify_seconds:.2f} s, {verify_seconds / cold['checked']:.3f} of the cold run")


def _command(artifacts: Path) -> list[str]:
    """``imgflow run`` on the sample, as ``python -m``: the checkout it runs in comes first on its path,
    ahead of the editable install."""
    return [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(artifacts), "--json"]


if __name__ == "__main__":
    main()
