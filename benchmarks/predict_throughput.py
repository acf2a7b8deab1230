"""Batch-prediction throughput: ONNX Runtime against the TensorFlow SavedModel, and the int8 ONNX
variant's speed and accuracy change, on the same images in one run.

Uses the champion of a model already trained under --artifacts (run `make run` first, or pass
--train to train the default one here) and its held-out test split. Two measurements per backend,
each the median of --repeat runs over the same images:

- model only: pre-decoded uint8 pixels through the backend in batches of --batch-size;
- end to end: ``imgflow.serving.batch.predict`` over the test images written as PNG files (decode, batch,
  run, write the Parquet output), as `imgflow predict` does.

Then all cores against one, side by side: ``predict`` (ONNX) over a Parquet table of --table-images
PNG images (the test images again and again), its pieces on one worker process (``IMGFLOW_WORKERS=1``,
one ONNX Runtime session using every core) and on all of them (a session per process).

    python benchmarks/predict_throughput.py [--artifacts DIR] [--name mnist5k] [--repeat 5] [--train]
                                            [--table-images 40000]
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgflow.config import BACKENDS
from imgflow.data.images import encode_png
from imgflow.registry import versions as registry
from imgflow.runtime.parallel import worker_count
from imgflow.serving.batch import PredictConfig, Predictor, predict


def _held_out(version_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    card = json.loads((version_dir / "card.json").read_text())
    clean = pq.read_table(Path(card["lineage"]["clean"]["path"]) / "records.parquet").to_pylist()
    test = [r for r in clean if r["split"] == "test"]
    shape = tuple(card["image_shape"])
    pixels = np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(shape) for r in test])
    return pixels, np.array([r["label"] for r in test]), card["class_names"]


def _median_seconds(run, repeat: int) -> float:
    run()  # warm-up: sessions, graph tracing, caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--name", default="mnist5k")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train", action="store_true", help="train the default model under --artifacts first")
    parser.add_argument("--table-images", type=int, default=40000, help="images in the table of the all-cores comparison (0: skip it)")
    args = parser.parse_args()
    if args.train:
        subprocess.run([sys.executable, "-m", "flows.cli", "run", "--artifacts", args.artifacts], check=True)
    pointer = registry.champion(args.artifacts, args.name)
    if pointer is None:
        sys.exit(f"no champion of {args.name} under {args.artifacts}: run `make run` first, or pass --train")
    version_dir = Path(pointer["path"])
    pixels, labels, _ = _held_out(version_dir)
    backends = [b for b in BACKENDS if b != "onnx-int8" or (version_dir / "model.int8.onnx").is_file()]
    print(f"{args.name} {pointer['version']}: {len(pixels)} held-out test images, batch {args.batch_size}, "
          f"median of {args.repeat}")

    model_only, end_to_end, accuracy = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="imgflow-predict-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for index, image in enumerate(pixels):
            (folder / f"{index:05d}.png").write_bytes(encode_png(image))
        for backend in backends:
            predictor = Predictor(version_dir, backend)

            def run_model(predictor: Predictor = predictor) -> np.ndarray:
                return np.concatenate([predictor(pixels[i : i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)])

            accuracy[backend] = float((run_model().argmax(1) == labels).mean())
            model_only[backend] = len(pixels) / _median_seconds(run_model, args.repeat)
            config = PredictConfig(backend=backend, batch_size=args.batch_size)
            end_to_end[backend] = len(pixels) / _median_seconds(
                lambda config=config: predict(str(folder), version_dir, Path(tmp) / "out.parquet", config), args.repeat
            )
    print(f"\n{'backend':<11} {'model only':>14} {'end to end':>14} {'accuracy':>9}")
    for backend in backends:
        print(f"{backend:<11} {model_only[backend]:>9.0f} img/s {end_to_end[backend]:>9.0f} img/s {accuracy[backend]:>9.4f}")
    print(f"\nratio ONNX Runtime / TensorFlow: model only {model_only['onnx'] / model_only['tensorflow']:.2f}, "
          f"end to end {end_to_end['onnx'] / end_to_end['tensorflow']:.2f}")
    if "onnx-int8" in backends:
        print(f"ratio int8 / float ONNX: model only {model_only['onnx-int8'] / model_only['onnx']:.2f}, "
              f"end to end {end_to_end['onnx-int8'] / end_to_end['onnx']:.2f}; accuracy change "
              f"{accuracy['onnx-int8'] - accuracy['onnx']:+.4f}")
    else:
        print("no int8 variant: it lost more accuracy than allowed and was not exported")
    if args.table_images:
        _all_cores(version_dir, pixels, args.table_images, args.batch_size, args.repeat)


def _all_cores(version_dir: Path, pixels: np.ndarray, count: int, batch_size: int, repeat: int) -> None:
    workers = worker_count()
    with tempfile.TemporaryDirectory(prefix="imgflow-predict-bench-") as tmp:
        encoded = [encode_png(image) for image in pixels]
        table = Path(tmp) / "batch.parquet"
        images = [encoded[i % len(encoded)] for i in range(count)]
        pq.write_table(pa.table({"id": [f"image-{i}" for i in range(count)], "image": images}), table, row_group_size=1024)
        del images
        rates, outputs = {}, {}
        config = PredictConfig(batch_size=batch_size)
        for processes in (1, workers):
            os.environ["IMGFLOW_WORKERS"] = str(processes)
            output = Path(tmp) / f"out-{processes}.parquet"
            rates[processes] = count / _median_seconds(lambda output=output: predict(f"parquet:{table}", version_dir, output, config), repeat)
            outputs[processes] = output.read_bytes()
        os.environ.pop("IMGFLOW_WORKERS")
    print(f"\n{count} images in a Parquet table, ONNX end to end: {rates[1]:.0f} images/s on 1 worker process, "
          f"{rates[workers]:.0f} on {workers}: **{rates[workers] / rates[1]:.2f}x**; outputs "
          f"{'byte-identical' if outputs[1] == outputs[workers] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
