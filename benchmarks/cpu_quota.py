"""The sample's training speed on this machine's own CPUs and inside a CPU quota, side by side.

An ordinary machine is a slow VM or a container with a CPU limit: the process sees every core but gets
a fraction of them. This trains the default model of ``imgflow run`` (same data pipeline, augmentation,
batch and precision) for a fixed number of steps, in a fresh process each time:

1. on the machine's own CPUs;
2. inside a cgroup quota of ``--cpus`` (default 0.4) cores, with the pools sized to the quota (what
   imgflow does: ``imgflow.runtime.cpus``);
3. inside the same quota with TensorFlow's pools sized to the visible cores (what it did before).

It prints ms a step, images a second and achieved GFLOPS (the multiply-adds of the convolution and
dense layers, forward and backward: 3x the forward pass, 2 FLOPs each), and the ratios. The quota rows
need root and a cgroup filesystem; without them they say why and are skipped.

    python benchmarks/cpu_quota.py [--cpus 0.4] [--steps 40] [--precision auto|float32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from imgflow.runtime.quota import QuotaUnavailable, cpu_quota


def measure(root: Path, steps: int, precision: str) -> dict[str, float | str | int]:
    """Train the sample's default model for ``steps`` timed steps (after a warm-up) in this process."""
    import time

    import keras
    from training_speed import _shards

    from imgflow.results import shard_files
    from imgflow.runtime import cpus
    from imgflow.training.accel import current_plan
    from imgflow.training.inputs import make_augmenter, shard_dataset
    from imgflow.training.models import build_model, compile_for_training

    cfg, shards = _shards(root)
    t = cfg.train
    shape = tuple(shards.info.image_shape)
    policy = current_plan(precision if precision != "auto" else t.precision, t.jit_compile, t.augment_on).precision
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(t.seed)
    data = shard_dataset(shard_files(shards, "train"), shape, t.batch_size, training=True, seed=t.seed,
                         augmenter=make_augmenter(t.translate, t.rotate, t.zoom, t.seed))
    model = compile_for_training(build_model(shape, len(shards.info.class_names), t), t.learning_rate, 10 * steps)
    macs = sum(_macs(layer) for layer in model.layers)
    model.fit(data, epochs=1, steps_per_epoch=5, verbose=0)  # tracing, the cache's first pass
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = (time.perf_counter() - started) / steps
    return {
        "ms_step": 1000 * seconds,
        "images_s": t.batch_size / seconds,
        "gflops": 3 * 2 * macs * t.batch_size / seconds / 1e9,
        "precision": policy,
        "threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "?"),
        "cpus": cpus.budget().source,
    }


def _macs(layer) -> int:  # noqa: ANN001 - a Keras layer
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, channels = layer.output.shape
        return height * width * channels * math.prod(layer.kernel.shape[:3])
    if isinstance(layer, keras.layers.Dense):
        return math.prod(layer.kernel.shape)
    return 0


def _child(args: argparse.Namespace, root: Path, env: dict[str, str], enter=None) -> dict:  # noqa: ANN001
    command = [sys.executable, __file__, "--child", str(root), "--steps", str(args.steps), "--precision", args.precision]
    result = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=enter, check=False)
    if result.returncode != 0:
        sys.exit(f"the measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=float, default=0.4, help="the quota, in cores")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per row")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_bfloat16"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args.steps, args.precision)))
        return
    from imgflow.runtime import cpus

    with tempfile.TemporaryDirectory(prefix="imgflow-quota-") as tmp:
        root = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k not in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}
        rows = {"own CPUs": _child(args, root, {**base, **cpus.tensorflow_environment()})}
        try:
            with cpu_quota(args.cpus) as enter:
                sized = cpus.tensorflow_environment(max(1, math.ceil(args.cpus)))
                rows[f"quota {args.cpus:g}, pools sized to it"] = _child(args, root, {**base, **sized}, enter)
                visible = cpus.tensorflow_environment(os.cpu_count() or 1)
                rows[f"quota {args.cpus:g}, pools sized to {os.cpu_count()} cores"] = _child(args, root, {**base, **visible}, enter)
        except QuotaUnavailable as why:
            print(f"(the quota rows are skipped: {why})")
    first = next(iter(rows.values()))
    print(f"\nthe sample's default model, {args.steps} steps of training, {first['precision']}, on {_cpu_name()}")
    print(f"{'':<34} {'threads':>7} {'ms/step':>8} {'images/s':>9} {'GFLOPS':>7} {'x own CPUs':>11}")
    for label, row in rows.items():
        print(f"{label:<34} {row['threads']:>7} {row['ms_step']:8.1f} {row['images_s']:9.0f} {row['gflops']:7.1f} "
              f"{first['ms_step'] / row['ms_step']:11.2f}")
    quota_rows = list(rows.values())[1:]
    if len(quota_rows) == 2:
        print(f"\nsizing the pools to the quota: {quota_rows[1]['ms_step'] / quota_rows[0]['ms_step']:.2f}x the speed of sizing them to the cores")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.partition(':')[2].strip()} ({os.cpu_count()} cores)"
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
