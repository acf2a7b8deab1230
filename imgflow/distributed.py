"""Multi-worker training: run the train stage on every worker of a ``TF_CONFIG`` cluster.

Each worker runs ``python -m imgflow.distributed --artifacts DIR --shards KEY [--config FILE.toml]``
with its own ``TF_CONFIG`` (the same cluster, its own task index); the train stage then trains under
``MultiWorkerMirroredStrategy``, every worker reading the shards from the shared artifact root. Worker
0, the chief, writes the model into the artifact store under the same key a single-machine run would
use, so a later ``imgflow run`` with the same settings finds training done (``cached``); the other
workers write their identical copies to a temporary folder that is removed. Each worker prints one
JSON line: its task index, the train key, the model fingerprint and the fingerprint of the trainable
weights (equal on every worker: the training is synchronous).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path

from imgflow.accel import plan
from imgflow.config import TrainConfig, parse_section
from imgflow.errors import ConfigError, UserError
from imgflow.stages.train import TRAIN
from imgflow.results import StageResult
from imgflow.store import ArtifactStore


def trainable_fingerprint(result: StageResult) -> str:
    """A hash of a trained model's trainable weights: the same on every worker of a synchronous run
    (batch-norm moving statistics are not: each worker keeps its own, and the chief's are exported)."""
    import hashlib

    import keras
    import numpy as np

    model = keras.models.load_model(result.file("model.keras"))
    digest = hashlib.sha256()
    for weight in model.trainable_weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def run_worker(artifacts: Path, shards_key: str, config: TrainConfig) -> tuple[int, StageResult, str]:
    """Train on this worker; return its task index, the train result (the chief's is stored) and the
    fingerprint of its trainable weights."""
    store = ArtifactStore(artifacts)
    shards = store.lookup("shard", shards_key)
    if shards is None:
        raise ConfigError(f"no complete shard output {shards_key!r} under {artifacts / 'shard'}")
    index = plan(config.precision, config.jit_compile, [], os.environ.get("TF_CONFIG")).task_index
    if index == 0:
        result = TRAIN.run(store, config, {"shards": shards})
        return index, result, trainable_fingerprint(result)
    with tempfile.TemporaryDirectory(prefix=f"imgflow-worker-{index}-") as scratch:
        result = TRAIN.run(ArtifactStore(scratch), config, {"shards": shards})
        return index, result, trainable_fingerprint(result)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m imgflow.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--shards", required=True, help="the key of a shard output under ARTIFACTS/shard/")
    parser.add_argument("--config", type=Path, help="a TOML file of [train] settings (default: the defaults)")
    args = parser.parse_args()
    try:
        values = tomllib.loads(args.config.read_text()).get("train", {}) if args.config else {}
        config = parse_section(TrainConfig, values, str(args.config or "train config"))
        index, result, trainable = run_worker(args.artifacts.resolve(), args.shards, config)
    except UserError as exc:
        print(f"imgflow: error: {exc}", file=sys.stderr)
        return 2
    report = {"task_index": index, "key": result.key, "model_fingerprint": result.fingerprint,
              "trainable_fingerprint": trainable, "hardware": result.info.model_dump(mode="json")["hardware"]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
