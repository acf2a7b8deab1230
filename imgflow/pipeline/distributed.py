"""Multi-worker training: run the train stage on every worker of a ``TF_CONFIG`` cluster.

Each worker runs ``python -m imgflow.pipeline.distributed --artifacts DIR --shards KEY [--config FILE.toml]``
with its own ``TF_CONFIG`` (the same cluster, its own task index); the train stage then trains under
``MultiWorkerMirroredStrategy``, every worker reading the shards from the shared artifact root. Worker
0, the chief, writes the model into the artifact store under the same key a single-machine run would
use, so a later ``imgflow run`` with the same settings finds training done (``cached``); the other
workers write their identical copies to a temporary folder that is removed. Each worker prints one
JSON line: its task index, the train key, the model fingerprint and the fingerprint of the trainable
weights (equal on every worker: the training is synchronous).

``--local-workers N`` is the launcher for one machine: it starts N such workers here, each with a
``TF_CONFIG`` naming all N on free local ports, waits for them (one that fails stops the others, which
would otherwise wait for it forever); each prints its line as it finishes. Its workers die with it,
however it dies (``imgflow.runtime.lifetime``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from imgflow.config import TrainConfig, parse_section
from imgflow.results import StageResult
from imgflow.runtime.cpus import OVERRIDE, budget, limit_threads
from imgflow.runtime.errors import ConfigError, UserError
from imgflow.runtime.lifetime import follow_parent, start_child
from imgflow.runtime.network import free_port
from imgflow.stages.train import TRAIN
from imgflow.store.artifacts import ArtifactStore
from imgflow.store.roots import open_store
from imgflow.training.accel import plan


def trainable_fingerprint(result: StageResult) -> str:
    """A hash of a trained model's trainable weights: the same on every worker of a synchronous run
    (batch-norm moving statistics are not: each worker keeps its own, and the chief's are exported)."""
    import hashlib

    import keras
    import numpy as np

    from imgflow.training.models import load_model

    model = load_model(result.file("model.keras"))
    digest = hashlib.sha256()
    for weight in model.trainable_weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def run_worker(store: ArtifactStore, shards_key: str, config: TrainConfig) -> tuple[int, StageResult, str]:
    """Train on this worker; return its task index, the train result (the chief's is stored in
    ``store``, the others' in a temporary one) and the fingerprint of its trainable weights."""
    shards = store.lookup("shard", shards_key)
    if shards is None:
        raise ConfigError(f"no complete shard output {shards_key!r} in {store.uri}/shard")
    index = plan(config.precision, config.jit_compile, [], os.environ.get("TF_CONFIG")).task_index
    if index == 0:
        result = TRAIN.run(store, config, {"shards": shards})
        return index, result, trainable_fingerprint(result)
    with tempfile.TemporaryDirectory(prefix=f"imgflow-worker-{index}-") as scratch:
        result = TRAIN.run(open_store(scratch), config, {"shards": shards})
        return index, result, trainable_fingerprint(result)


def launch(count: int, worker_args: list[str]) -> int:
    """Run ``count`` workers of one cluster on this machine (see the module docstring); the exit
    status of the first that fails, else 0."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(count)]}
    share = f"{budget().cores / count:.3f}"  # the workers share this machine's CPU time, pools and all
    processes = [
        start_child(
            [sys.executable, "-m", "imgflow.pipeline.distributed", *worker_args],
            env={**os.environ, OVERRIDE: share, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})},
        )
        for index in range(count)
    ]
    try:
        while (codes := [process.poll() for process in processes]) != [0] * count:
            failed = next((index for index, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                status = codes[failed]
                assert status is not None
                print(f"imgflow: worker {failed} exited with status {status}; stopping the others", file=sys.stderr)
                return status
            time.sleep(0.5)
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()


def main() -> int:
    follow_parent()
    limit_threads()  # before the train stage imports TensorFlow
    parser = argparse.ArgumentParser(prog="python -m imgflow.pipeline.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", default="artifacts", help="the artifact root: a folder or an object-store URI")
    parser.add_argument("--shards", required=True, help="the key of a shard output under ARTIFACTS/shard/")
    parser.add_argument("--config", type=Path, help="a TOML file of [train] settings (default: the defaults)")
    parser.add_argument(
        "--local-workers", type=int, metavar="N", help="start N workers on this machine, one cluster on free local ports, and wait for them"
    )
    args = parser.parse_args()
    if args.local_workers is not None:
        if args.local_workers < 1:
            parser.error(f"--local-workers: expected 1 or more, got {args.local_workers}")
        worker_args = ["--artifacts", str(args.artifacts), "--shards", args.shards]
        return launch(args.local_workers, worker_args + (["--config", str(args.config)] if args.config else []))
    try:
        values = tomllib.loads(args.config.read_text()).get("train", {}) if args.config else {}
        config = parse_section(TrainConfig, values, str(args.config or "train config"))
        index, result, trainable = run_worker(open_store(args.artifacts), args.shards, config)
    except UserError as exc:
        print(f"imgflow: error: {exc}", file=sys.stderr)
        return 2
    report = {
        "task_index": index,
        "key": result.key,
        "model_fingerprint": result.fingerprint,
        "trainable_fingerprint": trainable,
        "hardware": result.info.model_dump(mode="json")["hardware"],
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
