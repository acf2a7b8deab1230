"""Orchestration overhead: the whole pipeline, cold, against a plain Keras script training the same model.

Both run as fresh processes, one after the other, in one invocation of this script (wall time of each
process, imports and Prefect's temporary server included), so the ratio compares like with like on
the same machine at the same moment:

    python benchmarks/orchestration_overhead.py [--epochs N] [--repeat N]

Then a warm rerun of the same pipeline (every stage cached) shows what a scheduled run with nothing new
costs. With --repeat, the three runs alternate N times and the medians are reported: these machines
are noisy, and alternating spreads the noise over both sides.

"Cold" is the artifact cache: every pair gets an empty artifact root. Prefect's own database is
created once, before the pairs, as on any machine after its first run (creating it, timed on its own
and printed, is a one-off cost of a machine's first run, not a per-run overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import timed_json

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, help="training epochs for both (default: the dataset's)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the pair this many times; medians are reported")
    args = parser.parse_args()
    epochs = [] if args.epochs is None else ["--epochs", str(args.epochs)]

    colds, plains, warms = [], [], []
    home = tempfile.TemporaryDirectory(prefix="imgflow-bench-prefect-")
    env = {**os.environ, "PREFECT_HOME": home.name, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PREFECT_API_URL", None)  # Prefect's temporary server, as `imgflow run` starts it on a laptop
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True, capture_output=True)
    print(f"creating Prefect's database (once per machine): {time.perf_counter() - started:.1f}s", flush=True)
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="imgflow-bench-") as tmp:
            pipeline = [sys.executable, "-m", "flows.cli", "run", "--artifacts", str(Path(tmp) / "artifacts"), "--json", *epochs]
            cold, cold_summary = timed_json(pipeline, env)
            plain, plain_result = timed_json([sys.executable, str(HERE / "plain_keras.py"), *epochs[1:]], env)
            warm, warm_summary = timed_json(pipeline, env)
            stage_seconds = {
                stage: json.loads((Path(entry["path"]) / "manifest.json").read_text())["seconds"]
                for stage, entry in cold_summary["stages"].items()
                if entry.get("path")
            }
        colds.append((cold, cold_summary["metrics"]["accuracy"]))
        plains.append((plain, plain_result["accuracy"]))
        warms.append(warm)
        print(f"pair {len(colds)}: cold {cold:.1f}s, plain {plain:.1f}s, warm {warm:.1f}s; "
              "cold stages: " + ", ".join(f"{stage} {s:.1f}" for stage, s in stage_seconds.items()), flush=True)
        statuses = set(entry["status"] for entry in warm_summary["stages"].values())
        if statuses != {"cached"}:
            sys.exit(f"the warm rerun was not all cached: {warm_summary['stages']}")

    cold, plain, warm = (statistics.median(v) for v in ([c for c, _ in colds], [p for p, _ in plains], warms))
    print()
    print(f"{'median of ' + str(args.repeat):<34}{'wall s':>8}{'test acc':>10}")
    print(f"{'imgflow run, cold (all stages)':<34}{cold:>8.1f}{statistics.median(a for _, a in colds):>10.4f}")
    print(f"{'plain Keras script, same model':<34}{plain:>8.1f}{statistics.median(a for _, a in plains):>10.4f}")
    print(f"{'imgflow run, warm (all cached)':<34}{warm:>8.1f}")
    print(f"orchestration overhead: cold pipeline / plain Keras = {cold / plain:.2f}x")
    print(f"warm rerun / cold run = {warm / cold:.3f}")
    home.cleanup()


if __name__ == "__main__":
    main()
