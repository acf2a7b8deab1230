"""Scale: the pipeline's stages over growing datasets, with time per image and peak memory per stage.

    python benchmarks/scale.py [--sizes 25000,50000,100000,200000] [--image-size 64] [--train]
                               [--repeat 3] [--min-seconds 20] [--speedup-at N] [--workdir DIR] [--keep]

For each size N it generates a Parquet table of N synthetic RGB images (``imgflow.data.synthetic.
synthetic_table``: PNG files of class-dependent stripes with noise) and runs each stage (download,
clean, shard; with --train also train for one epoch, validate and export) in a fresh process of its
own (the audit included: it runs between clean and shard), the earlier stages already in the store,
printing the stage's wall time, images/s, microseconds
per image and the process's peak RSS (``VmHWM``: the largest resident size the stage's process
reached; clean's and shard's worker processes hold one chunk each and are not added). Memory should not grow with
N and time per image should stay flat: the last lines give the spread of each across sizes. At
``--speedup-at`` (default: the largest size, where the pool's start-up weighs least) it also cleans
the same table with one worker process and with all of them (``IMGFLOW_WORKERS``), side by side: the
speed-up of all cores over one. Before each measurement the page cache is flushed to disk (``sync``),
so that what the previous step wrote is not written back during the next one's clock (on this VM
that moved a stage's time per image by up to 50%). Each stage runs ``--repeat`` times (rebuilt each
time), in rounds over the stages (and the one-worker clean), so that the machine's slow spells fall
on all of them alike: the table shows the best and the median time, the number of runs, and the
median peak RSS; the spread across sizes is given for the best and for the median times. A stage
whose runs at a size add up to less than ``--min-seconds`` runs again until they do (at most 12
runs), as ``timeit`` measures a short statement more often: the same download of 25,000 images took
36 to 71 us per image over eight runs on this VM (median 49), while eight runs at 200,000 images
stayed within 46-55, so three runs left the smallest sizes' figures, best or median, to chance.
A size's data (about 45 KB per image: table, raw, clean and shards) is removed before the next size,
so each size runs with the page cache to itself (9 GB at 200,000 images); keeping every size's data
(17 GB) would evict the largest size's from the cache and time the disk instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DATA_STAGES = ("download", "clean", "audit", "shard")
MODEL_STAGES = ("train", "validate", "export")


def run_stage(stage: str, dataset: str, artifacts: str, force: bool) -> None:
    """In a child process: run the pipeline up to ``stage`` (the earlier stages are in the store, so
    they are lookups) and print how long ``stage`` itself took. The worker processes' server starts
    first, as ``imgflow run`` starts it, so that it imports while this process does."""
    from imgflow.runtime.parallel import start_forkserver

    start_forkserver()
    from imgflow.data.sources import source_fingerprint
    from imgflow.pipeline import CHAMPION, PIPELINE, REFERENCE, SOURCE
    from imgflow.pipeline.context import open_run

    run = open_run(dataset, artifacts, partitions=False, epochs=1, min_accuracy=0.0)
    cfg, store = run.cfg, run.store
    results: dict = {}
    external = {SOURCE: source_fingerprint(cfg.download.source)}
    for step in PIPELINE.run_steps(partitioned=False):
        inputs = PIPELINE.inputs(step, results, {**external, CHAMPION: None, REFERENCE: None})  # no champion
        started = time.perf_counter()
        results[step.name] = step.stage.run(store, cfg.of(step.config), inputs, force=force and step.name == stage)
        if step.name == stage:
            seconds = time.perf_counter() - started
            print(json.dumps({"seconds": seconds, "status": results[step.name].status, "peak_rss_mb": _peak_rss_mb()}), flush=True)
            return


def _peak_rss_mb() -> float:
    """This process's peak resident size since it started its program (``VmHWM``; ``ru_maxrss`` would
    also count the memory of the process it was forked from, before ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(stage: str, dataset: str, artifacts: Path, force: bool, workers: int | None = None) -> dict:
    """Run one stage in a fresh process, after flushing earlier writes to disk: its time and peak RSS.
    ``force`` rebuilds it (it is in the store already)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if workers is not None:
        env["IMGFLOW_WORKERS"] = str(workers)
    command = [sys.executable, __file__, "--run-stage", stage, "--dataset", dataset, "--artifacts", str(artifacts)]
    os.sync()
    result = subprocess.run([*command, *(["--force"] if force else [])], capture_output=True, env=env, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


_MAX_RUNS = 12


def _wants_more(done: list[dict], min_seconds: float) -> bool:
    return len(done) < _MAX_RUNS and sum(run["seconds"] for run in done) < min_seconds


def _spread(values: list[float]) -> float:
    return max(values) / min(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="25000,50000,100000,200000", help="dataset sizes, comma-separated")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train", action="store_true", help="also train (one epoch), validate and export")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement: the best time and the median peak RSS are reported")
    parser.add_argument("--min-seconds", type=float, default=20.0,
                        help=f"more runs of a stage whose runs add up to less than this at a size (at most {_MAX_RUNS})")
    parser.add_argument("--speedup-at", type=int, help="the size at which to compare 1 and all workers (default: the largest)")
    parser.add_argument("--workdir", type=Path, help="where tables and artifacts go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (by default removed at the end)")
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    parser.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        run_stage(args.run_stage, args.dataset, args.artifacts, args.force)
        return

    from imgflow.data.synthetic import synthetic_table
    from imgflow.runtime.parallel import worker_count

    sizes = [int(n) for n in args.sizes.split(",")]
    speedup_at = args.speedup_at or max(sizes)
    stages = DATA_STAGES + (MODEL_STAGES if args.train else ())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="imgflow-scale-"))
    print(f"{args.image_size}x{args.image_size} RGB PNG images, {worker_count()} worker processes, work folder {work}")
    try:
        # A warm-up on 1,000 images, not reported: the first measured size would otherwise also pay for
        # a cold start (modules and shared libraries read from disk), which no later size pays.
        warm = synthetic_table(work / "warm-up" / "table.parquet", 1000, args.image_size)
        for stage in DATA_STAGES:
            measure(stage, f"parquet:{warm}", work / "warm-up" / "artifacts", force=False)
        shutil.rmtree(work / "warm-up")
        runs: dict[tuple[str, int], list[dict]] = {(stage, size): [] for stage in stages for size in sizes}
        one_worker: list[float] = []
        for size in sizes:
            started = time.perf_counter()
            table = synthetic_table(work / f"n{size}" / "table.parquet", size, args.image_size)
            print(f"{size:>8}  {'(generate':<9} {time.perf_counter() - started:>8.1f})", file=sys.stderr, flush=True)
            dataset, artifacts = f"parquet:{table}", work / f"n{size}" / "artifacts"
            # Rounds over the stages (and, at --speedup-at, clean on one worker next to clean on all),
            # so that the machine's slow spells fall on all of them alike.
            for attempt in range(args.repeat):
                for stage in stages:
                    runs[stage, size].append(measure(stage, dataset, artifacts, force=attempt > 0))
                if size == speedup_at:
                    one_worker.append(measure("clean", dataset, artifacts, force=True, workers=1)["seconds"])
            # Then more rounds of the stages whose runs are short, until each has --min-seconds in all:
            # a one-second run is at the mercy of one slow (or fast) second of the VM.
            while short := [stage for stage in stages if _wants_more(runs[stage, size], args.min_seconds)]:
                for stage in short:
                    runs[stage, size].append(measure(stage, dataset, artifacts, force=True))
            if not args.keep:  # the next size's data then has the page cache to itself, as this one had
                shutil.rmtree(work / f"n{size}")
        print(f"{'images':>8}  {'stage':<9} {'seconds':>8} {'images/s':>9} {'us/image':>9} {'median':>7} {'runs':>5} {'peak RSS MB':>12}")
        for size in sizes:
            for stage in stages:
                times = [run["seconds"] for run in runs[stage, size]]
                seconds = min(times)
                rss = statistics.median(run["peak_rss_mb"] for run in runs[stage, size])
                print(f"{size:>8}  {stage:<9} {seconds:>8.2f} {size / seconds:>9.0f} {1e6 * seconds / size:>9.1f} "
                      f"{1e6 * statistics.median(times) / size:>7.1f} {len(times):>5} {rss:>12.0f}")
        print("\nacross sizes (largest / smallest):")
        for stage in stages:
            best = [min(run["seconds"] for run in runs[stage, n]) / n for n in sizes]
            median = [statistics.median(run["seconds"] for run in runs[stage, n]) / n for n in sizes]
            rss = [statistics.median(run["peak_rss_mb"] for run in runs[stage, n]) for n in sizes]
            print(f"  {stage:<9} time per image {_spread(best):.2f} (best), {_spread(median):.2f} (median)"
                  f"   peak RSS {_spread(rss):.2f}   (RSS {min(rss):.0f}-{max(rss):.0f} MB)")
        if one_worker:
            one, every = min(one_worker), min(run["seconds"] for run in runs["clean", speedup_at])
            print(f"\nclean of {speedup_at} images: 1 worker {one:.1f} s, {worker_count()} workers {every:.1f} s: "
                  f"speed-up {one / every:.2f}x (best of {args.repeat} each, interleaved)")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
