"""The audit's cost in a cold run, and what it found:

    python benchmarks/audit.py [--dataset clipart] [--epochs N] [--budget 15m]

Runs ``imgflow run`` on an empty artifact root (Prefect's temporary server, as on a laptop), then
prints the run's seconds, the audit stage's own seconds (its manifest's), the share the audit adds to
the rest of the run (the stages run one after another, so the run without it would take the rest),
and the audit's counts and top findings. ``make clipart`` builds the clip-art table first. The audit's
memory at 200,000 records is ``benchmarks/scale.py``'s (its stages include the audit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _timing import timed_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="clipart")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the dataset's)")
    parser.add_argument("--budget", help="a time budget instead of epochs, e.g. 15m")
    parser.add_argument("--artifacts", type=Path, help="an empty artifact root to keep (default: a temporary one)")
    args = parser.parse_args()
    more = [*(["--epochs", str(args.epochs)] if args.epochs else []), *(["--budget", args.budget] if args.budget else [])]
    with tempfile.TemporaryDirectory(prefix="imgflow-audit-") as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("PREFECT_API_URL", None)
        root = args.artifacts or Path(tmp) / "a"
        if root.exists() and any(root.iterdir()):
            sys.exit(f"{root} is not empty: a cold run needs an empty artifact root")
        command = [sys.executable, "-m", "flows.cli", "run", "--dataset", args.dataset, "--artifacts", str(root), "--json", *more]
        seconds, summary = timed_json(command, env)
        stage = summary["stages"]["audit"]
        audit_seconds = json.loads((Path(stage["path"]) / "manifest.json").read_text())["seconds"]
        found = summary["audit"]
        print(f"{args.dataset}: cold run {seconds:.1f} s (the flow's own {summary['seconds']:.1f} s), {summary['decision']}, "
              f"test accuracy {summary['metrics']['accuracy']}")
        print(f"audit: {audit_seconds:.1f} s: adds {audit_seconds / (seconds - audit_seconds):.1%} to the rest of the run")
        entry = next(iter(found["checks"].values()))
        print(f"  {entry['records']} records, embeddings: {entry['embeddings']}")
        print(f"  {found['label_issues']} suspected label errors, {found['near_duplicates']} near-duplicate pairs "
              f"({found['cross_split']} across splits), {found['outliers']} outliers")
        for kind, examples in entry["examples"].items():
            for example in examples:
                print(f"  {kind}: {json.dumps(example, sort_keys=True)}")
        print(f"  report: {entry['report']}" + ("" if args.artifacts else " (removed with the temporary root: --artifacts keeps it)"))


if __name__ == "__main__":
    main()
